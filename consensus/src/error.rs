//! The errors of the metadata layer, worded in the domain. Expected refusals of a
//! command are [`Outcome`](crate::Outcome) values, not errors.

use berth_types::NodeId;

use crate::type_config::TypeConfig;

/// Why the metadata cannot serve a request right now; the caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailability {
    #[error("no leader was elected within {waited_ms} ms")]
    NoLeader { waited_ms: u64 },
    #[error("the leader could not reach a quorum of voters")]
    NoQuorum,
    #[error("the leader, node {leader}, cannot be reached")]
    LeaderUnreachable { leader: NodeId },
    /// The leader refused a forwarded command as older than the forwarding window
    /// (by its own clock): it was delayed in flight, or this node's clock is behind
    /// the leader's.
    #[error(
        "the leader refused the command as {age_ms} ms old (delayed in flight, or this node's clock is behind the leader's)"
    )]
    Expired { age_ms: u64 },
    /// The command did not commit within the deadline; it may still commit.
    #[error("the command was not committed within {waited_ms} ms")]
    CommitTimeout { waited_ms: u64 },
}

/// Errors of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the Raft leader; writes and linearizable reads go to `leader`.
    #[error("this node is not the metadata leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("metadata is unavailable: {cause}")]
    Unavailable { cause: Unavailability },
    /// The leader changed while the command was in flight; it may or may not have been
    /// committed. Commands are written so that a retry is safe.
    #[error("leader changed while the command was in flight; its commit status is unknown")]
    CommitUnknown { leader: Option<NodeId> },
    /// Raft refused a write for a membership reason (a membership change in progress).
    #[error("raft refused the write")]
    WriteRefused(#[source] openraft::errors::ClientWriteError<TypeConfig>),
    #[error("metadata is shutting down")]
    ShuttingDown,
    /// The leader refused or could not finish a membership change; `detail` is the
    /// leader's own error, which cannot be chained across the network.
    #[error("membership change failed on the leader: {detail}")]
    MembershipChangeFailed { detail: String },
    /// Raft stopped after a fatal error (storage failure or panic); the node must restart.
    #[error("raft stopped")]
    Halted(#[source] openraft::errors::Fatal<TypeConfig>),
    #[error("metadata store")]
    Storage(#[source] redb::Error),
    #[error("creating the metadata directory")]
    Directory(#[source] std::io::Error),
    /// Writing, reading or receiving a snapshot file failed (a full disk, a damaged
    /// file).
    #[error("snapshot file")]
    SnapshotFile(#[source] std::io::Error),
    /// A stored or logged value does not decode: corruption or a format this build
    /// does not know.
    #[error("decoding {what}")]
    Codec {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{what} has format version {version}, which this build does not know")]
    UnknownFormat { what: &'static str, version: u8 },
    #[error("a stored entry of table {table} is malformed")]
    Malformed { table: &'static str },
    #[error("initializing the metadata group membership")]
    Initialize(#[source] openraft::errors::InitializeError<TypeConfig>),
    /// A peer's gRPC address is not a valid `host:port`.
    #[error("{addr:?} is not a valid peer address")]
    PeerAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A founding membership must list the node being opened at its own address.
    #[error("the founding membership does not list node {node} at its address {addr}")]
    FoundingMembership { node: NodeId, addr: String },
    #[error("raft configuration")]
    Config(#[source] openraft::ConfigError),
    /// A blocking storage task panicked or was cancelled.
    #[error("metadata storage task failed")]
    Task(#[source] tokio::task::JoinError),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ConsensusError {
            fn from(e: $t) -> ConsensusError {
                ConsensusError::Storage(redb::Error::from(e))
            }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::Error> for ConsensusError {
    fn from(e: redb::Error) -> ConsensusError {
        ConsensusError::Storage(e)
    }
}

impl From<tokio::task::JoinError> for ConsensusError {
    fn from(e: tokio::task::JoinError) -> ConsensusError {
        ConsensusError::Task(e)
    }
}

impl From<ConsensusError> for std::io::Error {
    fn from(e: ConsensusError) -> std::io::Error {
        std::io::Error::other(e)
    }
}
