//! [`Metadata`]: the handle the rest of berth uses to open the metadata group (a single
//! voter, or a member of a cluster over gRPC), propose commands, read the registry
//! state linearizably, manage the membership, watch Raft status and shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_types::NodeId;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, Fatal, InitializeError, LinearizableReadError, RaftError};
use openraft::metrics::WaitError;
use openraft::network::NetSnapshot;
use openraft::{ChangeMembers, Config, Raft, RaftNetworkFactory, ReadPolicy, ServerState};
use redb::{Database, Durability, ReadableDatabase};

use crate::cluster::{ClusterInit, ClusterMembership, RaftTuning};
use crate::db::{self, blocking};
use crate::error::{ConsensusError, Unavailability};
use crate::grpc::forward::{ForwardReply, Forwarder, ReadIndexReply};
use crate::grpc::{self, Dialer, GrpcNetwork, RaftGrpcService};
use crate::log_store::LogStore;
use crate::model::{Command, Outcome, VersionedCommand};
use crate::network::NoPeers;
use crate::state_machine::{SnapshotData, StateMachineStore};
use crate::type_config::{Peer, StoredMembership, TypeConfig};
use crate::view::StateView;

/// How long opening waits for this node to become leader. A single voter elects
/// itself within one election timeout (a few hundred milliseconds); the margin covers
/// re-applying a long log on restart.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Raft status for metrics and readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
    /// Log index the latest snapshot covers.
    pub snapshot: Option<u64>,
    /// Highest log index purged from the log (covered by a snapshot).
    pub purged: Option<u64>,
    pub is_leader: bool,
    /// On the leader: the highest log index each member is known to hold.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
}

/// The metadata store of one node: a Raft member whose log and state machine live in
/// one redb file. Cheap to clone. Call [`Metadata::shutdown`] before the last clone is
/// dropped: Raft's tasks own the store and run until they are told to stop.
#[derive(Clone)]
pub struct Metadata {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    raft: Raft<TypeConfig, StateMachineStore>,
    db: Arc<Database>,
    /// Set once shutdown starts, so new requests fail fast with `ShuttingDown`.
    closing: AtomicBool,
    /// Held while shutting down; `true` once done, which makes shutdown idempotent.
    stopped: tokio::sync::Mutex<bool>,
    /// Channels to peers for forwarded commands and read-index requests.
    forwarder: Forwarder,
}

/// How long a command or read on a follower keeps trying to reach a leader before it
/// gives up with `Unavailable` (the API answers 503 with Retry-After).
pub(crate) const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between attempts to reach the leader.
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

fn fatal(f: Fatal<TypeConfig>) -> ConsensusError {
    match f {
        Fatal::Stopped => ConsensusError::ShuttingDown,
        other => ConsensusError::Halted(other),
    }
}

impl Metadata {
    /// Opens or creates the store in `dir` (creates `dir`), starts Raft with this node
    /// id, and on first start initializes a single-voter membership. Returns once a
    /// leader exists. The store keeps [`crate::CACHE_BYTES_DEFAULT`] of page cache.
    pub async fn open_single(dir: &Path, node: NodeId) -> Result<Metadata, ConsensusError> {
        Metadata::open_single_with_cache(dir, node, db::CACHE_BYTES_DEFAULT).await
    }

    /// [`Metadata::open_single`] with a page cache of `cache_bytes` for the store.
    pub async fn open_single_with_cache(
        dir: &Path,
        node: NodeId,
        cache_bytes: usize,
    ) -> Result<Metadata, ConsensusError> {
        let config = Config {
            cluster_name: CLUSTER_NAME.to_owned(),
            ..Config::default()
        }
        .validate()
        .map_err(ConsensusError::Config)?;
        let (raft, db) = start(dir, node, NoPeers, config, cache_bytes).await?;
        initialize(&raft, BTreeMap::from([(node.0, Peer::default())])).await?;
        if let Err(e) =
            wait_leader(&raft, LEADER_WAIT, Some(node), "single voter elects itself").await
        {
            raft.shutdown().await.ok();
            return Err(e);
        }
        Ok(Metadata::new(node, raft, db, Dialer::default()))
    }

