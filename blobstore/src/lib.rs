//! Blob bytes of berth on this node: the erasure codec, the disks, the shard files and
//! their byte format, placement of shards on disks, the stripe writer and reader behind
//! `BlobStore`, the scrub of one shard file, and the shard gRPC service and client
//! (`rpc`) through which a node writes and reads shard files on other nodes' disks. Metadata (which blobs exist,
//! their layouts) lives elsewhere; this crate only stores and returns bytes and never
//! decides what is committed.

mod buffers;
pub mod codec;
pub mod disk;
pub mod error;
pub mod format;
pub mod placement;
mod reader;
pub mod rpc;
mod scrub;
mod shard;
pub mod sim;
mod store;
mod target;
mod writer;

pub use codec::{Codec, CodecError, ReedSolomon, codec_for};
pub use disk::{DirEntry, Disk, DiskFile, FsDisk};
pub use error::BlobStoreError;
pub use placement::{
    Candidate, ClusterMap, DiskState, NodeCandidates, PlacementError, ShardMove, cluster_profile,
    place, place_across, place_shard, rebalance_moves,
};
pub use rpc::{RawChunks, ShardClient, ShardRef, ShardRpcError, ShardService};
pub use scrub::{Pacer, ShardDamage, ShardHealth};
pub use sim::{SimDisk, SimPower};
pub use store::{
    BlobStore, DamagedShard, DiskStats, FULL_RESERVE_CHUNKS, READ_HEDGE_DEFAULT, StoreConfig,
    StoreCounters,
};
pub use writer::{STRIPES_IN_FLIGHT_MAX, StripeWriter, Written};
