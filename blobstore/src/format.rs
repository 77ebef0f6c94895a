//! The byte format of shard files and the tree they live in on a disk (see FORMAT.md):
//! the fixed header, the fixed-size checksummed chunks, and the staging and final
//! path names. Pure functions; no I/O.

use std::path::PathBuf;

use berth_types::{CodecId, Digest, DigestAlgorithm, EcProfile, UploadId};

/// First bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"BERTHSHD";
/// Version of the shard file layout written by this build: version 2, where the last
/// chunk of a file may be shorter than `shard_bytes` (see `last_shard_bytes`).
pub const FORMAT_VERSION: u16 = 2;
/// Version 1: every chunk is `shard_bytes` long, the last stripe zero-padded. Still
/// read.
pub const FORMAT_VERSION_PADDED: u16 = 1;
/// The last chunk's shard length is a multiple of this: the block size of the
/// Reed-Solomon engine, so the parity of a short last stripe is the prefix of the
/// parity of the same stripe zero-padded to full size (what version 1 stored).
pub const SHORT_SHARD_ALIGN: u32 = 64;
/// Size of the shard file header: 32 bytes of fields, then their blake3.
pub const HEADER_BYTES: u64 = 64;
/// Size of the blake3 checksum in front of every chunk.
pub const CHECKSUM_BYTES: u64 = 32;

const FIELD_BYTES: usize = 32;
const CODEC_REED_SOLOMON_V1: u8 = 1;

/// Directory of staging files, relative to a disk's root.
pub const STAGING_DIR: &str = "staging";
/// Directory of committed shard files, relative to a disk's root.
pub const BLOBS_DIR: &str = "blobs";

/// What a shard file says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub codec: CodecId,
    pub profile: EcProfile,
    pub shard_index: u8,
    pub shard_bytes: u32,
}

/// Why a header is not one this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a shard file (bad magic)")]
    Magic,
    #[error("header checksum mismatch")]
    ChecksumMismatch,
    #[error("shard file format version {0} is not supported")]
    Version(u16),
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("header fields are out of range")]
    Fields,
}

