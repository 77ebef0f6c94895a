//! Helpers shared by the blob store integration tests: deterministic data, fake
//! digests, and writing or reading a whole blob.

use std::ops::Range;
use std::sync::Arc;

use berth_blobstore::{BlobStore, BlobStoreError, Disk, FsDisk};
use berth_types::{Digest, DigestAlgorithm, DiskId, NodeId, StripedLayout, UploadId};
use bytes::Bytes;
use futures::TryStreamExt;

pub const NODE: NodeId = NodeId(1);

/// Deterministic bytes (xorshift), different for every seed.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A digest for test content. The store never checks digests, it only names files by
/// them, so blake3 output standing in for sha256 is enough.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_bytes(DigestAlgorithm::Sha256, blake3::hash(bytes).as_bytes())
}

pub fn upload(n: u128) -> UploadId {
    UploadId::new(NODE, n)
}

pub fn fs_disks(root: &std::path::Path, n: u32) -> Vec<Arc<dyn Disk>> {
    (0..n)
        .map(|i| {
            Arc::new(FsDisk::open(root.join(format!("disk{i}")), DiskId(i)).unwrap())
                as Arc<dyn Disk>
        })
        .collect()
}

/// Writes `bytes` in uneven pieces (so pieces straddle stripe boundaries) and commits.
pub async fn put(
    store: &BlobStore,
    upload: UploadId,
    bytes: &[u8],
) -> Result<(Digest, StripedLayout), BlobStoreError> {
    let digest = digest_of(bytes);
    let mut writer = store.begin(upload)?;
    let mut rest = bytes;
    let mut piece = 1000;
    while !rest.is_empty() {
        let n = piece.min(rest.len());
        writer.write(Bytes::copy_from_slice(&rest[..n])).await?;
        rest = &rest[n..];
        piece = piece * 7 % 70_001 + 1;
    }
    assert_eq!(writer.len(), bytes.len() as u64);
    let written = writer.commit(&digest).await?;
    assert_eq!(written.missing, Vec::<usize>::new());
    Ok((digest, written.layout))
}

pub async fn get(
    store: &BlobStore,
    layout: &StripedLayout,
    digest: &Digest,
    size: u64,
    range: Range<u64>,
) -> Result<Vec<u8>, BlobStoreError> {
    let pieces: Vec<Bytes> = store
        .read(layout, digest, size, range)
        .try_collect()
        .await?;
    Ok(pieces.concat())
}

/// Rewrites the shard files of a committed blob (all under `root/disk<id>/`) the way
/// format version 1 stored them: a version 1 header, and the last stripe zero-padded to
/// full `shard_bytes` in every shard, its parity computed by the codec over the padded
/// data. What a blob written before version 2 looks like on disk.
pub fn rewrite_as_v1(root: &std::path::Path, layout: &StripedLayout, digest: &Digest, size: u64) {
    use berth_blobstore::{codec_for, format};

    let path = |i: usize| {
        root.join(format!("disk{}", layout.shards[i].disk))
            .join(format::final_path(digest, &layout.upload, i))
    };
    let (k, width) = (layout.profile.k(), layout.profile.width());
    let full = layout.shard_bytes as usize;
    let stripes = layout.stripe_count(size);
    let mut files: Vec<Vec<u8>> = (0..width)
        .map(|i| std::fs::read(path(i)).unwrap())
        .collect();
    for (i, file) in files.iter_mut().enumerate() {
        let header: [u8; 64] = file[..64].try_into().unwrap();
        let header = format::ShardHeader::decode(&header).unwrap();
        assert_eq!(usize::from(header.shard_index), i);
        file[..64].copy_from_slice(&header.encode_version(format::FORMAT_VERSION_PADDED));
    }
    if stripes == 0 {
        for (i, file) in files.iter().enumerate() {
            std::fs::write(path(i), file).unwrap();
        }
        return;
    }
    let last = stripes - 1;
    let offset = format::chunk_offset(layout.shard_bytes, last) as usize;
    let data: Vec<Vec<u8>> = files[..k]
        .iter()
        .map(|f| {
            let mut shard = f[offset + format::CHECKSUM_BYTES as usize..].to_vec();
            shard.resize(full, 0);
            shard
        })
        .collect();
    let views: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let parity = codec_for(layout.codec, layout.profile)
        .encode(&views)
        .unwrap();
    for (i, shard) in data.iter().chain(&parity).enumerate() {
        let file = &mut files[i];
        file.truncate(offset);
        file.extend_from_slice(&format::chunk_checksum(last, shard));
        file.extend_from_slice(shard);
        assert_eq!(
            file.len() as u64,
            format::HEADER_BYTES + stripes * format::chunk_bytes(layout.shard_bytes)
        );
        std::fs::write(path(i), file).unwrap();
    }
}

/// Flips the bits of one byte of the file at `path`.
pub fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}
