//! The openraft type configuration of berth's metadata group: what a log entry
//! carries, what an apply returns, and how a voter is addressed. openraft is pinned
//! exactly and wrapped here so an upgrade touches one crate.

use serde::{Deserialize, Serialize};

use crate::model::{Outcome, VersionedCommand};

/// How to reach a Raft voter. Replicated in the membership so every node can dial every
/// other. A single-voter group has no peers to dial, so its address is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub addr: String,
}

openraft::declare_raft_types!(
    /// The Raft types of the metadata group. Node ids are berth `NodeId` values as
    /// plain `u64`, the form openraft's storage test suite builds. An apply answers
    /// `Some(outcome)` for a command and `None` for a blank or membership entry.
    pub TypeConfig:
        D = VersionedCommand,
        R = Option<Outcome>,
        NodeId = u64,
        Node = Peer,
);

/// A Raft log id of this group.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry of this group.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote of this group.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// The last membership a state machine applied.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this group.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
