//! `StripeWriter`: turns the byte stream of one upload into shard files. It buffers at
//! most one stripe, encodes each full stripe, and writes its `k + m` chunks to staging
//! files in parallel, each through its `ShardTarget`: a disk of this node or a peer's
//! disk behind its shard service, by the same stripe logic. `commit` makes the files
//! durable and moves them to their final names; until then nothing outside `staging/`
//! changes, so a crash or an error never leaves a partial final file.

use std::sync::Arc;

use berth_types::{Digest, StripedLayout, UploadId};
use bytes::{Buf, Bytes};
use futures::future::{join_all, try_join_all};

use crate::error::BlobStoreError;
use crate::format::ShardHeader;
use crate::store::{StoreInner, blocking};
use crate::target::ShardTarget;

/// Writes one upload's blob. Obtained from `BlobStore::begin` or `begin_at`; finished
/// by `commit` or
/// `abort`. A writer dropped without either leaves staging files that
/// `BlobStore::sweep_staging` removes once the upload is no longer live.
pub struct StripeWriter {
    inner: Arc<StoreInner>,
    upload: UploadId,
    /// Where each shard index goes: a disk of this node or of a peer.
    targets: Vec<ShardTarget>,
    /// Whether the staging files exist; they are created with the first stripe.
    created: bool,
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
        targets: Vec<ShardTarget>,
    ) -> StripeWriter {
        StripeWriter {
            inner,
            upload,
            targets,
            created: false,
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
        self.created = false;
        try_join_all(self.targets.iter_mut().map(ShardTarget::abort))
            .await
            .map(drop)
    }

    async fn finish(&mut self, digest: &Digest) -> Result<StripedLayout, BlobStoreError> {
        if self.failed {
            return Err(BlobStoreError::WriterFailed);
        }
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        if !self.created {
            // An empty blob still gets its shard files: a header and no chunks.
            self.create_files().await?;
        }
        try_join_all(self.targets.iter_mut().map(ShardTarget::sync)).await?;
        // Renames start only once every shard is durable, so a final file never names
        // bytes that a crash could lose.
        try_join_all(self.targets.iter_mut().map(|t| t.publish(digest))).await?;
        Ok(StripedLayout {
            codec: self.inner.codec.id(),
            profile: self.inner.cfg.profile,
            shard_bytes: self.inner.cfg.shard_bytes,
            upload: self.upload,
            shards: self
                .targets
                .iter()
                .map(|t| t.placement(self.inner.node))
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
        if !self.created {
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
        try_join_all(
            shards
                .zip(self.targets.iter_mut())
                .map(|(shard, target)| target.write_chunk(stripe_index, shard)),
        )
        .await?;
        self.stripes += 1;
        Ok(())
    }

    /// Creates the staging files and writes their headers.
    async fn create_files(&mut self) -> Result<(), BlobStoreError> {
        let cfg = self.inner.cfg;
        let codec = self.inner.codec.id();
        try_join_all(self.targets.iter_mut().enumerate().map(|(i, target)| {
            target.create(ShardHeader {
                codec,
                profile: cfg.profile,
                shard_index: i as u8,
                shard_bytes: cfg.shard_bytes,
            })
        }))
        .await?;
        self.created = true;
        Ok(())
    }

    /// Best-effort cleanup after a failed commit: the staging files, and the final
    /// files this commit may already have renamed (nothing references them yet).
    async fn remove_files(&mut self, digest: &Digest) {
        self.created = false;
        join_all(self.targets.iter_mut().map(|t| t.discard(digest))).await;
    }
}
