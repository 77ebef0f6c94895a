//! Identifiers of nodes, disks and upload sessions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A cluster member. Assigned once and persisted by the node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A disk of one node; unique within that node and persisted in the disk's folder.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct DiskId(pub u32);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not an upload id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upload id must be <node>-<32 hex characters>")]
pub struct IdError;

/// An upload session. The id names the node that owns the session, so a request that
/// reaches another node can be sent to the owner. Printed as `<node>-<32 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UploadId {
    owner: NodeId,
    nonce: u128,
}

impl UploadId {
    /// A new id owned by `owner`; `nonce` must come from a random source.
    pub fn new(owner: NodeId, nonce: u128) -> UploadId {
        UploadId { owner, nonce }
    }

    pub fn owner(&self) -> NodeId {
        self.owner
    }
}

impl FromStr for UploadId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, nonce) = s.split_once('-').ok_or(IdError)?;
        if node.is_empty()
            || node.len() > 20
            || !node.bytes().all(|b| b.is_ascii_digit())
            || nonce.len() != 32
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError);
        }
        Ok(UploadId {
            owner: NodeId(node.parse().map_err(|_| IdError)?),
            nonce: u128::from_str_radix(nonce, 16).map_err(|_| IdError)?,
        })
    }
}

impl TryFrom<String> for UploadId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UploadId> for String {
    fn from(u: UploadId) -> String {
        u.to_string()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:032x}", self.owner.0, self.nonce)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_id_round_trips_and_names_owner() {
        let id = UploadId::new(NodeId(7), 0xdead_beef);
        let s = id.to_string();
        assert_eq!(s, "7-000000000000000000000000deadbeef");
        let back: UploadId = s.parse().unwrap();
        assert_eq!(back, id);
        assert_eq!(back.owner(), NodeId(7));
    }

    #[test]
    fn upload_id_rejects_garbage() {
        for s in [
            "",
            "7",
            "-0000",
            "x-000000000000000000000000deadbeef",
            "7-000000000000000000000000DEADBEEF",
            "7-00",
            "../../etc-000000000000000000000000deadbeef",
        ] {
            assert!(s.parse::<UploadId>().is_err(), "{s}");
        }
    }
}
