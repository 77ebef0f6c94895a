//! The steps of one shard file's life on a disk of this node, shared by the stripe
//! writer, the reader and the shard service so that a shard written or read for another
//! node goes through exactly the code a local one does: creating a staging file with
//! its header, writing and reading checksummed chunks, syncing, publishing the staging
//! file under its final name, and removing files. Every function blocks; callers run
//! them on the blocking pool. Write-path failures go through `StoreInner::write_error`,
//! so a broken disk leaves placement whichever node asked for the write.

use std::io;
use std::path::Path;

use berth_types::{Digest, UploadId};
use bytes::Bytes;

use crate::buffers::{ChunkKey, PooledBuf};
use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, CHECKSUM_BYTES, HEADER_BYTES, HeaderError, ShardHeader};
use crate::store::StoreInner;

/// Creates (or truncates) the staging file of shard `header.shard_index` of `upload`
/// and writes its header.
pub(crate) fn create_staging(
    inner: &StoreInner,
    disk: &dyn Disk,
    upload: &UploadId,
    header: &ShardHeader,
) -> Result<Box<dyn DiskFile>, BlobStoreError> {
    let path = format::staging_path(upload, usize::from(header.shard_index));
    let file = disk
        .create(&path)
        .map_err(|e| inner.write_error(disk.id(), &path, e))?;
    file.write_at(&header.encode(), 0)
        .map_err(|e| inner.write_error(disk.id(), &path, e))?;
    inner.counters.add_written(HEADER_BYTES);
    Ok(file)
}

/// Writes the chunk of `stripe` (its checksum, then the shard) at its offset in a shard
/// file of `shard_bytes`-long shards; `shard` is that long, or shorter for the last
/// stripe. `path` names the file in errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_chunk(
    inner: &StoreInner,
    disk: &dyn Disk,
    path: &Path,
    file: &dyn DiskFile,
    shard_bytes: u32,
    stripe: u64,
    checksum: &[u8; CHECKSUM_BYTES as usize],
    shard: &[u8],
) -> Result<(), BlobStoreError> {
    debug_assert!(shard.len() <= shard_bytes as usize);
    let offset = format::chunk_offset(shard_bytes, stripe);
    file.write_at(checksum, offset)
        .and_then(|()| file.write_at(shard, offset + CHECKSUM_BYTES))
        .map_err(|e| inner.write_error(disk.id(), path, e))?;
    let written = CHECKSUM_BYTES + shard.len() as u64;
    inner.counters.add_written(written);
    // The device writes this chunk while the next ones arrive, instead of all of the
    // file at once when the upload commits and fdatasyncs it.
    file.start_writeback(offset, written);
    Ok(())
}

/// Makes the written bytes of a shard file durable.
pub(crate) fn sync(
    inner: &StoreInner,
    disk: &dyn Disk,
    path: &Path,
    file: &dyn DiskFile,
) -> Result<(), BlobStoreError> {
    file.sync_data()
        .map_err(|e| inner.write_error(disk.id(), path, e))
}

/// Moves shard `i` from staging to its final path and makes the new name durable:
/// the digest's directory and its parents are synced, since either may be new.
pub(crate) fn publish(
    inner: &StoreInner,
    disk: &dyn Disk,
    upload: &UploadId,
    digest: &Digest,
    i: usize,
) -> Result<(), BlobStoreError> {
    let id = disk.id();
    let dir = format::blob_dir(digest);
    let to = format::final_path(digest, upload, i);
    disk.create_dir_all(&dir)
        .map_err(|e| inner.write_error(id, &dir, e))?;
    disk.rename(&format::staging_path(upload, i), &to)
        .map_err(|e| inner.write_error(id, &to, e))?;
    for d in dir.ancestors().take(3) {
        disk.sync_dir(d).map_err(|e| inner.write_error(id, d, e))?;
    }
    Ok(())
}

/// Removes a file; returns whether this call removed it. A missing file is fine.
pub(crate) fn remove(disk: &dyn Disk, path: &Path) -> Result<bool, BlobStoreError> {
    match disk.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BlobStoreError::io(disk.id(), path, e)),
    }
}