impl ShardHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        self.encode_version(FORMAT_VERSION)
    }

    /// The header as format `version` writes it. Only `FORMAT_VERSION` is written by
    /// the store; version 1 is for tests that check old files still read.
    #[doc(hidden)]
    pub fn encode_version(&self, version: u16) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&version.to_le_bytes());
        out[10] = codec_code(self.codec);
        out[11] = self.profile.k() as u8;
        out[12] = self.profile.m() as u8;
        out[13] = self.shard_index;
        out[16..20].copy_from_slice(&self.shard_bytes.to_le_bytes());
        let sum = blake3::hash(&out[..FIELD_BYTES]);
        out[FIELD_BYTES..].copy_from_slice(sum.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_BYTES as usize]) -> Result<ShardHeader, HeaderError> {
        if bytes[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if blake3::hash(&bytes[..FIELD_BYTES]).as_bytes() != &bytes[FIELD_BYTES..] {
            return Err(HeaderError::ChecksumMismatch);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_PADDED {
            return Err(HeaderError::Version(version));
        }
        let codec = codec_from_code(bytes[10]).ok_or(HeaderError::Codec(bytes[10]))?;
        let profile = EcProfile::new(bytes[11], bytes[12]).map_err(|_| HeaderError::Fields)?;
        let shard_index = bytes[13];
        let shard_bytes = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if usize::from(shard_index) >= profile.width() || shard_bytes == 0 {
            return Err(HeaderError::Fields);
        }
        Ok(ShardHeader {
            codec,
            profile,
            shard_index,
            shard_bytes,
        })
    }
}

/// The byte that names `codec` in a shard header (and on the shard service's wire).
pub fn codec_code(codec: CodecId) -> u8 {
    match codec {
        CodecId::ReedSolomonV1 => CODEC_REED_SOLOMON_V1,
    }
}

/// The codec a header byte names, if this build knows it.
pub fn codec_from_code(code: u8) -> Option<CodecId> {
    match code {
        CODEC_REED_SOLOMON_V1 => Some(CodecId::ReedSolomonV1),
        _ => None,
    }
}

/// Size of one chunk (checksum and shard) of a shard file.
pub fn chunk_bytes(shard_bytes: u32) -> u64 {
    CHECKSUM_BYTES + u64::from(shard_bytes)
}

/// Shard length of the last stripe of a blob of `size` bytes (`size > 0`) with `k`
/// data shards of `shard_bytes`: its data split over `k` shards, rounded up to
/// `SHORT_SHARD_ALIGN`, at most `shard_bytes`.
pub fn last_shard_bytes(shard_bytes: u32, k: usize, size: u64) -> u32 {
    let stripe = u64::from(shard_bytes) * k as u64;
    let last = match size % stripe {
        0 => stripe,
        rest => rest,
    };
    let per_shard = last
        .div_ceil(k as u64)
        .next_multiple_of(u64::from(SHORT_SHARD_ALIGN));
    per_shard.min(u64::from(shard_bytes)) as u32
}

/// Shard length of stripe `stripe` of a blob of `size` bytes in a version 2 file:
/// `shard_bytes`, except for the last stripe (`last_shard_bytes`).
pub fn stripe_shard_bytes(shard_bytes: u32, k: usize, size: u64, stripe: u64) -> u32 {
    let stripes = size.div_ceil(u64::from(shard_bytes) * k as u64);
    if stripe + 1 == stripes {
        last_shard_bytes(shard_bytes, k, size)
    } else {
        shard_bytes
    }
}

/// How much of a verified chunk of `found` shard bytes is stripe `stripe` of a blob of
/// `size` bytes: all of it when it has the stripe's length, or, for the last stripe of
/// a version 1 file (zero-padded to `shard_bytes`), its leading short shard. `None`: a
/// chunk of any other length does not belong to a blob of this size.
pub fn usable_shard_len(
    shard_bytes: u32,
    k: usize,
    size: u64,
    stripe: u64,
    found: usize,
) -> Option<usize> {
    let expected = stripe_shard_bytes(shard_bytes, k, size, stripe) as usize;
    let last = stripe + 1 == size.div_ceil(u64::from(shard_bytes) * k as u64);
    (found == expected || (last && found == shard_bytes as usize)).then_some(expected)
}

/// Length of a version 2 shard file of a blob of `size` bytes.
pub fn file_bytes(shard_bytes: u32, k: usize, size: u64) -> u64 {
    let stripes = size.div_ceil(u64::from(shard_bytes) * k as u64);
    if stripes == 0 {
        return HEADER_BYTES;
    }
    chunk_offset(shard_bytes, stripes - 1)
        + CHECKSUM_BYTES
        + u64::from(last_shard_bytes(shard_bytes, k, size))
}

/// Offset of the chunk of stripe `stripe` in a shard file (only the last chunk of a
/// file may be short, so this holds for every chunk).
pub fn chunk_offset(shard_bytes: u32, stripe: u64) -> u64 {
    HEADER_BYTES + stripe * chunk_bytes(shard_bytes)
}

/// Checksum of the shard of stripe `stripe`. The stripe number is hashed in, so a
/// chunk written at the wrong offset fails its check instead of reading as valid.
pub fn chunk_checksum(stripe: u64, shard: &[u8]) -> [u8; CHECKSUM_BYTES as usize] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&stripe.to_le_bytes());
    hasher.update(shard);
    *hasher.finalize().as_bytes()
}

/// `staging/<upload-id>.<shard-index>`
pub fn staging_path(upload: &UploadId, shard: usize) -> PathBuf {
    PathBuf::from(STAGING_DIR).join(format!("{upload}.{shard}"))
}

