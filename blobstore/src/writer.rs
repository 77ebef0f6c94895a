//! `StripeWriter`: turns the byte stream of one upload into shard files. It buffers at
//! most one stripe, encodes each full stripe, and writes its `k + m` chunks to staging
//! files on the chosen disks in parallel. `commit` makes the files durable and moves
//! them to their final names; until then nothing outside `staging/` changes, so a crash
//! or an error never leaves a partial final file.

use std::io;
use std::sync::Arc;

use berth_types::{Digest, ShardPlacement, StripedLayout, UploadId};
use bytes::{Buf, Bytes};
use futures::future::try_join_all;

use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, ShardHeader};
use crate::store::{StoreInner, blocking};

/// Writes one upload's blob. Obtained from `BlobStore::begin`; finished by `commit` or
/// `abort`. A writer dropped without either leaves staging files that
/// `BlobStore::sweep_staging` removes once the upload is no longer live.
pub struct StripeWriter {
    inner: Arc<StoreInner>,
    upload: UploadId,
    /// Disk of each shard index.
    targets: Vec<Arc<dyn Disk>>,
    /// Staging file of each shard index; created with the first stripe.
    files: Vec<Arc<dyn DiskFile>>,
    /// Bytes of the stripe being filled; never more than one stripe.
    pending: Vec<u8>,
    stripes: u64,
    len: u64,
    failed: bool,
}