/// Why a committed shard file cannot serve a read at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("cannot open or read the header: {0}")]
    Io(#[from] io::Error),
    #[error("bad header: {0}")]
    Header(#[from] HeaderError),
    #[error("header {found:?} does not match the layout")]
    Mismatch { found: ShardHeader },
}

/// Opens the final shard file `expected.shard_index` of `upload` under `digest` and
/// checks that its header is `expected`.
pub(crate) fn open_final(
    inner: &StoreInner,
    disk: &dyn Disk,
    digest: &Digest,
    upload: &UploadId,
    expected: &ShardHeader,
) -> Result<Box<dyn DiskFile>, Unusable> {
    let path = format::final_path(digest, upload, usize::from(expected.shard_index));
    let file = disk.open(&path)?;
    let found = read_header(inner, file.as_ref())?;
    if found != *expected {
        return Err(Unusable::Mismatch { found });
    }
    Ok(file)
}

/// Reads and decodes the header of a shard file.
pub(crate) fn read_header(
    inner: &StoreInner,
    file: &dyn DiskFile,
) -> Result<ShardHeader, Unusable> {
    let mut bytes = [0u8; HEADER_BYTES as usize];
    file.read_at(&mut bytes, 0)?;
    inner.counters.add_read(HEADER_BYTES);
    Ok(ShardHeader::decode(&bytes)?)
}

/// Why one chunk of a usable shard file cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkUnusable {
    #[error("chunk unreadable: {0}")]
    Io(#[from] io::Error),
    #[error("chunk checksum mismatch")]
    ChecksumMismatch,
}

/// A chunk as read: its checksum as stored and its shard bytes.
pub(crate) struct Chunk {
    pub checksum: [u8; CHECKSUM_BYTES as usize],
    pub shard: Bytes,
}

/// Reads the chunk of `stripe` and verifies its checksum. Counts the bytes read and a
/// checksum failure. The chunk is `shard_bytes` long unless the file ends sooner: the
/// last chunk of a version 2 file is short. The caller, which knows the blob size,
/// checks the length it gets; a file cut short fails the checksum or the length check,
/// never reads as good.
pub(crate) fn read_chunk(
    inner: &StoreInner,
    file: &dyn DiskFile,
    shard_bytes: u32,
    stripe: u64,
) -> Result<Chunk, ChunkUnusable> {
    let buf = read_verified(inner, file, shard_bytes, stripe)?;
    Ok(Chunk::of(buf.freeze()))
}

/// The shard bytes of chunk `key` of a committed shard file, as `read_chunk` reads
/// them, except that a chunk another read holds now is taken from that read (it was
/// verified when read) instead of from the disk, and a chunk read here is offered to
/// the reads that ask for it while it is held (`buffers`).
pub(crate) fn read_shared_chunk(
    inner: &StoreInner,
    file: &dyn DiskFile,
    shard_bytes: u32,
    key: ChunkKey,
) -> Result<Bytes, ChunkUnusable> {
    let whole = match inner.buffers.live(&key) {
        Some(whole) => {
            inner.counters.shared_read();
            whole
        }
        None => {
            let buf = read_verified(inner, file, shard_bytes, key.stripe)?;
            inner.buffers.share(key, buf)
        }
    };
    Ok(whole.slice(CHECKSUM_BYTES as usize..))
}

/// Reads the chunk of `stripe` with the checksum stored before it, without checking
/// one against the other: for the shard service, whose caller verifies every chunk it
/// receives (a chunk that rotted here fails there, which counts it and has the shard
/// repaired). Counts the bytes read.
pub(crate) fn read_chunk_unverified(
    inner: &StoreInner,
    file: &dyn DiskFile,
    shard_bytes: u32,
    stripe: u64,
) -> io::Result<Chunk> {
    Ok(Chunk::of(
        read_raw(inner, file, shard_bytes, stripe)?.freeze(),
    ))
}

/// `read_raw`, then the chunk checked against its checksum.
fn read_verified(
    inner: &StoreInner,
    file: &dyn DiskFile,
    shard_bytes: u32,
    stripe: u64,
) -> Result<PooledBuf, ChunkUnusable> {
    let buf = read_raw(inner, file, shard_bytes, stripe)?;
    let (sum, data) = buf.as_ref().split_at(CHECKSUM_BYTES as usize);
    if format::chunk_checksum(stripe, data) != sum {
        inner.counters.checksum_failed();
        return Err(ChunkUnusable::ChecksumMismatch);
    }
    Ok(buf)
}

/// The stored checksum and bytes of the chunk of `stripe`, in one buffer. Counts the
/// bytes read.
fn read_raw(
    inner: &StoreInner,
    file: &dyn DiskFile,
    shard_bytes: u32,
    stripe: u64,
) -> io::Result<PooledBuf> {
    let offset = format::chunk_offset(shard_bytes, stripe);
    let left = file.size()?.saturating_sub(offset);
    if left <= CHECKSUM_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ends before the chunk of stripe {stripe}"),
        ));
    }
    let len = left.min(format::chunk_bytes(shard_bytes));
    let mut buf = inner.buffers.take(len as usize);
    file.read_at(buf.as_mut_slice(), offset)?;
    inner.counters.add_read(len);
    Ok(buf)
}

impl Chunk {
    /// The chunk in `whole`, a buffer of its checksum then its bytes.
    fn of(whole: Bytes) -> Chunk {
        let checksum = whole[..CHECKSUM_BYTES as usize]
            .try_into()
            .expect("a chunk buffer is longer than its checksum");
        Chunk {
            checksum,
            shard: whole.slice(CHECKSUM_BYTES as usize..),
        }
    }
}