    /// Opens or creates the store in `dir` and starts Raft as node `node` of a cluster,
    /// reachable by its peers over gRPC at `addr` (`host:port`). `init` applies only to
    /// a pristine store: found a new cluster, or wait to be added by a leader.
    ///
    /// Returns at once, without waiting for a leader: mount the returned service on the
    /// node's gRPC listener so peers can reach this node, then wait with
    /// [`Metadata::wait_for_leader`].
    pub async fn open_cluster(
        dir: &Path,
        node: NodeId,
        addr: String,
        init: ClusterInit,
        tuning: &RaftTuning,
    ) -> Result<(Metadata, RaftGrpcService), ConsensusError> {
        Metadata::open_cluster_with(dir, node, addr, init, tuning, Dialer::default()).await
    }

    /// [`Metadata::open_cluster`] with the dialer that opens channels to peers.
    pub(crate) async fn open_cluster_with(
        dir: &Path,
        node: NodeId,
        addr: String,
        init: ClusterInit,
        tuning: &RaftTuning,
        dialer: Dialer,
    ) -> Result<(Metadata, RaftGrpcService), ConsensusError> {
        grpc::endpoint(&addr)?;
        if let ClusterInit::Bootstrap(members) = &init {
            if members.get(&node) != Some(&addr) {
                return Err(ConsensusError::FoundingMembership { node, addr });
            }
            for peer in members.values() {
                grpc::endpoint(peer)?;
            }
        }
        let config = tuning.config()?;
        let network = GrpcNetwork::new(node.0, dialer.clone());
        let (raft, db) = start(dir, node, network, config, tuning.cache_bytes).await?;
        if let ClusterInit::Bootstrap(members) = init {
            let members = members
                .into_iter()
                .map(|(id, addr)| (id.0, Peer { addr }))
                .collect();
            if let Err(e) = initialize(&raft, members).await {
                raft.shutdown().await.ok();
                return Err(e);
            }
        }
        let stored = raft.metrics().borrow_watched().membership_config.clone();
        if let Some(known) = stored.get_node(&node.0)
            && known.addr != addr
        {
            tracing::warn!(
                %node,
                addr,
                known = known.addr,
                "the membership lists this node at another address; peers dial that one"
            );
        }
        let service = RaftGrpcService::new(
            node.0,
            raft.clone(),
            dir.join(crate::snapshot_file::DIR_NAME),
        );
        tracing::info!(%node, addr, "metadata cluster member started");
        Ok((Metadata::new(node, raft, db, dialer), service))
    }

    fn new(
        node: NodeId,
        raft: Raft<TypeConfig, StateMachineStore>,
        db: Arc<Database>,
        dialer: Dialer,
    ) -> Metadata {
        Metadata {
            inner: Arc::new(Inner {
                node,
                raft,
                db,
                closing: AtomicBool::new(false),
                stopped: tokio::sync::Mutex::new(false),
                forwarder: Forwarder::new(dialer),
            }),
        }
    }