impl std::fmt::Debug for StripeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeWriter")
            .field("upload", &self.upload)
            .field("stripes", &self.stripes)
            .field("len", &self.len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StripeWriter {
    pub(crate) fn new(
        inner: Arc<StoreInner>,
        upload: UploadId,
        targets: Vec<Arc<dyn Disk>>,
    ) -> StripeWriter {
        StripeWriter {
            inner,
            upload,
            targets,
            files: Vec::new(),
            pending: Vec::new(),
            stripes: 0,
            len: 0,
            failed: false,
        }
    }

    fn stripe_bytes(&self) -> usize {
        self.inner.cfg.profile.k() * self.inner.cfg.shard_bytes as usize
    }

    /// Appends bytes to the blob. Writes every stripe that fills up before returning,
    /// so a slow disk slows the caller down instead of growing a buffer.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), BlobStoreError> {
        if self.failed {
            return Err(BlobStoreError::WriterFailed);
        }
        let stripe_bytes = self.stripe_bytes();
        while data.has_remaining() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(stripe_bytes);
            }
            let take = (stripe_bytes - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data.advance(take);
            self.len += take as u64;
            if self.pending.len() == stripe_bytes {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pads and writes the last stripe, fdatasyncs every shard file, renames them into
    /// their final paths under `digest`, and syncs the directories. Returns the layout
    /// only once all of that is durable. On failure, removes what it wrote.
    pub async fn commit(mut self, digest: &Digest) -> Result<StripedLayout, BlobStoreError> {
        let result = self.finish(digest).await;
        if result.is_err() {
            self.remove_files(digest).await;
        }
        result
    }

    /// Removes the staging files of this upload.
    pub async fn abort(mut self) -> Result<(), BlobStoreError> {
        let targets = self.targets.clone();
        let upload = self.upload;
        self.files.clear();
        try_join_all(targets.into_iter().enumerate().map(|(i, disk)| {
            blocking(move || {
                let path = format::staging_path(&upload, i);
                match disk.remove(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(BlobStoreError::io(disk.id(), path, e)),
                }
            })
        }))
        .await?
        .into_iter()
        .collect()
    }

    async fn finish(&mut self, digest: &Digest) -> Result<StripedLayout, BlobStoreError> {
        if self.failed {
            return Err(BlobStoreError::WriterFailed);
        }
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        if self.files.is_empty() {
            // An empty blob still gets its shard files: a header and no chunks.
            self.create_files().await?;
        }
        let inner = &self.inner;
        try_join_all(
            self.files
                .iter()
                .zip(&self.targets)
                .enumerate()
                .map(|(i, (file, disk))| {
                    let (file, disk, inner) = (file.clone(), disk.clone(), inner.clone());
                    let path = format::staging_path(&self.upload, i);
                    async move {
                        blocking(move || {
                            file.sync_data()
                                .map_err(|e| inner.write_error(disk.id(), &path, e))
                        })
                        .await?
                    }
                }),
        )
        .await?;
        // Renames start only once every shard is durable, so a final file never names
        // bytes that a crash could lose.
        try_join_all(
            self.targets.iter().enumerate().map(|(i, disk)| {
                let (disk, inner, upload, digest) =
                    (disk.clone(), inner.clone(), self.upload, digest.clone());
                async move {
                    blocking(move || publish(&inner, disk.as_ref(), &upload, &digest, i)).await?
                }
            }),
        )
        .await?;
        Ok(StripedLayout {
            codec: self.inner.codec.id(),
            profile: self.inner.cfg.profile,
            shard_bytes: self.inner.cfg.shard_bytes,
            upload: self.upload,
            shards: self
                .targets
                .iter()
                .map(|d| ShardPlacement {
                    node: self.inner.node,
                    disk: d.id(),
                })
                .collect(),
        })
    }

    /// Encodes and writes the pending stripe (zero-padded if short). Any failure
    /// leaves the writer failed: the chunk it was writing may be incomplete.
    async fn flush(&mut self) -> Result<(), BlobStoreError> {
        let result = self.write_stripe().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    async fn write_stripe(&mut self) -> Result<(), BlobStoreError> {
        if self.files.is_empty() {
            self.create_files().await?;
        }
        let stripe_bytes = self.stripe_bytes();
        let mut stripe = std::mem::take(&mut self.pending);
        stripe.resize(stripe_bytes, 0);
        let stripe = Bytes::from(stripe);
        let shard_bytes = self.inner.cfg.shard_bytes as usize;
        let codec = self.inner.codec.clone();
        let data = stripe.clone();
        let parity = blocking(move || {
            let shards: Vec<&[u8]> = data.chunks(shard_bytes).collect();
            codec.encode(&shards)
        })
        .await??;
        let shards = (0..self.inner.cfg.profile.k())
            .map(|i| stripe.slice(i * shard_bytes..(i + 1) * shard_bytes))
            .chain(parity.into_iter().map(Bytes::from));
        let stripe_index = self.stripes;
        let offset = format::chunk_offset(self.inner.cfg.shard_bytes, stripe_index);
        let inner = &self.inner;
        try_join_all(
            shards
                .zip(self.files.iter().zip(&self.targets))
                .enumerate()
                .map(|(i, (shard, (file, disk)))| {
                    let (file, disk, inner) = (file.clone(), disk.clone(), inner.clone());
                    let path = format::staging_path(&self.upload, i);
                    async move {
                        blocking(move || {
                            let sum = format::chunk_checksum(stripe_index, &shard);
                            file.write_at(&sum, offset)
                                .and_then(|()| {
                                    file.write_at(&shard, offset + format::CHECKSUM_BYTES)
                                })
                                .map_err(|e| inner.write_error(disk.id(), &path, e))
                        })
                        .await?
                    }
                }),
        )
        .await?;
        self.stripes += 1;
        let width = self.targets.len() as u64;
        self.inner
            .counters
            .add_written(width * format::chunk_bytes(self.inner.cfg.shard_bytes));
        Ok(())
    }

    /// Creates the staging files and writes their headers.
    async fn create_files(&mut self) -> Result<(), BlobStoreError> {
        let cfg = self.inner.cfg;
        let codec = self.inner.codec.id();
        let inner = &self.inner;
        self.files = try_join_all(self.targets.iter().enumerate().map(|(i, disk)| {
            let (disk, inner) = (disk.clone(), inner.clone());
            let path = format::staging_path(&self.upload, i);
            let header = ShardHeader {
                codec,
                profile: cfg.profile,
                shard_index: i as u8,
                shard_bytes: cfg.shard_bytes,
            };
            async move {
                blocking(move || {
                    let file = disk
                        .create(&path)
                        .map_err(|e| inner.write_error(disk.id(), &path, e))?;
                    file.write_at(&header.encode(), 0)
                        .map_err(|e| inner.write_error(disk.id(), &path, e))?;
                    Ok::<_, BlobStoreError>(Arc::from(file))
                })
                .await?
            }
        }))
        .await?;
        self.inner
            .counters
            .add_written(self.targets.len() as u64 * format::HEADER_BYTES);
        Ok(())
    }

    /// Best-effort cleanup after a failed commit: the staging files, and the final
    /// files this commit may already have renamed (nothing references them yet).
    async fn remove_files(&mut self, digest: &Digest) {
        self.files.clear();
        let upload = self.upload;
        let jobs = self.targets.iter().enumerate().map(|(i, disk)| {
            let disk = disk.clone();
            let digest = digest.clone();
            blocking(move || {
                let paths = [
                    format::staging_path(&upload, i),
                    format::final_path(&digest, &upload, i),
                ];
                for path in paths {
                    if let Err(e) = disk.remove(&path)
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!(disk = %disk.id(), path = %path.display(), error = %e,
                            "could not remove a file of a failed commit; the sweeps will");
                    }
                }
            })
        });
        // Cleanup failures are logged above; a runtime shutting down leaves the files
        // to the sweeps.
        let _ = futures::future::join_all(jobs).await;
    }
}

/// Moves shard `i` from staging to its final path and makes the new name durable:
/// the digest's directory and its parents are synced, since either may be new.
fn publish(
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
