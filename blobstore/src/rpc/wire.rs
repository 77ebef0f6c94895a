//! Conversions between the shard service's protobuf messages and berth's types, and
//! the checks a message passes before anything touches a disk.

use berth_types::limits::SHARD_BYTES_MAX;
use berth_types::{Digest, DiskId, EcProfile, NodeId, UploadId};
use bytes::Bytes;

use super::client::ShardRef;
use super::{WIRE_FORMAT_VERSION, pb};
use crate::format::{self, CHECKSUM_BYTES, ShardHeader};

/// Why a message of the shard service is not one this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message format version {found}, this build speaks {supported}")]
    Version { found: u32, supported: u32 },
    #[error("the message lacks its {0}")]
    Missing(&'static str),
    #[error("upload id {0:?} does not parse")]
    Upload(String),
    #[error("digest {0:?} does not parse")]
    Digest(String),
    #[error("shard index {0} is out of range")]
    Index(u32),
    #[error("header fields (codec, k, m, shard size) do not make a valid shard header")]
    Header,
    #[error("a chunk checksum is {0} bytes long, not 32")]
    ChecksumLength(usize),
    #[error("the request does not decode: {0}")]
    Request(String),
    #[error("a GetChunks response holds {0}")]
    Record(&'static str),
}

pub(crate) fn check_version(found: u32) -> Result<(), WireError> {
    if found == WIRE_FORMAT_VERSION {
        Ok(())
    } else {
        Err(WireError::Version {
            found,
            supported: WIRE_FORMAT_VERSION,
        })
    }
}

pub(crate) fn shard_ref(node: NodeId, shard: &ShardRef) -> pb::ShardRef {
    pb::ShardRef {
        node: node.0,
        disk: shard.disk.0,
        upload: shard.upload.to_string(),
        index: u32::from(shard.index),
    }
}

/// The node a request is addressed to, and the shard it names.
pub(crate) fn parse_shard_ref(
    shard: Option<pb::ShardRef>,
) -> Result<(NodeId, ShardRef), WireError> {
    let shard = shard.ok_or(WireError::Missing("shard"))?;
    let upload: UploadId = shard
        .upload
        .parse()
        .map_err(|_| WireError::Upload(shard.upload.clone()))?;
    let index = u8::try_from(shard.index).map_err(|_| WireError::Index(shard.index))?;
    Ok((
        NodeId(shard.node),
        ShardRef {
            disk: DiskId(shard.disk),
            upload,
            index,
        },
    ))
}

pub(crate) fn header(h: &ShardHeader) -> pb::ShardHeader {
    pb::ShardHeader {
        codec: u32::from(format::codec_code(h.codec)),
        k: h.profile.k() as u32,
        m: h.profile.m() as u32,
        shard_bytes: h.shard_bytes,
    }
}

/// The header of shard `index` the fields describe. Accepts only what a store could
/// have written: a known codec, a valid profile that has shard `index`, and an even
/// shard size within the limit.
pub(crate) fn parse_header(
    h: Option<pb::ShardHeader>,
    index: u8,
) -> Result<ShardHeader, WireError> {
    let h = h.ok_or(WireError::Missing("header"))?;
    let codec = u8::try_from(h.codec)
        .ok()
        .and_then(format::codec_from_code)
        .ok_or(WireError::Header)?;
    let k = u8::try_from(h.k).map_err(|_| WireError::Header)?;
    let m = u8::try_from(h.m).map_err(|_| WireError::Header)?;
    let profile = EcProfile::new(k, m).map_err(|_| WireError::Header)?;
    if usize::from(index) >= profile.width() {
        return Err(WireError::Index(u32::from(index)));
    }
    if h.shard_bytes == 0 || !h.shard_bytes.is_multiple_of(2) || h.shard_bytes > SHARD_BYTES_MAX {
        return Err(WireError::Header);
    }
    Ok(ShardHeader {
        codec,
        profile,
        shard_index: index,
        shard_bytes: h.shard_bytes,
    })
}

pub(crate) fn parse_digest(digest: &str) -> Result<Digest, WireError> {
    digest
        .parse()
        .map_err(|_| WireError::Digest(digest.to_owned()))
}

pub(crate) fn chunk(
    stripe: u64,
    checksum: &[u8; CHECKSUM_BYTES as usize],
    data: Bytes,
) -> pb::Chunk {
    pb::Chunk {
        stripe,
        checksum: checksum.to_vec(),
        data,
    }
}

pub(crate) fn parse_checksum(checksum: &[u8]) -> Result<[u8; CHECKSUM_BYTES as usize], WireError> {
    checksum
        .try_into()
        .map_err(|_| WireError::ChecksumLength(checksum.len()))
}

#[cfg(test)]
mod tests {
    use berth_types::CodecId;

    use super::*;

    #[test]
    fn headers_round_trip_and_bad_fields_are_refused() {
        let h = ShardHeader {
            codec: CodecId::ReedSolomonV1,
            profile: EcProfile::new(4, 2).unwrap(),
            shard_index: 5,
            shard_bytes: 4096,
        };
        assert_eq!(parse_header(Some(header(&h)), 5), Ok(h));
        assert_eq!(parse_header(Some(header(&h)), 6), Err(WireError::Index(6)));
        let odd = pb::ShardHeader {
            shard_bytes: 4097,
            ..header(&h)
        };
        assert_eq!(parse_header(Some(odd), 0), Err(WireError::Header));
        let codec = pb::ShardHeader {
            codec: 9,
            ..header(&h)
        };
        assert_eq!(parse_header(Some(codec), 0), Err(WireError::Header));
        assert_eq!(parse_header(None, 0), Err(WireError::Missing("header")));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Version 1 messages are byte-for-byte stable: a node of a later build must still
    /// understand what a node of this one sends during a rolling upgrade. The bytes
    /// are kept verbatim; a field renumbered or retyped fails here.
    #[test]
    fn v1_messages_are_byte_stable() {
        use prost::Message;

        let shard = ShardRef {
            disk: DiskId(3),
            upload: UploadId::new(NodeId(2), 0xabc),
            index: 1,
        };
        let header = ShardHeader {
            codec: CodecId::ReedSolomonV1,
            profile: EcProfile::new(2, 1).unwrap(),
            shard_index: 1,
            shard_bytes: 4096,
        };
        let open = pb::PutChunksRequest {
            format_version: WIRE_FORMAT_VERSION,
            body: Some(pb::put_chunks_request::Body::Open(pb::PutOpen {
                shard: Some(shard_ref(NodeId(5), &shard)),
                header: Some(super::header(&header)),
            })),
        };
        assert_eq!(
            hex(&open.encode_to_vec()),
            concat!(
                "080112370a2a080510031a22322d3030303030303030303030303030303",
                "03030303030303030303030303061626320011209080110021801208020"
            )
        );
        let data = Bytes::from_static(b"berth!");
        let chunk = pb::GetChunksResponse {
            format_version: WIRE_FORMAT_VERSION,
            chunk: Some(super::chunk(7, &format::chunk_checksum(7, &data), data)),
        };
        assert_eq!(
            hex(&chunk.encode_to_vec()),
            concat!(
                "0801122c0807122003bf1a9d758ce917368e2e775fe1e8a3",
                "87fe8857dde1e2eeedd05d35ec0429fd1a06626572746821"
            )
        );
    }

    #[test]
    fn shard_refs_round_trip() {
        let shard = ShardRef {
            disk: DiskId(3),
            upload: UploadId::new(NodeId(2), 77),
            index: 4,
        };
        assert_eq!(
            parse_shard_ref(Some(shard_ref(NodeId(9), &shard))),
            Ok((NodeId(9), shard))
        );
        let bad = pb::ShardRef {
            upload: "nope".into(),
            ..shard_ref(NodeId(9), &shard)
        };
        assert_eq!(
            parse_shard_ref(Some(bad)),
            Err(WireError::Upload("nope".into()))
        );
    }
}
