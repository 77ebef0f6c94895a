//! Blob bytes of berth on this node: the erasure codec, the disks, the shard files and
//! their byte format, placement of shards on disks, and the stripe writer and reader
//! behind `BlobStore`. Metadata (which blobs exist, their layouts) lives elsewhere; this
//! crate only stores and returns bytes and never decides what is committed.

pub mod codec;
pub mod disk;
pub mod error;
pub mod format;
pub mod placement;
mod reader;
pub mod sim;
mod store;
mod writer;

pub use codec::{Codec, CodecError, ReedSolomon, codec_for};
pub use disk::{DirEntry, Disk, DiskFile, FsDisk};
pub use error::BlobStoreError;
pub use placement::{Candidate, DiskState, PlacementError, place};
pub use sim::{SimDisk, SimPower};
pub use store::{BlobStore, DiskStats, FULL_RESERVE_CHUNKS, StoreConfig, StoreCounters};
pub use writer::StripeWriter;
