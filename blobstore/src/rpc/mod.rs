//! The shard service over tonic gRPC (`proto/shard.proto`): how a node writes and reads
//! shard files on another node's disks. [`ShardService`] is the server the node mounts
//! on its gRPC listener, over the same disk and format code a local write uses;
//! [`ShardClient`] is one peer's client, used by the stripe writer and the reader when a
//! shard's placement names another node. [`wire`] holds the protobuf conversions and
//! [`limits`] the message sizes, queue lengths and timeouts. Reads between nodes go
//! over `raw`, GetChunks as a plain HTTP/2 body on the same connection ([`RawChunks`]
//! is its server, mounted beside the gRPC one).
//!
//! Error contract: a server answers what it cannot do with a gRPC status (see the
//! proto file); the client turns statuses and transport failures into
//! [`ShardRpcError`]. A chunk whose checksum fails on either side is `Corrupt`, so
//! the reader can rebuild that one chunk from parity.

mod client;
pub mod limits;
mod raw;
mod server;
mod wire;

pub use client::{PutSummary, ShardClient, ShardRef, ShardRpcError, ShardStat, ShardUpload};
pub use wire::WireError;

pub(crate) use client::log_cleanup_failure;
pub use raw::RawChunks;
pub use server::ShardService;

/// Version of the shard service's messages written by this build. Every message
/// carries it; a node refuses a request of another version.
pub const WIRE_FORMAT_VERSION: u32 = 1;

/// The generated protobuf messages, the `Shards` service trait and its server and
/// client.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("berth.shard.v1");
}

/// An error and its sources on one line, for a gRPC status message or a log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