    fn check_open(&self) -> Result<(), ConsensusError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(ConsensusError::ShuttingDown);
        }
        Ok(())
    }

    /// Proposes one command through Raft; returns once it is committed and applied.
    /// On a follower the command is forwarded to the leader (retrying across leader
    /// changes for up to `FORWARD_DEADLINE`), so callers never see "not leader".
    ///
    /// Every attempt carries the same request id: when a reply is lost (a forwarded
    /// call that failed in flight, a leader that stepped down before it could answer)
    /// the command is proposed again, and the state machine applies it once and
    /// answers the repeat with the first outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ConsensusError> {
        self.check_open()?;
        let cmd = VersionedCommand::tracked(cmd, now_ms());
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        let mut last = None;
        loop {
            // Bounded: a leader cut off from its quorum would otherwise hold the caller
            // until the partition heals. The entry may still commit (the outcome is
            // unknown), within the time an election takes, never later.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let written =
                match tokio::time::timeout(left, self.inner.raft.client_write(cmd.clone())).await {
                    Ok(written) => written,
                    Err(_) => {
                        return Err(ConsensusError::Unavailable {
                            cause: Unavailability::CommitTimeout {
                                waited_ms: FORWARD_DEADLINE.as_millis() as u64,
                            },
                        });
                    }
                };
            let leader = match written {
                Ok(resp) => {
                    return Ok(resp
                        .data
                        .expect("the state machine answers every command entry with an outcome"));
                }
                Err(e) => match write_error(e) {
                    ConsensusError::NotLeader { leader } => leader,
                    e @ ConsensusError::CommitUnknown { leader } => {
                        last = Some(e);
                        leader
                    }
                    other => return Err(other),
                },
            };
            // A follower: send the command to the leader.
            if let Some((leader, addr)) = self.leader_addr(leader) {
                // Bounded by what is left of the deadline: a link that holds the call
                // (a partition) would otherwise keep the caller for the whole RPC
                // timeout. The command may still reach the leader; the forwarding
                // window refuses it there once it is older than the deadline.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let forwarded =
                    tokio::time::timeout(left, self.inner.forwarder.propose(leader.0, &addr, &cmd))
                        .await
                        .unwrap_or(Err(ConsensusError::CommitUnknown {
                            leader: Some(leader),
                        }));
                match forwarded {
                    Ok(ForwardReply::Applied(outcome)) => return Ok(outcome),
                    Ok(ForwardReply::CommitUnknown { leader }) => {
                        last = Some(ConsensusError::CommitUnknown {
                            leader: leader.map(NodeId),
                        });
                    }
                    Ok(ForwardReply::NotLeader { .. }) => {}
                    // Every later attempt would be refused as well.
                    Ok(ForwardReply::Expired { age_ms }) => {
                        if let VersionedCommand::Tracked { at_ms, .. } = &cmd {
                            let local_age = now_ms().saturating_sub(*at_ms);
                            if local_age + 1000 < age_ms {
                                tracing::warn!(
                                    leader = leader.0,
                                    behind_ms = age_ms - local_age,
                                    "this node's clock is behind the leader's: forwarded writes are refused; synchronise the clocks"
                                );
                            }
                        }
                        return Err(last.unwrap_or(ConsensusError::Unavailable {
                            cause: Unavailability::Expired { age_ms },
                        }));
                    }
                    Err(e) => last = Some(e),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or(ConsensusError::Unavailable {
                    cause: Unavailability::NoLeader {
                        waited_ms: FORWARD_DEADLINE.as_millis() as u64,
                    },
                }));
            }
            self.check_open()?;
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// The cluster's id: the one this node has applied, or else a new random one
    /// proposed now (the first id committed wins, so every node ends up with the
    /// same). Needs a leader.
    pub async fn cluster_id(&self) -> Result<u128, ConsensusError> {
        if let Some(id) = self.read_local(|v| v.cluster_id()).await? {
            return Ok(id);
        }
        match self
            .propose(Command::SetClusterId {
                id: rand::random::<u128>(),
            })
            .await?
        {
            Outcome::ClusterId(id) => Ok(id),
            other => unreachable!("SetClusterId answers ClusterId, not {other:?}"),
        }
    }

    /// The leader and its address, when the leader is another node this one knows.
    fn leader_addr(&self, leader: Option<NodeId>) -> Option<(NodeId, String)> {
        let leader = leader.or_else(|| self.status().leader)?;
        if leader == self.inner.node {
            return None;
        }
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let addr = metrics.membership_config.get_node(&leader.0)?.addr.clone();
        (!addr.is_empty()).then_some((leader, addr))
    }

    /// Adds node `id` (its gRPC address `addr`) to the cluster: as a learner first,
    /// then, once it has caught up with the leader's log, as a voter. Works on any
    /// node (a follower forwards it to the leader); a no-op for a voter already in.
    pub async fn join(&self, id: NodeId, addr: String) -> Result<(), ConsensusError> {
        grpc::endpoint(&addr)?;
        self.change_members(crate::membership::MembershipChange::Join { id: id.0, addr })
            .await
    }

    /// Removes node `id` from the cluster (a no-op when it is not a member). Works on
    /// any node.
    pub async fn remove(&self, id: NodeId) -> Result<(), ConsensusError> {
        self.change_members(crate::membership::MembershipChange::Remove { id: id.0 })
            .await
    }

    async fn change_members(
        &self,
        change: crate::membership::MembershipChange,
    ) -> Result<(), ConsensusError> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        loop {
            let reply = if self.status().is_leader {
                Some(crate::membership::apply(&self.inner.raft, change.clone()).await)
            } else if let Some((leader, addr)) = self.leader_addr(None) {
                self.inner
                    .forwarder
                    .membership(leader.0, &addr, &change)
                    .await
                    .ok()
            } else {
                None
            };
            if let Some(done) = reply.and_then(crate::membership::outcome) {
                return done;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::membership::no_leader(FORWARD_DEADLINE));
            }
            self.check_open()?;
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// Returns once this node's state machine holds every write acknowledged before
    /// the call: on the leader through a read-index round, on a follower by asking the
    /// leader for its read index and waiting until that index is applied here.
    async fn read_barrier(&self) -> Result<(), ConsensusError> {
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        loop {
            let leader = match self
                .inner
                .raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
            {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    f.leader_id.map(NodeId)
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                    return Err(ConsensusError::Unavailable {
                        cause: Unavailability::NoQuorum,
                    });
                }
                Err(RaftError::Fatal(f)) => return Err(fatal(f)),
            };
            let mut failure = None;
            if let Some((leader, addr)) = self.leader_addr(leader) {
                match self.inner.forwarder.read_index(leader.0, &addr).await {
                    Ok(ReadIndexReply::Index(index)) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        return match self
                            .inner
                            .raft
                            .wait(Some(left))
                            .applied_index_at_least(index, "read index applied")
                            .await
                        {
                            Ok(_) => Ok(()),
                            Err(WaitError::ShuttingDown) => Err(ConsensusError::ShuttingDown),
                            Err(WaitError::Timeout(..)) => Err(ConsensusError::Unavailable {
                                cause: Unavailability::NoQuorum,
                            }),
                        };
                    }
                    Ok(ReadIndexReply::NoQuorum) => {
                        return Err(ConsensusError::Unavailable {
                            cause: Unavailability::NoQuorum,
                        });
                    }
                    Ok(ReadIndexReply::NotLeader { .. }) => {}
                    Err(e) => failure = Some(e),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failure.unwrap_or(ConsensusError::Unavailable {
                    cause: Unavailability::NoLeader {
                        waited_ms: FORWARD_DEADLINE.as_millis() as u64,
                    },
                }));
            }
            self.check_open()?;
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// Linearizable read on any node: a read-index round on the leader (asked over gRPC
    /// when this node is a follower), a wait until the local state machine has applied
    /// that index, then `f` on a consistent read snapshot on a blocking thread. A node
    /// that cannot reach a leader with a quorum answers `Unavailable`, never stale data.
    pub async fn read<R, F>(&self, f: F) -> Result<R, ConsensusError>
    where
        R: Send + 'static,
        F: FnOnce(&StateView) -> Result<R, ConsensusError> + Send + 'static,
    {
        self.check_open()?;
        self.read_barrier().await?;
        let db = self.inner.db.clone();
        blocking(move || f(&StateView::new(db.begin_read()?))).await
    }

    /// Runs `f` on the state this node has applied so far, without asking the leader:
    /// **not linearizable**. A follower may lag behind writes already acknowledged
    /// elsewhere. For convergence checks, diagnostics and tests; serve clients with
    /// [`Metadata::read`].
    pub async fn read_local<R, F>(&self, f: F) -> Result<R, ConsensusError>
    where
        R: Send + 'static,
        F: FnOnce(&StateView) -> Result<R, ConsensusError> + Send + 'static,
    {
        self.check_open()?;
        let db = self.inner.db.clone();
        blocking(move || f(&StateView::new(db.begin_read()?))).await
    }

    /// Waits up to `timeout` until this node knows a leader, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ConsensusError> {
        self.check_open()?;
        wait_leader(&self.inner.raft, timeout, None, "a leader is known").await
    }

    /// The membership this node knows (the latest it appended, possibly uncommitted).
    pub fn membership(&self) -> ClusterMembership {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        ClusterMembership::of(&metrics.membership_config)
    }

    /// Adds node `id`, reachable at `addr`, as a learner: it receives the log (or a
    /// snapshot) but does not vote. Returns once the membership entry is committed,
    /// without waiting for the learner to catch up. Only the leader can do this.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), ConsensusError> {
        self.check_open()?;
        grpc::endpoint(&addr)?;
        self.inner
            .raft
            .add_learner(id.0, Peer { addr }, false)
            .await
            .map_err(write_error)?;
        tracing::info!(node = %self.inner.node, learner = %id, "added a metadata learner");
        Ok(())
    }

    /// Records `addr` as the gRPC address of member `id`, replacing the one in the
    /// membership: for a node that moved, and for a store first opened with
    /// [`Metadata::open_single`], whose membership lists this node without an address,
    /// before it grows into a cluster. The address must reach the same node and store;
    /// pointing it at another process with the same id breaks Raft's safety. Only the
    /// leader can do this.
    pub async fn set_address(&self, id: NodeId, addr: String) -> Result<(), ConsensusError> {
        self.check_open()?;
        grpc::endpoint(&addr)?;
        let nodes = BTreeMap::from([(id.0, Peer { addr })]);
        self.inner
            .raft
            .change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map_err(write_error)?;
        tracing::info!(node = %self.inner.node, member = %id, "updated a member's address");
        Ok(())
    }

    /// Makes `voters` the voter set, through a joint membership. Voters must already be
    /// members (added with [`Metadata::add_learner`]); voters left out are removed from
    /// the cluster. Returns the new membership once it is committed. Promote a learner
    /// after it caught up: until then commits wait for it. Only the leader can do this.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
    ) -> Result<ClusterMembership, ConsensusError> {
        self.check_open()?;
        let ids: BTreeSet<u64> = voters.iter().map(|n| n.0).collect();
        let resp = self
            .inner
            .raft
            .change_membership(ids, false)
            .await
            .map_err(write_error)?;
        tracing::info!(node = %self.inner.node, ?voters, "changed the metadata voters");
        Ok(match resp.membership {
            Some(m) => ClusterMembership::of(&StoredMembership::new(Some(resp.log_id), m)),
            None => self.membership(),
        })
    }

    /// Status for metrics and `/readyz`.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        RaftStatus {
            node: self.inner.node,
            term: metrics.current_term,
            leader: metrics.current_leader.map(NodeId),
            last_log_index: metrics.last_log_index,
            committed: metrics.cluster_committed.map(|l| l.index),
            last_applied: metrics.last_applied.map(|l| l.index),
            snapshot: metrics.snapshot.map(|l| l.index),
            purged: metrics.purged.map(|l| l.index),
            replication: metrics.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, matched)| (NodeId(*id), matched.as_ref().map(|l| l.index)))
                    .collect()
            }),
            is_leader: metrics.state == ServerState::Leader
                && metrics.current_leader == Some(self.inner.node.0),
        }
    }

    /// openraft's own metrics, for tests that check snapshots and log purging.
    #[cfg(test)]
    pub(crate) fn raft_metrics(&self) -> openraft::metrics::RaftMetrics<TypeConfig> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// Stops Raft and flushes the store; idempotent. Requests made after it starts
    /// fail with `ShuttingDown`.
    pub async fn shutdown(&self) -> Result<(), ConsensusError> {
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return Ok(());
        }
        self.inner.closing.store(true, Ordering::Release);
        self.inner.raft.shutdown().await?;
        // Applies commit without fsync (see `state_machine`); one durable commit makes
        // everything applied so far durable, so a restart need not re-apply it.
        let db = self.inner.db.clone();
        blocking(move || {
            db::write(&db, Durability::Immediate)?.commit()?;
            Ok(())
        })
        .await?;
        *stopped = true;
        tracing::info!(node = %self.inner.node, "metadata stopped");
        Ok(())
    }
}