/// `blobs/<algorithm>/<first two hex>/<hex>`: the directory of one digest's shard files.
pub fn blob_dir(digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    PathBuf::from(BLOBS_DIR)
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// `blobs/<algorithm>/<ab>/<hex>/<upload-id>.<shard-index>`
pub fn final_path(digest: &Digest, upload: &UploadId, shard: usize) -> PathBuf {
    blob_dir(digest).join(format!("{upload}.{shard}"))
}

/// Parses `<upload-id>.<shard-index>`, the file name of staging and final shard files.
pub fn parse_shard_name(name: &str) -> Option<(UploadId, usize)> {
    let (upload, shard) = name.rsplit_once('.')?;
    if shard.is_empty() || !shard.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((upload.parse().ok()?, shard.parse().ok()?))
}

/// The algorithms that have a directory under `blobs/`.
pub const DIGEST_ALGORITHMS: [DigestAlgorithm; 2] =
    [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512];

#[cfg(test)]
mod tests {
    use berth_types::NodeId;

    use super::*;

    fn header() -> ShardHeader {
        ShardHeader {
            codec: CodecId::ReedSolomonV1,
            profile: EcProfile::new(4, 2).unwrap(),
            shard_index: 5,
            shard_bytes: 1 << 20,
        }
    }

    /// Version 1 headers are byte-for-byte stable: a file written by this version must
    /// stay readable by every later build.
    #[test]
    fn header_v1_bytes_are_stable() {
        let bytes = header().encode_version(FORMAT_VERSION_PADDED);
        assert_eq!(
            &bytes[..32],
            &[
                b'B', b'E', b'R', b'T', b'H', b'S', b'H', b'D', 1, 0, 1, 4, 2, 5, 0, 0, 0, 0, 16,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(ShardHeader::decode(&bytes), Ok(header()));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes written by format version 1, kept verbatim: a later build that stops
    /// reading them, or computes chunk checksums differently, fails here.
    #[test]
    fn reads_v1_header_and_checksum_written_by_an_earlier_build() {
        let header = unhex(concat!(
            "4245525448534844010001020102000004000000000000000000000000000000",
            "d335668fbada8958ca0729a5c14fcc453e526dc4f584f62bae64cc25a4c3da22"
        ));
        let header: [u8; HEADER_BYTES as usize] = header.try_into().unwrap();
        assert_eq!(
            ShardHeader::decode(&header),
            Ok(ShardHeader {
                codec: CodecId::ReedSolomonV1,
                profile: EcProfile::new(2, 1).unwrap(),
                shard_index: 2,
                shard_bytes: 4,
            })
        );
        assert_eq!(
            chunk_checksum(3, b"berth!").to_vec(),
            unhex("c002b14416729159e0b9db78ab5575f392b397b8de473f02f62361992468dabc")
        );
    }

    #[test]
    fn header_v2_is_written_and_v1_still_decodes() {
        let bytes = header().encode();
        assert_eq!(&bytes[8..10], &[2, 0]);
        assert_eq!(ShardHeader::decode(&bytes), Ok(header()));
        let v1 = header().encode_version(FORMAT_VERSION_PADDED);
        assert_eq!(ShardHeader::decode(&v1), Ok(header()));
        let v3 = header().encode_version(3);
        assert_eq!(ShardHeader::decode(&v3), Err(HeaderError::Version(3)));
    }

    #[test]
    fn last_chunk_is_only_as_long_as_needed() {
        // 2 data shards of 1024 bytes: stripes of 2048.
        assert_eq!(last_shard_bytes(1024, 2, 1), 64);
        assert_eq!(last_shard_bytes(1024, 2, 128), 64);
        assert_eq!(last_shard_bytes(1024, 2, 129), 128);
        assert_eq!(last_shard_bytes(1024, 2, 2047), 1024);
        assert_eq!(last_shard_bytes(1024, 2, 2048), 1024);
        assert_eq!(last_shard_bytes(1024, 2, 2049), 64);
        assert_eq!(stripe_shard_bytes(1024, 2, 2049, 0), 1024);
        assert_eq!(stripe_shard_bytes(1024, 2, 2049, 1), 64);
        // A version 1 file's padded last chunk yields its short shard; nothing else
        // of a wrong length is usable.
        assert_eq!(usable_shard_len(1024, 2, 2049, 1, 64), Some(64));
        assert_eq!(usable_shard_len(1024, 2, 2049, 1, 1024), Some(64));
        assert_eq!(usable_shard_len(1024, 2, 2049, 1, 128), None);
        assert_eq!(usable_shard_len(1024, 2, 2049, 0, 1024), Some(1024));
        assert_eq!(usable_shard_len(1024, 2, 2049, 0, 64), None);
        assert_eq!(file_bytes(1024, 2, 0), 64);
        assert_eq!(file_bytes(1024, 2, 2049), 64 + (32 + 1024) + (32 + 64));
        // 40 KiB on 2+1 with 1 MiB shards: three files of 64 + 32 + 20 KiB.
        assert_eq!(file_bytes(1 << 20, 2, 40 << 10), 64 + 32 + (20 << 10));
    }

    #[test]
    fn header_rejects_damage() {
        let mut bytes = header().encode();
        bytes[13] = 1;
        assert_eq!(
            ShardHeader::decode(&bytes),
            Err(HeaderError::ChecksumMismatch)
        );
        let mut bytes = header().encode();
        bytes[0] = b'X';
        assert_eq!(ShardHeader::decode(&bytes), Err(HeaderError::Magic));
    }

    #[test]
    fn chunk_checksum_binds_the_stripe() {
        assert_ne!(chunk_checksum(0, b"ab"), chunk_checksum(1, b"ab"));
        assert_eq!(chunk_offset(10, 0), 64);
        assert_eq!(chunk_offset(10, 2), 64 + 2 * 42);
    }

    #[test]
    fn shard_names_round_trip() {
        let upload = UploadId::new(NodeId(3), 0xabc);
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let path = final_path(&digest, &upload, 4);
        assert_eq!(
            path,
            PathBuf::from(format!(
                "blobs/sha256/ab/{}/3-00000000000000000000000000000abc.4",
                "ab".repeat(32)
            ))
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_shard_name(name), Some((upload, 4)));
        assert_eq!(parse_shard_name("junk"), None);
        assert_eq!(parse_shard_name("3-00.1"), None);
    }
}
