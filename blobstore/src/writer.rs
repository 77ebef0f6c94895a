//! `StripeWriter`: turns the byte stream of one upload into shard files. It cuts the
//! stream into stripes and hands each full stripe to the upload's pipeline, then returns
//! to the caller, which goes on receiving and hashing the next bytes while earlier
//! stripes are encoded and written. Until `commit` nothing outside `staging/` changes,
//! so a crash or an error never leaves a partial final file.
//!
//! The pipeline of one upload: an encoder task takes the stripes in order, computes
//! their parity on the blocking pool and queues each stripe's `k + m` chunks to one task
//! per `ShardTarget` (a disk of this node or a peer's disk behind its shard service),
//! which writes its chunks in stripe order (checksummed on the blocking pool, by the
//! same shard logic for both kinds of target). At most `STRIPES_IN_FLIGHT_MAX` stripes
//! are held between `write` and the last target that has not yet taken them: a slow
//! target slows the client down instead of growing a buffer.
//!
//! Write quorum: a target that fails (a peer that dies, a disk that breaks) is dropped
//! and the upload goes on as long as `k + 1` targets remain (all of them for a profile
//! without parity); the committed layout still names the lost shards, and `commit`
//! lists them so the caller can queue their repair. Fewer than `k + 1` fails the upload:
//! the error surfaces on the next `write` or at `commit`, which waits for every stripe
//! in flight before it syncs and publishes anything.

use std::sync::{Arc, Mutex};

use berth_types::{CodecId, Digest, EcProfile, ShardPlacement, StripedLayout, UploadId};
use bytes::{Buf, Bytes};
use futures::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::codec::{Codec, codec_for};
use crate::error::BlobStoreError;
use crate::format::{self, ShardHeader};
use crate::store::{StoreInner, blocking};
use crate::target::ShardTarget;

/// Stripes of one upload held at once between `StripeWriter::write` and the targets
/// (being encoded, queued, or being written by a target that has not finished them).
/// Two let the caller fill one stripe while the previous one is encoded and sent; a
/// third absorbs the jitter of one target. Memory per upload is at most this many
/// stripes plus their parity, plus what each remote stream queues.
pub const STRIPES_IN_FLIGHT_MAX: usize = 3;

const _: () = assert!(STRIPES_IN_FLIGHT_MAX >= 2);

/// Runs one step on every live target of a writer at once and settles the results:
/// `$step` is an expression over `$i` (the shard index) and `$t` (its target) that
/// makes the step's future.
macro_rules! on_targets {
    ($w:expr, |$i:ident, $t:ident| $step:expr) => {{
        let alive = $w.quorum.alive();
        let results = join_all(
            $w.targets
                .iter_mut()
                .enumerate()
                .filter_map(|(i, t)| t.as_mut().filter(|_| alive[i]).map(|t| (i, t)))
                .map(|($i, $t)| {
                    let step = $step;
                    async move { ($i, step.await) }
                }),
        )
        .await;
        for (i, result) in results {
            if let Err(e) = result {
                $w.quorum.fail(&$w.upload, i, e);
            }
        }
        $w.quorum.check()
    }};
}

/// Which targets of an upload still take writes, shared by the writer and its
/// pipeline's tasks. A failed target is dropped for good.
#[derive(Debug)]
struct Quorum {
    /// Targets that must stay alive for the upload to go on.
    needed: usize,
    state: Mutex<QuorumState>,
}

#[derive(Debug)]
struct QuorumState {
    alive: Vec<bool>,
    /// The error that left fewer than `needed` targets alive (or failed the upload as
    /// a whole, such as the codec's), until the writer reports it.
    lost: Option<BlobStoreError>,
    /// Set once the upload is lost, aborted or dropped: the pipeline skips its work.
    stopped: bool,
}