/// openraft's cluster name of the metadata group.
pub(crate) const CLUSTER_NAME: &str = "berth-metadata";

/// Starts a Raft member on the store in `dir` (with `cache_bytes` of page cache) with
/// the given transport.
async fn start<N>(
    dir: &Path,
    node: NodeId,
    network: N,
    config: Config,
    cache_bytes: usize,
) -> Result<(Raft<TypeConfig, StateMachineStore>, Arc<Database>), ConsensusError>
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
{
    let db = db::open(dir, cache_bytes).await?;
    let snapshots = dir.join(crate::snapshot_file::DIR_NAME);
    let store = {
        let db = db.clone();
        db::blocking(move || StateMachineStore::open(db, snapshots)).await?
    };
    let raft = Raft::new(
        node.0,
        Arc::new(config),
        network,
        LogStore::new(db.clone()),
        store,
    )
    .await
    .map_err(fatal)?;
    Ok((raft, db))
}

/// Writes the founding membership if the store has none yet.
async fn initialize(
    raft: &Raft<TypeConfig, StateMachineStore>,
    members: BTreeMap<u64, Peer>,
) -> Result<(), ConsensusError> {
    if raft.is_initialized().await.map_err(fatal)? {
        return Ok(());
    }
    let voters: Vec<u64> = members.keys().copied().collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(?voters, "initialized the metadata group membership"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(RaftError::APIError(e)) => return Err(ConsensusError::Initialize(e)),
        Err(RaftError::Fatal(f)) => return Err(fatal(f)),
    }
    Ok(())
}

