//! The Raft transport over tonic gRPC (`proto/raft.proto`): the client side openraft
//! drives through `RaftNetworkFactory` (`client`), the server side the node mounts on
//! its gRPC listener ([`RaftGrpcService`]), the conversions between openraft messages
//! and protobuf (`wire`), and the transport's limits (`limits`).
//!
//! Error contract: a node answers a request it cannot serve with a gRPC status (see
//! `RpcRefusal`); the sender maps connection failures and refusals to openraft's
//! `Unreachable`, which makes Raft back off before retrying that peer, expired
//! deadlines to `Timeout`, and anything else to a `NetworkError`, retried at once.

mod client;
pub(crate) mod forward;
mod limits;
mod server;
pub mod tls;
mod wire;

pub use client::peer_endpoint;
pub(crate) use client::peer_endpoint as endpoint;
pub(crate) use client::{Dialer, GrpcNetwork};
pub(crate) use limits::{APPEND_ENTRIES_MAX, SNAPSHOT_CHUNK_BYTES_DEFAULT};
pub use server::RaftGrpcService;

use openraft::errors::Fatal;

use crate::error::ConsensusError;
use crate::type_config::TypeConfig;

/// The generated protobuf messages, the `Raft` service trait and its server and client.
pub mod pb {
    tonic::include_proto!("berth.raft.v1");
}

/// Why a node refused a Raft RPC. Sent to the caller as a gRPC status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcRefusal {
    #[error("the request is addressed to node {addressed}, but this is node {this}")]
    WrongNode { addressed: u64, this: u64 },
    #[error("the {what} payload does not decode")]
    Payload {
        what: &'static str,
        #[source]
        source: ConsensusError,
    },
    #[error("the snapshot stream does not start with a header")]
    SnapshotWithoutHeader,
    #[error("the snapshot stream carries a second header")]
    SnapshotHeaderRepeated,
    #[error("a snapshot of {bytes} bytes exceeds the limit of {max} bytes")]
    SnapshotTooLarge { bytes: u64, max: u64 },
    #[error("the snapshot stream carried {received} bytes but its header declared {declared}")]
    SnapshotLength { declared: u64, received: u64 },
    #[error("the snapshot bytes do not match the SHA-256 in their header")]
    SnapshotChecksum,
    #[error("no snapshot message arrived within {waited_ms} ms")]
    SnapshotStalled { waited_ms: u64 },
    #[error("raft on this node has stopped")]
    Halted(#[source] Fatal<TypeConfig>),
    /// Staging the received snapshot on disk failed (a full disk, for one).
    #[error("storing the received snapshot")]
    SnapshotFile(#[source] std::io::Error),
}

impl From<RpcRefusal> for tonic::Status {
    fn from(refusal: RpcRefusal) -> tonic::Status {
        let message = error_chain(&refusal);
        match refusal {
            RpcRefusal::WrongNode { .. } => tonic::Status::failed_precondition(message),
            RpcRefusal::Payload { .. }
            | RpcRefusal::SnapshotWithoutHeader
            | RpcRefusal::SnapshotHeaderRepeated
            | RpcRefusal::SnapshotTooLarge { .. }
            | RpcRefusal::SnapshotLength { .. }
            | RpcRefusal::SnapshotChecksum => tonic::Status::invalid_argument(message),
            RpcRefusal::SnapshotStalled { .. } => tonic::Status::deadline_exceeded(message),
            RpcRefusal::Halted(_) => tonic::Status::unavailable(message),
            RpcRefusal::SnapshotFile(_) => tonic::Status::resource_exhausted(message),
        }
    }
}

/// Sources beyond this depth are left out of a status message.
const ERROR_SOURCES_MAX: usize = 8;

/// An error and its sources on one line, for a gRPC status message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    for source in std::iter::successors(e.source(), |s| s.source()).take(ERROR_SOURCES_MAX) {
        out.push_str(": ");
        out.push_str(&source.to_string());
    }
    out
}
