//! berth's replicated metadata: an openraft member whose Raft log and registry state
//! machine live in one redb file, the registry model (manifests, tags, blobs, links,
//! referrers, upload sessions) with its versioned commands, and the [`Metadata`]
//! handle that proposes commands and serves linearizable reads.
//!
//! Map:
//! - [`model`]: records, commands ([`VersionedCommand`] on the wire), outcomes.
//! - `state`: the deterministic apply logic over the redb tables of `tables`.
//! - [`view`]: the queries ([`StateView`]) over one read transaction.
//! - [`tenancy`]: projects, users, robots, role bindings, signing keys, audit log and
//!   their commands; `tenancy_state`: their tables, apply and queries.
//! - `log_store`, `state_machine`: openraft's storage traits over redb.
//! - [`network`]: the transport seam and the transport of a single voter.
//! - [`grpc`]: the Raft transport between nodes over tonic gRPC (`proto/raft.proto`).
//! - `cluster`: how a clustered node starts, its Raft tuning, its membership.
//! - `handle`: [`Metadata`], the only entry point the node wires.
//! - `bench_support`: the apply step alone, for `benches/apply.rs`.
//!
//! Invariants: applying the same log gives the same state on every node (ordered
//! tables, time only from commands); every stored value and logged command carries a
//! format version; an acknowledged write is in the fsynced Raft log.

#[doc(hidden)]
pub mod bench_support;
mod cluster;
mod codec;
mod db;
pub mod error;
pub mod grpc;
mod handle;
mod log_store;
mod membership;
pub mod model;
pub mod network;
mod snapshot_file;
mod state;
mod state_machine;
mod tables;
pub mod tenancy;
mod tenancy_state;
mod type_config;
pub mod view;
mod view_project;

pub use cluster::{ClusterInit, ClusterMembership, RaftTuning};
pub use db::CACHE_BYTES_DEFAULT;
pub use error::{ConsensusError, Unavailability};
pub use grpc::RaftGrpcService;
pub use handle::{Metadata, RaftStatus};
pub use membership::CATCH_UP_MAX;
pub use model::{
    BlobRecord, Command, CommandV1, ManifestRecord, Outcome, ReferrerRecord, Rejection, TagRecord,
    UploadRecord, VersionedCommand,
};
pub use snapshot_file::SnapshotFile;
pub use tenancy_state::AuditQuery;
pub use type_config::{Peer, TypeConfig};
pub use view::StateView;

#[cfg(test)]
mod tests;
