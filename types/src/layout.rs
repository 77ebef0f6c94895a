//! Where a blob's bytes are: inline in the metadata, or erasure-coded into `k + m`
//! shard files placed on distinct disks. A striped blob is cut into stripes of `k`
//! data shards of `shard_size` bytes (the last stripe zero-padded); shard file `i` of
//! the blob holds shard `i` of every stripe, in order.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DiskId, NodeId, UploadId};
use crate::limits::{EC_DATA_SHARDS_MAX, EC_PARITY_SHARDS_MAX, SHARD_BYTES_MAX};

/// Why an erasure-coding profile is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcProfileError {
    #[error("k must be between 1 and {EC_DATA_SHARDS_MAX}")]
    DataShards,
    #[error("m must be at most {EC_PARITY_SHARDS_MAX}")]
    ParityShards,
    #[error("profile must look like k+m, for example 2+1")]
    Syntax,
}

/// A Reed-Solomon profile: `k` data shards and `m` parity shards per stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EcProfile {
    k: u8,
    m: u8,
}

impl EcProfile {
    pub fn new(k: u8, m: u8) -> Result<EcProfile, EcProfileError> {
        if k == 0 || k > EC_DATA_SHARDS_MAX {
            return Err(EcProfileError::DataShards);
        }
        if m > EC_PARITY_SHARDS_MAX {
            return Err(EcProfileError::ParityShards);
        }
        Ok(EcProfile { k, m })
    }

    /// `1+0`: a single copy, for a node with one disk.
    pub const SINGLE: EcProfile = EcProfile { k: 1, m: 0 };

    pub fn k(self) -> usize {
        self.k as usize
    }

    pub fn m(self) -> usize {
        self.m as usize
    }

    /// Shards per stripe, `k + m`.
    pub fn width(self) -> usize {
        self.k() + self.m()
    }
}

impl std::str::FromStr for EcProfile {
    type Err = EcProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, m) = s.split_once('+').ok_or(EcProfileError::Syntax)?;
        let k: u8 = k.trim().parse().map_err(|_| EcProfileError::Syntax)?;
        let m: u8 = m.trim().parse().map_err(|_| EcProfileError::Syntax)?;
        EcProfile::new(k, m)
    }
}

impl fmt::Display for EcProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

/// The erasure codec a blob was written with. Recorded per blob so the codec can
/// change without rewriting old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodecId {
    /// Systematic Reed-Solomon over GF(2^16) (reed-solomon-simd), format 1.
    ReedSolomonV1,
}

/// Where one shard file of a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardPlacement {
    pub node: NodeId,
    pub disk: DiskId,
}

/// The layout of an erasure-coded blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripedLayout {
    pub codec: CodecId,
    pub profile: EcProfile,
    pub shard_bytes: u32,
    /// The upload that wrote the shard files. Shard files are named by blob digest and
    /// upload, so two uploads of the same content never overwrite each other's files.
    pub upload: UploadId,
    /// One entry per shard index, `k + m` long: data shards first, then parity.
    pub shards: Vec<ShardPlacement>,
}

impl StripedLayout {
    /// Bytes of blob content in one stripe, `k * shard_bytes`.
    pub fn stripe_bytes(&self) -> u64 {
        self.profile.k() as u64 * u64::from(self.shard_bytes)
    }

    /// Number of stripes a blob of `size` bytes occupies.
    pub fn stripe_count(&self, size: u64) -> u64 {
        size.div_ceil(self.stripe_bytes())
    }

    /// Whether the layout is internally consistent.
    pub fn is_valid(&self) -> bool {
        self.shards.len() == self.profile.width()
            && self.shard_bytes > 0
            && self.shard_bytes <= SHARD_BYTES_MAX
    }
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobLayout {
    /// Small blobs live in the metadata itself.
    Inline(Vec<u8>),
    Striped(StripedLayout),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_parses_and_bounds() {
        assert_eq!(
            "2+1".parse::<EcProfile>().unwrap(),
            EcProfile::new(2, 1).unwrap()
        );
        assert_eq!("0+1".parse::<EcProfile>(), Err(EcProfileError::DataShards));
        assert_eq!(
            "2+9".parse::<EcProfile>(),
            Err(EcProfileError::ParityShards)
        );
        assert_eq!("21".parse::<EcProfile>(), Err(EcProfileError::Syntax));
        assert_eq!(EcProfile::new(4, 2).unwrap().to_string(), "4+2");
    }

    #[test]
    fn stripe_math() {
        let l = StripedLayout {
            codec: CodecId::ReedSolomonV1,
            profile: EcProfile::new(2, 2).unwrap(),
            shard_bytes: 1024,
            upload: UploadId::new(NodeId(1), 1),
            shards: vec![
                ShardPlacement {
                    node: NodeId(1),
                    disk: DiskId(0)
                };
                4
            ],
        };
        assert!(l.is_valid());
        assert_eq!(l.stripe_bytes(), 2048);
        assert_eq!(l.stripe_count(0), 0);
        assert_eq!(l.stripe_count(1), 1);
        assert_eq!(l.stripe_count(2048), 1);
        assert_eq!(l.stripe_count(2049), 2);
    }
}
