//! Leaf value types shared by every berth crate: content digests, repository names,
//! tags and references, node/disk/upload identifiers, erasure-coding profiles and blob
//! layouts, and the named limits. Parsing happens here, once, at the boundary; the
//! rest of berth only ever holds validated values. No I/O, no async.

pub mod digest;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod names;

pub use digest::{Digest, DigestAlgorithm, DigestError};
pub use ids::{DiskId, IdError, NodeId, UploadId};
pub use layout::{BlobLayout, CodecId, EcProfile, EcProfileError, ShardPlacement, StripedLayout};
pub use names::{NameError, Reference, RepoName, Tag};
