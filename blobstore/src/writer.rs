//! `StripeWriter`: turns the byte stream of one upload into shard files. It buffers at
//! most one stripe, encodes each full stripe, and writes its `k + m` chunks to staging
//! files in parallel, each through its `ShardTarget`: a disk of this node or a peer's
//! disk behind its shard service, by the same stripe logic. `commit` makes the files
//! durable and moves them to their final names; until then nothing outside `staging/`
//! changes, so a crash or an error never leaves a partial final file.
//!
//! Write quorum: a target that fails (a peer that dies, a disk that breaks) is dropped
//! and the upload goes on as long as `k + 1` targets remain (all of them for a profile
//! without parity); the committed layout still names the lost shards, and `commit`
//! lists them so the caller can queue their repair. Fewer than `k + 1` fails the upload.

use std::sync::Arc;

use berth_types::{CodecId, Digest, EcProfile, StripedLayout, UploadId};
use bytes::{Buf, Bytes};
use futures::future::join_all;

use crate::codec::{Codec, codec_for};
use crate::error::BlobStoreError;
use crate::format::ShardHeader;
use crate::store::{StoreInner, blocking};
use crate::target::ShardTarget;

/// Runs one step on every live target of a writer at once and settles the results:
/// `$step` is an expression over `$i` (the shard index) and `$t` (its target) that
/// makes the step's future.
macro_rules! on_targets {
    ($w:expr, |$i:ident, $t:ident| $step:expr) => {{
        let alive = $w.alive.clone();
        let results = join_all(
            $w.targets
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| alive[*i])
                .map(|($i, $t)| {
                    let step = $step;
                    async move { ($i, step.await) }
                }),
        )
        .await;
        $w.settle(results)
    }};
}

/// Writes one upload's blob. Obtained from `BlobStore::begin` or `begin_at`; finished
/// by `commit` or
/// `abort`. A writer dropped without either leaves staging files that
/// `BlobStore::sweep_staging` removes once the upload is no longer live.
pub struct StripeWriter {
    inner: Arc<StoreInner>,
    upload: UploadId,
    profile: EcProfile,
    codec: Arc<dyn Codec>,
    /// Where each shard index goes: a disk of this node or of a peer.
    targets: Vec<ShardTarget>,
    /// Whether each target still takes writes; a failed one is dropped for good.
    alive: Vec<bool>,
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
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

impl StripeWriter {
    pub(crate) fn new(
        inner: Arc<StoreInner>,
        upload: UploadId,
        profile: EcProfile,
        targets: Vec<ShardTarget>,
    ) -> StripeWriter {
        StripeWriter {
            inner,
            upload,
            profile,
            codec: codec_for(CodecId::ReedSolomonV1, profile),
            alive: vec![true; targets.len()],
            targets,
            created: false,
            pending: Vec::new(),
            stripes: 0,
            len: 0,
            failed: false,
        }
    }

    fn stripe_bytes(&self) -> usize {
        self.profile.k() * self.inner.cfg.shard_bytes as usize
    }

    /// Targets that must stay alive for the upload to go on: `k + 1`, or every one for
    /// a profile without parity.
    fn quorum(&self) -> usize {
        if self.profile.m() == 0 {
            self.profile.width()
        } else {
            self.profile.k() + 1
        }
    }

    /// Takes the results of one step on the live targets: a target whose step failed
    /// is dropped; fails (with the first error) only when fewer than the quorum remain.
    fn settle(
        &mut self,
        results: Vec<(usize, Result<(), BlobStoreError>)>,
    ) -> Result<(), BlobStoreError> {
        let mut first = None;
        for (i, result) in results {
            if let Err(e) = result {
                tracing::warn!(upload = %self.upload, shard = i, error = %e,
                    "shard target failed; the upload goes on without it if enough remain");
                self.alive[i] = false;
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) if self.alive.iter().filter(|a| **a).count() < self.quorum() => Err(e),
            _ => Ok(()),
        }
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
    /// only once all of that is durable on at least the quorum of targets, with the
    /// shards that were lost on the way. On failure, removes what it wrote.
    pub async fn commit(mut self, digest: &Digest) -> Result<Written, BlobStoreError> {
        let result = self.finish(digest).await;
        if result.is_err() {
            self.remove_files(digest).await;
        }
        result
    }

    /// Removes the staging files of this upload.
    pub async fn abort(mut self) -> Result<(), BlobStoreError> {
        self.created = false;
        let results = join_all(
            self.targets
                .iter_mut()
                .zip(&self.alive)
                .filter(|(t, alive)| **alive || t.is_local())
                .map(|(t, _)| t.abort()),
        )
        .await;
        results.into_iter().collect()
    }

    async fn finish(&mut self, digest: &Digest) -> Result<Written, BlobStoreError> {
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
        on_targets!(self, |_i, t| t.sync())?;
        // Renames start only once every shard is durable, so a final file never names
        // bytes that a crash could lose.
        on_targets!(self, |_i, t| t.publish(digest))?;
        Ok(Written {
            layout: StripedLayout {
                codec: self.codec.id(),
                profile: self.profile,
                shard_bytes: self.inner.cfg.shard_bytes,
                upload: self.upload,
                shards: self
                    .targets
                    .iter()
                    .map(|t| t.placement(self.inner.node))
                    .collect(),
            },
            missing: (0..self.alive.len()).filter(|&i| !self.alive[i]).collect(),
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
        let codec = self.codec.clone();
        let data = stripe.clone();
        let parity = blocking(move || {
            let shards: Vec<&[u8]> = data.chunks(shard_bytes).collect();
            codec.encode(&shards)
        })
        .await??;
        let shards: Vec<Bytes> = (0..self.profile.k())
            .map(|i| stripe.slice(i * shard_bytes..(i + 1) * shard_bytes))
            .chain(parity.into_iter().map(Bytes::from))
            .collect();
        let stripe_index = self.stripes;
        on_targets!(self, |i, target| target
            .write_chunk(stripe_index, shards[i].clone()))?;
        self.stripes += 1;
        Ok(())
    }

    /// Creates the staging files and writes their headers.
    async fn create_files(&mut self) -> Result<(), BlobStoreError> {
        let (profile, shard_bytes, codec) =
            (self.profile, self.inner.cfg.shard_bytes, self.codec.id());
        on_targets!(self, |i, target| target.create(ShardHeader {
            codec,
            profile,
            shard_index: i as u8,
            shard_bytes,
        }))?;
        self.created = true;
        Ok(())
    }

    /// Best-effort cleanup after a failed commit: the staging files, and the final
    /// files this commit may already have renamed (nothing references them yet).
    async fn remove_files(&mut self, digest: &Digest) {
        self.created = false;
        // Peers already dropped are left to their sweeps: a dead peer would only delay
        // the answer. This node's disks are always cleaned.
        let alive = self.alive.clone();
        join_all(
            self.targets
                .iter_mut()
                .enumerate()
                .filter(|(i, t)| alive[*i] || t.is_local())
                .map(|(_, t)| t.discard(digest)),
        )
        .await;
    }
}

/// What a committed upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub layout: StripedLayout,
    /// Shard indices whose target failed during the upload: named by the layout but
    /// not written, to be rebuilt by repair.
    pub missing: Vec<usize>,
}