/// Waits up to `timeout` for a known leader (`expected`, if given).
async fn wait_leader(
    raft: &Raft<TypeConfig, StateMachineStore>,
    timeout: Duration,
    expected: Option<NodeId>,
    what: &str,
) -> Result<NodeId, ConsensusError> {
    let waited = raft
        .wait(Some(timeout))
        .metrics(
            |m| match expected {
                Some(n) => m.current_leader == Some(n.0),
                None => m.current_leader.is_some(),
            },
            what,
        )
        .await;
    match waited {
        Ok(m) => Ok(NodeId(
            m.current_leader
                .expect("the wait condition requires a known leader"),
        )),
        Err(WaitError::ShuttingDown) => Err(ConsensusError::ShuttingDown),
        Err(WaitError::Timeout(..)) => Err(ConsensusError::Unavailable {
            cause: Unavailability::NoLeader {
                waited_ms: timeout.as_millis() as u64,
            },
        }),
    }
}

/// Maps a refused write (a command or a membership change) to the domain error.
/// Milliseconds since the Unix epoch by this node's clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ConsensusError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ConsensusError::NotLeader {
            leader: f.leader_id.map(NodeId),
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            ConsensusError::CommitUnknown {
                leader: f.leader_id.map(NodeId),
            }
        }
        RaftError::APIError(e) => ConsensusError::WriteRefused(e),
        RaftError::Fatal(f) => fatal(f),
    }
}
