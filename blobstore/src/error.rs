//! The errors of the blob store, worded in its domain: disks, shards, stripes and
//! layouts. I/O errors keep the disk and path they happened on.

use std::io;
use std::path::PathBuf;

use berth_types::{DiskId, EcProfile, NodeId};

use crate::codec::CodecError;
use crate::rpc::ShardRpcError;

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("profile {profile} needs {needed} distinct usable disks, {available} are available")]
    NotEnoughDisks {
        profile: EcProfile,
        needed: usize,
        available: usize,
    },
    #[error("disk id {disk} is used by two disks")]
    DuplicateDisk { disk: DiskId },
    #[error("shard size {shard_bytes} must be even, at least 2 and at most the shard size limit")]
    InvalidShardBytes { shard_bytes: u32 },
    #[error("disk {disk} is full")]
    DiskFull { disk: DiskId },
    #[error("I/O error on disk {disk} at {}", path.display())]
    Io {
        disk: DiskId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk label {} is unreadable", path.display())]
    DiskLabelUnreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("disk label {} has format version {version}, this build reads {supported}", path.display())]
    DiskLabelVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("stripe {stripe} has {available} good shards, {needed} are needed to read it")]
    TooFewShards {
        stripe: u64,
        needed: usize,
        available: usize,
    },
    #[error("range {start}..{end} is outside a blob of {size} bytes")]
    RangeOutOfBounds { start: u64, end: u64, size: u64 },
    #[error("layout is inconsistent (shard count, shard size or profile)")]
    InvalidLayout,
    #[error("layout places shard {shard} on node {node}, which is not this node")]
    RemoteShard { shard: usize, node: NodeId },
    #[error("placement names disk {disk} of this node, which this store does not have")]
    UnknownDisk { disk: DiskId },
    #[error("the shard service of node {node} failed for shard {shard}")]
    Peer {
        node: NodeId,
        shard: usize,
        #[source]
        source: ShardRpcError,
    },
    #[error("an earlier write of this upload failed; the upload must be aborted")]
    WriterFailed,
    #[error("erasure codec failed")]
    Codec(#[from] CodecError),
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

impl BlobStoreError {
    /// Classifies an I/O error of `disk`: a full disk (or quota) is its own error so
    /// callers can answer "insufficient storage" instead of a generic failure.
    pub(crate) fn io(disk: DiskId, path: impl Into<PathBuf>, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                BlobStoreError::DiskFull { disk }
            }
            _ => BlobStoreError::Io {
                disk,
                path: path.into(),
                source,
            },
        }
    }
}