impl Quorum {
    fn new(width: usize, needed: usize) -> Quorum {
        Quorum {
            needed,
            state: Mutex::new(QuorumState {
                alive: vec![true; width],
                lost: None,
                stopped: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuorumState> {
        self.state.lock().expect("quorum lock poisoned")
    }

    fn alive(&self) -> Vec<bool> {
        self.lock().alive.clone()
    }

    fn is_alive(&self, i: usize) -> bool {
        let state = self.lock();
        state.alive[i] && !state.stopped
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    fn stop(&self) {
        self.lock().stopped = true;
    }

    /// Drops target `i` after `e`; the upload is lost when fewer than the quorum remain.
    fn fail(&self, upload: &UploadId, i: usize, e: BlobStoreError) {
        tracing::warn!(%upload, shard = i, error = %e,
            "shard target failed; the upload goes on without it if enough remain");
        let mut state = self.lock();
        state.alive[i] = false;
        if state.alive.iter().filter(|a| **a).count() < self.needed {
            state.stopped = true;
            state.lost.get_or_insert(e);
        }
    }

    /// Fails the upload as a whole (not one target's fault).
    fn fail_all(&self, e: BlobStoreError) {
        let mut state = self.lock();
        state.stopped = true;
        state.lost.get_or_insert(e);
    }

    /// The error that lost the upload, once; `WriterFailed` after that.
    fn check(&self) -> Result<(), BlobStoreError> {
        let mut state = self.lock();
        if let Some(e) = state.lost.take() {
            return Err(e);
        }
        if state.alive.iter().filter(|a| **a).count() < self.needed {
            return Err(BlobStoreError::WriterFailed);
        }
        Ok(())
    }
}

/// One shard of one stripe on its way to its target. The permit, shared by the
/// stripe's chunks, goes back when the last of them is written or dropped.
struct Chunk {
    stripe: u64,
    data: Bytes,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The tasks that encode and write the stripes of one upload.
struct Pipeline {
    /// Full stripes, in order, to the encoder.
    stripes: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    permits: Arc<Semaphore>,
    encoder: JoinHandle<()>,
    /// One task per target; each gives its target back when its queue ends.
    writers: Vec<JoinHandle<ShardTarget>>,
}

/// Writes one upload's blob. Obtained from `BlobStore::begin` or `begin_at`; finished
/// by `commit` or `abort`. A writer dropped without either stops its pipeline and
/// leaves staging files that `BlobStore::sweep_staging` removes once the upload is no
/// longer live.
pub struct StripeWriter {
    inner: Arc<StoreInner>,
    upload: UploadId,
    profile: EcProfile,
    codec: Arc<dyn Codec>,
    /// Where each shard index goes, for the layout.
    placements: Vec<ShardPlacement>,
    /// The targets, while no pipeline holds them: before the first stripe and after
    /// the pipeline has finished (`None` for one whose task never returned it).
    targets: Vec<Option<ShardTarget>>,
    pipeline: Option<Pipeline>,
    /// Whether the staging files were created and the pipeline started.
    created: bool,
    quorum: Arc<Quorum>,
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
            .field("alive", &self.quorum.alive())
            .finish_non_exhaustive()
    }
}

impl Drop for StripeWriter {
    fn drop(&mut self) {
        if self.pipeline.is_some() {
            self.quorum.stop();
        }
    }
}

impl StripeWriter {
    pub(crate) fn new(
        inner: Arc<StoreInner>,
        upload: UploadId,
        profile: EcProfile,
        targets: Vec<ShardTarget>,
    ) -> StripeWriter {
        // Targets that must stay alive: `k + 1`, or every one without parity.
        let needed = if profile.m() == 0 {
            profile.width()
        } else {
            profile.k() + 1
        };
        StripeWriter {
            placements: targets.iter().map(|t| t.placement(inner.node)).collect(),
            quorum: Arc::new(Quorum::new(targets.len(), needed)),
            inner,
            upload,
            profile,
            codec: codec_for(CodecId::ReedSolomonV1, profile),
            targets: targets.into_iter().map(Some).collect(),
            pipeline: None,
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

    /// Appends bytes to the blob. Hands every stripe that fills up to the pipeline,
    /// waiting while `STRIPES_IN_FLIGHT_MAX` stripes are in flight, so a slow target
    /// slows the caller down instead of growing a buffer. Fails with the error of an
    /// earlier stripe that lost the write quorum.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), BlobStoreError> {
        if self.failed {
            return Err(BlobStoreError::WriterFailed);
        }
        let result = self.quorum.check();
        self.poison_on_error(result)?;
        let stripe_bytes = self.stripe_bytes();
        while data.has_remaining() {
            let stripe = if self.pending.is_empty() && data.len() >= stripe_bytes {
                // A whole stripe in the incoming buffer goes on without a copy.
                data.split_to(stripe_bytes)
            } else {
                if self.pending.capacity() == 0 {
                    self.pending.reserve_exact(stripe_bytes);
                }
                let take = (stripe_bytes - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                data.advance(take);
                if self.pending.len() < stripe_bytes {
                    continue;
                }
                Bytes::from(std::mem::take(&mut self.pending))
            };
            self.len += stripe.len() as u64;
            let result = self.submit(stripe).await;
            self.poison_on_error(result)?;
        }
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.len + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the last stripe (padded only to its short shard length), waits for every
    /// stripe in flight, fdatasyncs every shard file, renames them into their final
    /// paths under `digest`, and syncs the directories. Returns the layout only once all of that is durable on at least
    /// the quorum of targets, with the shards that were lost on the way. On failure,
    /// removes what it wrote.
    pub async fn commit(mut self, digest: &Digest) -> Result<Written, BlobStoreError> {
        let result = self.finish(digest).await;
        if result.is_err() {
            self.remove_files(digest).await;
        }
        result
    }

    /// Stops the pipeline and removes the staging files of this upload.
    pub async fn abort(mut self) -> Result<(), BlobStoreError> {
        self.quorum.stop();
        self.drain().await;
        let alive = self.quorum.alive();
        let results = join_all(
            self.targets
                .iter_mut()
                .enumerate()
                .filter_map(|(i, t)| t.as_mut().filter(|t| alive[i] || t.is_local()))
                .map(ShardTarget::abort),
        )
        .await;
        results.into_iter().collect()
    }

    async fn finish(&mut self, digest: &Digest) -> Result<Written, BlobStoreError> {
        if self.failed {
            return Err(BlobStoreError::WriterFailed);
        }
        if !self.pending.is_empty() {
            // The last stripe is padded only to `k` shards of its short length.
            let mut stripe = std::mem::take(&mut self.pending);
            self.len += stripe.len() as u64;
            let short =
                format::last_shard_bytes(self.inner.cfg.shard_bytes, self.profile.k(), self.len);
            stripe.resize(self.profile.k() * short as usize, 0);
            let result = self.submit(Bytes::from(stripe)).await;
            self.poison_on_error(result)?;
        }
        // An empty blob still gets its shard files: a header and no chunks.
        let started = self.start().await;
        self.poison_on_error(started)?;
        self.drain().await;
        self.quorum.check()?;
        on_targets!(self, |_i, t| t.sync())?;
        // Renames start only once every shard is durable, so a final file never names
        // bytes that a crash could lose.
        on_targets!(self, |_i, t| t.publish(digest))?;
        let alive = self.quorum.alive();
        Ok(Written {
            layout: StripedLayout {
                codec: self.codec.id(),
                profile: self.profile,
                shard_bytes: self.inner.cfg.shard_bytes,
                upload: self.upload,
                shards: self.placements.clone(),
            },
            missing: (0..alive.len()).filter(|&i| !alive[i]).collect(),
        })
    }

    /// Marks the writer failed on an error: a stripe may be partly written.
    fn poison_on_error(
        &mut self,
        result: Result<(), BlobStoreError>,
    ) -> Result<(), BlobStoreError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Hands one full stripe (or the short last one) to the pipeline, once fewer than
    /// `STRIPES_IN_FLIGHT_MAX` are in flight.
    async fn submit(&mut self, stripe: Bytes) -> Result<(), BlobStoreError> {
        self.start().await?;
        let pipeline = self.pipeline.as_ref().expect("started above");
        let permit = pipeline
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the permits are never closed");
        self.quorum.check()?;
        if pipeline.stripes.send((stripe, permit)).await.is_err() {
            // The encoder ended early: the upload was lost.
            self.quorum.check()?;
            return Err(BlobStoreError::WriterFailed);
        }
        self.stripes += 1;
        Ok(())
    }

    /// Creates the staging files and starts the pipeline, unless that happened
    /// already. The files exist once this returns, so a sweep that runs after a
    /// writer is dropped finds them.
    async fn start(&mut self) -> Result<(), BlobStoreError> {
        if self.created {
            return Ok(());
        }
        self.created = true;
        let (profile, shard_bytes, codec) =
            (self.profile, self.inner.cfg.shard_bytes, self.codec.id());
        on_targets!(self, |i, target| target.create(ShardHeader {
            codec,
            profile,
            shard_index: i as u8,
            shard_bytes,
        }))?;
        let mut queues = Vec::with_capacity(self.targets.len());
        let writers = std::mem::take(&mut self.targets)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, target)| {
                // Never full: the permits bound the chunks of any one target.
                let (tx, rx) = mpsc::channel(STRIPES_IN_FLIGHT_MAX);
                queues.push(tx);
                tokio::spawn(write_chunks(
                    self.quorum.clone(),
                    self.upload,
                    i,
                    target,
                    rx,
                ))
            })
            .collect();
        let (stripes, rx) = mpsc::channel(STRIPES_IN_FLIGHT_MAX);
        let encoder = tokio::spawn(encode_stripes(
            self.quorum.clone(),
            self.codec.clone(),
            self.profile.k(),
            rx,
            queues,
        ));
        self.pipeline = Some(Pipeline {
            stripes,
            permits: Arc::new(Semaphore::new(STRIPES_IN_FLIGHT_MAX)),
            encoder,
            writers,
        });
        Ok(())
    }

    /// Ends the pipeline: waits until the encoder and every target's task are done
    /// with the stripes handed over (skipped once the upload stopped), and takes the
    /// targets back.
    async fn drain(&mut self) {
        let Some(Pipeline {
            stripes,
            encoder,
            writers,
            ..
        }) = self.pipeline.take()
        else {
            return;
        };
        drop(stripes);
        if let Err(e) = encoder.await {
            joined(e, &self.quorum);
        }
        for writer in writers {
            match writer.await {
                Ok(target) => self.targets.push(Some(target)),
                Err(e) => {
                    self.targets.push(None);
                    joined(e, &self.quorum);
                }
            }
        }
    }

    /// Best-effort cleanup after a failed commit: the staging files, and the final
    /// files this commit may already have renamed (nothing references them yet).
    async fn remove_files(&mut self, digest: &Digest) {
        self.quorum.stop();
        self.drain().await;
        // Peers already dropped are left to their sweeps: a dead peer would only delay
        // the answer. This node's disks are always cleaned.
        let alive = self.quorum.alive();
        join_all(
            self.targets
                .iter_mut()
                .enumerate()
                .filter_map(|(i, t)| t.as_mut().filter(|t| alive[i] || t.is_local()))
                .map(|t| t.discard(digest)),
        )
        .await;
    }
}

/// Settles a pipeline task that did not return: a panic is a bug and resumes here;
/// a task cancelled by a runtime shutting down loses the upload (its target, if it
/// held one, is gone with it, left to the sweeps).
fn joined(e: tokio::task::JoinError, quorum: &Quorum) {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    quorum.fail_all(BlobStoreError::ShuttingDown);
}

/// The encoder of one upload: computes each stripe's parity on the blocking pool and
/// queues its chunks to the targets still alive, in stripe order. A stripe is `k`
/// shards: `shard_bytes` each, or fewer for the short last stripe.
async fn encode_stripes(
    quorum: Arc<Quorum>,
    codec: Arc<dyn Codec>,
    k: usize,
    mut stripes: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
    queues: Vec<mpsc::Sender<Chunk>>,
) {
    let mut index = 0u64;
    while let Some((stripe, permit)) = stripes.recv().await {
        if quorum.stopped() {
            return;
        }
        let shard_bytes = stripe.len() / k;
        let codec = codec.clone();
        let data = stripe.clone();
        let parity = blocking(move || {
            let shards: Vec<&[u8]> = data.chunks(shard_bytes).collect();
            codec.encode(&shards)
        })
        .await
        .and_then(|p| p.map_err(BlobStoreError::from));
        let parity = match parity {
            Ok(parity) => parity,
            Err(e) => {
                quorum.fail_all(e);
                return;
            }
        };
        let permit = Arc::new(permit);
        let shards = (0..k)
            .map(|i| stripe.slice(i * shard_bytes..(i + 1) * shard_bytes))
            .chain(parity.into_iter().map(Bytes::from));
        for (i, (queue, data)) in queues.iter().zip(shards).enumerate() {
            if !quorum.is_alive(i) {
                continue;
            }
            let chunk = Chunk {
                stripe: index,
                data,
                _permit: permit.clone(),
            };
            // A target whose task has ended failed; the quorum knows already.
            let _ = queue.send(chunk).await;
        }
        index += 1;
    }
}

/// The task of one target: writes its chunks in stripe order until the queue ends. A
/// failure drops the target (its queue with it); the target goes back to the writer
/// for the steps after the last stripe, or for cleanup.
async fn write_chunks(
    quorum: Arc<Quorum>,
    upload: UploadId,
    i: usize,
    mut target: ShardTarget,
    mut chunks: mpsc::Receiver<Chunk>,
) -> ShardTarget {
    while let Some(chunk) = chunks.recv().await {
        if !quorum.is_alive(i) {
            break;
        }
        if let Err(e) = target.write_chunk(chunk.stripe, chunk.data).await {
            quorum.fail(&upload, i, e);
            break;
        }
    }
    target
}

/// What a committed upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub layout: StripedLayout,
    /// Shard indices whose target failed during the upload: named by the layout but
    /// not written, to be rebuilt by repair.
    pub missing: Vec<usize>,
}
