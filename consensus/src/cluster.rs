//! The values that describe a clustered metadata group: how a node starts
//! ([`ClusterInit`]), the Raft timing and compaction it runs with ([`RaftTuning`]) and
//! the membership it reports ([`ClusterMembership`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_types::NodeId;
use openraft::{Config, SnapshotPolicy};

use crate::error::ConsensusError;
use crate::grpc::{APPEND_ENTRIES_MAX, SNAPSHOT_CHUNK_BYTES_DEFAULT};
use crate::type_config::StoredMembership;

/// How a clustered node starts when its store is pristine. A store that already holds
/// a membership ignores it and rejoins the cluster it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterInit {
    /// Found a brand-new cluster whose voters are these nodes (id -> gRPC address
    /// `host:port`, this node included). Give every founding node the same map: the
    /// founding membership is the same entry on each, so starting all of them with it
    /// is safe.
    Bootstrap(BTreeMap<NodeId, String>),
    /// Start empty and wait until a leader adds this node (as a learner, see
    /// [`Metadata::add_learner`](crate::Metadata::add_learner)).
    Join,
}

/// Timing and log compaction of a clustered metadata group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTuning {
    /// How often the leader sends heartbeats; also each AppendEntries RPC's timeout.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range (inclusive
    /// minimum, exclusive maximum) starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept after a snapshot covers them; a follower lagging further
    /// behind catches up by receiving the snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Size of a snapshot chunk on the wire; the transport keeps it within 1 KiB..=4 MiB.
    pub snapshot_chunk_bytes: u64,
    /// Timeout per snapshot message, and for installing it at the receiver.
    pub snapshot_message_timeout: Duration,
    /// Bytes of page cache of the member's metadata store.
    pub cache_bytes: usize,
}

impl Default for RaftTuning {
    /// Leader loss is detected within 1.5 s; an fsync of the Raft log on a slow disk
    /// (tens of milliseconds) fits comfortably in the 150 ms heartbeat.
    fn default() -> RaftTuning {
        RaftTuning {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1500),
            snapshot_every_entries: 5000,
            logs_kept_after_snapshot: 1000,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT as u64,
            snapshot_message_timeout: Duration::from_secs(2),
            cache_bytes: crate::db::CACHE_BYTES_DEFAULT,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration of a clustered group with this tuning.
    pub(crate) fn config(&self) -> Result<Config, ConsensusError> {
        Config {
            cluster_name: crate::handle::CLUSTER_NAME.to_owned(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: self.snapshot_message_timeout.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_payload_entries: APPEND_ENTRIES_MAX,
            ..Config::default()
        }
        .validate()
        .map_err(ConsensusError::Config)
    }
}

/// The membership of the metadata group as this node last applied or appended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMembership {
    /// The voter sets: one normally, two while a joint change is in progress (a
    /// decision then needs a majority of each).
    pub voter_sets: Vec<BTreeSet<NodeId>>,
    /// Every member, voter or learner, and its gRPC address.
    pub nodes: BTreeMap<NodeId, String>,
    /// Index of the log entry that set this membership.
    pub log_index: Option<u64>,
}

impl ClusterMembership {
    pub(crate) fn of(stored: &StoredMembership) -> ClusterMembership {
        let m = stored.membership();
        ClusterMembership {
            voter_sets: m
                .get_joint_config()
                .iter()
                .map(|set| set.iter().copied().map(NodeId).collect())
                .collect(),
            nodes: m
                .nodes()
                .map(|(id, peer)| (NodeId(*id), peer.addr.clone()))
                .collect(),
            log_index: stored.log_id().as_ref().map(|l| l.index),
        }
    }

    /// Every node that votes in any voter set.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.voter_sets.iter().flatten().copied().collect()
    }

    /// Members that receive the log but do not vote.
    pub fn learners(&self) -> BTreeSet<NodeId> {
        let voters = self.voters();
        self.nodes
            .keys()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect()
    }

    /// `true` while a joint membership change is in progress.
    pub fn is_joint(&self) -> bool {
        self.voter_sets.len() > 1
    }
}
