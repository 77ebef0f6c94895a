//! Reading a striped blob: a stream of the requested byte range, stripe by stripe. Only
//! the stripes of the range are touched, and within a stripe only the data shards that
//! hold requested bytes. Every chunk's checksum is checked; a shard that is missing,
//! short, unreadable or corrupt is replaced by other shards and the stripe is decoded,
//! so a damaged shard costs a reconstruction, never wrong bytes. The next stripe is
//! read while the current one is consumed.
//!
//! Slow shards are hedged: when a needed chunk has not arrived within the store's
//! `read_hedge` threshold, further shards (untried data shards first, then parity) are
//! read so that `k` chunks can arrive, and the stripe is finished by whichever comes
//! first, its own chunks or any `k` good ones (decoded). The late source is marked slow
//! for the rest of the read, so the next stripes go straight to the other shards.
//! Each stripe is read by its own task, so the threshold measures how long a chunk
//! takes, not how long the consumer of the stream took to ask for it.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_types::{Digest, StripedLayout};
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::buffers::ChunkKey;
use crate::codec::{Codec, codec_for};
use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, HeaderError, ShardHeader};
use crate::rpc::{ShardClient, ShardRef, ShardRpcError};
use crate::shard::{self, ChunkUnusable, Unusable};
use crate::store::{Peers, StoreInner, blocking};

/// Stripes read concurrently: the one being sent and the next one.
const READ_AHEAD_STRIPES: usize = 2;

/// Where the chunks of one shard index come from during a read.
enum Source {
    Local(Arc<Mutex<Slot>>),
    /// A shard on a peer, read through its shard service.
    Remote(Box<tokio::sync::Mutex<RemoteSlot>>),
}

enum Slot {
    /// Not opened yet; `None` if the shard is on no disk of this node and no peer
    /// client reaches it.
    Unopened(Option<Arc<dyn Disk>>),
    Open(Arc<dyn DiskFile>),
    /// Missing, or its header is damaged or does not match the layout.
    Unavailable,
}

struct RemoteSlot {
    client: ShardClient,
    /// Set once the peer cannot serve this shard (missing file, bad header, peer
    /// unreachable): the rest of the read does without it.
    unavailable: bool,
    /// The GetChunks stream in progress, the stripe it yields next and the stripe it
    /// ends before.
    cursor: Option<(u64, u64, ChunkStream)>,
}

/// The chunks of a GetChunks call, in stripe order.
type ChunkStream = BoxStream<'static, Result<Bytes, ShardRpcError>>;

struct ReadCtx {
    inner: Arc<StoreInner>,
    layout: StripedLayout,
    codec: Arc<dyn Codec>,
    digest: Digest,
    /// The blob's size: the last stripe's shards are short (see `format`).
    size: u64,
    /// The stripes of the read.
    stripes: Range<u64>,
    /// One source per shard index, opened on first use and kept for the whole read.
    sources: Vec<Source>,
    /// Per shard index: a stripe of this read hedged around it. Later stripes read it
    /// only when the other shards cannot make up `k`.
    slow: Vec<AtomicBool>,
    /// How long a needed chunk may take before the stripe reads further shards;
    /// `None`: never hedge.
    hedge: Option<Duration>,
    /// The first stripe that has not launched its reads yet (see `Turn`).
    launched: watch::Sender<u64>,
}

pub(crate) fn read(
    inner: Arc<StoreInner>,
    peers: Option<Peers>,
    layout: StripedLayout,
    digest: Digest,
    size: u64,
    range: Range<u64>,
) -> impl Stream<Item = Result<Bytes, BlobStoreError>> + Send + 'static {
    if !layout.is_valid() {
        return stream::iter([Err(BlobStoreError::InvalidLayout)]).left_stream();
    }
    if range.start > range.end || range.end > size {
        return stream::iter([Err(BlobStoreError::RangeOutOfBounds {
            start: range.start,
            end: range.end,
            size,
        })])
        .left_stream();
    }
    let stripe_bytes = layout.stripe_bytes();
    let stripes = if range.is_empty() {
        0..0
    } else {
        range.start / stripe_bytes..range.end.div_ceil(stripe_bytes)
    };
    let ctx = ReadCtx::new(inner, peers.as_ref(), layout, digest, size, stripes.clone());
    stream::iter(stripes)
        .map(move |stripe| {
            let start = stripe * stripe_bytes;
            // Offsets within the stripe's data; the range never reaches the padding.
            let within = (range.start.max(start) - start) as usize
                ..(range.end.min(start + stripe_bytes) - start) as usize;
            StripeTask::spawn(read_stripe(ctx.clone(), stripe, within))
        })
        .buffered(READ_AHEAD_STRIPES)
        .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten()
        .right_stream()
}

/// Reads bytes `within` (non-empty) of one stripe's data, as one piece per data shard.
async fn read_stripe(
    ctx: Arc<ReadCtx>,
    stripe: u64,
    within: Range<usize>,
) -> Result<Vec<Bytes>, BlobStoreError> {
    let shard_bytes = ctx.shard_bytes(stripe) as usize;
    let needed: Vec<usize> =
        (within.start / shard_bytes..within.end.div_ceil(shard_bytes)).collect();
    let shards = gather(&ctx, stripe, &needed).await?;
    Ok(needed
        .into_iter()
        .zip(shards)
        .map(|(i, shard)| {
            let start = within.start.max(i * shard_bytes) - i * shard_bytes;
            let end = within.end.min((i + 1) * shard_bytes) - i * shard_bytes;
            shard.slice(start..end)
        })
        .collect())
}

/// Where one shard of a stripe is during `gather`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Not asked for.
    Idle,
    /// Being read, and counted on.
    Reading,
    /// Being read, but not counted on: it missed the hedge threshold. Its chunk is
    /// still taken if it arrives first.
    Late,
    /// Read and verified.
    Good,
    /// The source cannot serve it (missing, unreadable, corrupt).
    Failed,
}

/// The whole chunks of shards `needed` of one stripe, in that order: read and
/// verified, or rebuilt from the stripe's other shards when they cannot be read or do
/// not arrive within the hedge threshold.
///
/// Reads run concurrently. The stripe is done as soon as every needed chunk is good,
/// or any `k` chunks are (then the missing needed ones are decoded); reads still in
/// flight are dropped then. Dropping a remote read leaves its source's stream where
/// it was (the abandoned stripe's chunk next), which a later stripe never takes: it
/// asks for its own stripe, finds the stream elsewhere and opens a new one.
async fn gather(
    ctx: &Arc<ReadCtx>,
    stripe: u64,
    needed: &[usize],
) -> Result<Vec<Bytes>, BlobStoreError> {
    let k = ctx.layout.profile.k();
    let width = ctx.layout.profile.width();
    let mut good: Vec<Option<Bytes>> = vec![None; width];
    let mut fetch = vec![Fetch::Idle; width];
    let mut reads = FuturesUnordered::new();
    let launch = |i: usize| {
        let ctx = ctx.clone();
        async move { (i, read_chunk(ctx, i, stripe).await) }
    };
    // Whether a shard was read in place of a late or slow one.
    let mut hedged = false;
    let turn = Turn::wait(ctx, stripe).await;
    let swap = local_swap(ctx, needed);
    for &i in needed {
        let i = match swap {
            Some((remote, local)) if remote == i => local,
            _ => i,
        };
        if !ctx.is_slow(i) {
            fetch[i] = Fetch::Reading;
            reads.push(launch(i));
        }
    }
    // Poll every read once before the next stripe launches its own, so they queue for
    // their sources in stripe order: a remote source's stream yields the stripes in
    // order, and a later stripe served first would make the earlier one reopen it.
    while let Poll::Ready(Some((i, chunk))) = futures::poll!(reads.next()) {
        let chunk = chunk?;
        fetch[i] = if chunk.is_some() {
            Fetch::Good
        } else {
            Fetch::Failed
        };
        good[i] = chunk;
    }
    drop(turn);
    let mut deadline = ctx.hedge.map(|d| Instant::now() + d);
    loop {
        let available = fetch.iter().filter(|&&f| f == Fetch::Good).count();
        if needed.iter().all(|&i| fetch[i] == Fetch::Good) {
            break;
        }
        if available >= k {
            // Decoding the shard left out for a local parity shard is the plan, not a
            // repair; anything else that went missing is.
            let planned = swap.is_some_and(|(remote, _)| {
                needed
                    .iter()
                    .all(|&i| i == remote || fetch[i] == Fetch::Good)
            });
            rebuild(ctx, &mut good, needed, !planned).await?;
            break;
        }
        // A needed shard that failed, or is late or skipped: any `k` will do instead.
        let on_track = needed
            .iter()
            .all(|&i| matches!(fetch[i], Fetch::Good | Fetch::Reading));
        let mut launched = false;
        if !on_track {
            let counted = fetch.iter().filter(|&&f| f == Fetch::Reading).count();
            let more: Vec<usize> = replacements(ctx, &fetch)
                .take(k.saturating_sub(available + counted))
                .collect();
            let around_slow = fetch.contains(&Fetch::Late)
                || needed
                    .iter()
                    .any(|&i| fetch[i] == Fetch::Idle && ctx.is_slow(i));
            for i in more {
                hedged |= around_slow && !ctx.is_slow(i);
                fetch[i] = Fetch::Reading;
                reads.push(launch(i));
                launched = true;
            }
        }
        if reads.is_empty() {
            return Err(BlobStoreError::TooFewShards {
                stripe,
                needed: k,
                available,
            });
        }
        if launched && fetch.contains(&Fetch::Late) {
            // Replacements for late shards get a threshold of their own.
            deadline = ctx.hedge.map(|d| Instant::now() + d);
        }
        let threshold = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some((i, chunk)) = reads.next() => {
                let chunk = chunk?;
                fetch[i] = if chunk.is_some() { Fetch::Good } else { Fetch::Failed };
                good[i] = chunk;
            }
            () = threshold => {
                deadline = None;
                for (i, f) in fetch.iter_mut().enumerate() {
                    if *f == Fetch::Reading {
                        *f = Fetch::Late;
                        ctx.slow[i].store(true, Ordering::Relaxed);
                        tracing::debug!(digest = %ctx.digest, shard = i, stripe,
                            "shard chunk is late; reading other shards");
                    }
                }
            }
        }
    }
    if hedged {
        ctx.inner.counters.hedged();
    }
    Ok(needed
        .iter()
        .map(|&i| {
            good[i]
                .take()
                .expect("every needed shard is read or rebuilt")
        })
        .collect())
}

/// A stripe's turn to launch its reads: stripes of a read launch in order (each stripe
/// runs in its own task, and tasks may start in any order). Ends when dropped.
struct Turn<'a> {
    ctx: &'a ReadCtx,
    stripe: u64,
}

impl<'a> Turn<'a> {
    /// Waits until the stripes before `stripe` have launched their reads.
    async fn wait(ctx: &'a ReadCtx, stripe: u64) -> Turn<'a> {
        let mut launched = ctx.launched.subscribe();
        // The sender lives in `ctx`, so the channel cannot close while this waits.
        let _ = launched.wait_for(|&next| next >= stripe).await;
        Turn { ctx, stripe }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let stripe = self.stripe;
        self.ctx.launched.send_if_modified(|next| {
            let behind = *next <= stripe;
            if behind {
                *next = stripe + 1;
            }
            behind
        });
    }
}

/// Shards of the stripe not asked for yet, best first: sources not found slow before
/// slow ones, and among them data shards before parity (they cost no decoding if the
/// missing shard turns out to be outside the range after all).
fn replacements<'a>(ctx: &'a ReadCtx, fetch: &'a [Fetch]) -> impl Iterator<Item = usize> + 'a {
    let idle = move |slow: bool| {
        (0..fetch.len()).filter(move |&i| fetch[i] == Fetch::Idle && ctx.is_slow(i) == slow)
    };
    idle(false).chain(idle(true))
}

/// For a stripe read whole (`needed` is every data shard) of a profile with one parity
/// shard, whose decoding is a XOR: a data shard on a peer to leave out, and the parity
/// shard on this node to read in its place. A XOR of the stripe costs a fraction of
/// what a chunk fetched from a peer does (its read, send, receive, copies and
/// checksum), so a node that holds the parity of a blob reads one chunk per stripe
/// over the network instead of two (2+1). `None` when that does not apply.
fn local_swap(ctx: &ReadCtx, needed: &[usize]) -> Option<(usize, usize)> {
    let (k, m) = (ctx.layout.profile.k(), ctx.layout.profile.m());
    if m != 1 || needed.len() != k {
        return None;
    }
    let parity = k;
    if ctx.is_slow(parity) || !ctx.is_local(parity) {
        return None;
    }
    let remote = needed
        .iter()
        .copied()
        .rfind(|&i| !ctx.is_slow(i) && matches!(ctx.sources[i], Source::Remote(_)))?;
    Some((remote, parity))
}

/// Decodes the missing shards of `needed` from the `k` or more good shards; `repair`
/// counts it as a reconstruction (a shard was lost or late, not left out by plan).
async fn rebuild(
    ctx: &Arc<ReadCtx>,
    good: &mut [Option<Bytes>],
    needed: &[usize],
    repair: bool,
) -> Result<(), BlobStoreError> {
    let wanted: Vec<usize> = needed
        .iter()
        .copied()
        .filter(|&i| good[i].is_none())
        .collect();
    let codec = ctx.codec.clone();
    let shards = good.to_vec();
    let wanted_for_codec = wanted.clone();
    let rebuilt = blocking(move || {
        let view: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
        codec.reconstruct(&view, &wanted_for_codec)
    })
    .await??;
    if repair {
        ctx.inner.counters.reconstructed();
    }
    for (i, shard) in wanted.into_iter().zip(rebuilt) {
        good[i] = Some(Bytes::from(shard));
    }
    Ok(())
}

/// The chunks of shard `index` of a blob, stripe by stripe (each `shard_bytes` long,
/// the last one short as version 2 of the format stores it):
/// read from its file where that is good, rebuilt from the other shards where not.
/// What repair writes to the shard's new home. One stripe ahead is read while the
/// current chunk is written.
pub(crate) fn shard_chunks(
    inner: Arc<StoreInner>,
    peers: Option<Peers>,
    layout: StripedLayout,
    digest: Digest,
    size: u64,
    index: usize,
) -> impl Stream<Item = Result<Bytes, BlobStoreError>> + Send + 'static {
    let stripes = 0..layout.stripe_count(size);
    let ctx = ReadCtx::new(inner, peers.as_ref(), layout, digest, size, stripes.clone());
    stream::iter(stripes)
        .map(move |stripe| {
            let ctx = ctx.clone();
            StripeTask::spawn(async move {
                let mut shards = gather(&ctx, stripe, &[index]).await?;
                Ok(shards.pop().expect("one shard was asked for"))
            })
        })
        .buffered(READ_AHEAD_STRIPES)
}

/// One source per shard index of `layout`: a peer's shard service for shards on other
/// nodes, a disk of this node otherwise.
fn sources(inner: &Arc<StoreInner>, peers: Option<&Peers>, layout: &StripedLayout) -> Vec<Source> {
    layout
        .shards
        .iter()
        .map(|p| {
            if p.node != inner.node
                && let Some(client) = peers.and_then(|peers| peers.client(p.node))
            {
                return Source::Remote(Box::new(tokio::sync::Mutex::new(RemoteSlot {
                    client,
                    unavailable: false,
                    cursor: None,
                })));
            }
            let disk = if p.node == inner.node {
                inner.slot(p.disk).map(|s| s.disk.clone())
            } else {
                None
            };
            if disk.is_none() {
                tracing::warn!(node = %p.node, disk = %p.disk, "shard is on no disk of this node and on no known peer");
            }
            Source::Local(Arc::new(Mutex::new(Slot::Unopened(disk))))
        })
        .collect()
}

/// Reads and verifies the chunk of `stripe` of shard `i`, from a disk of this node or
/// from a peer. `None` when the shard cannot serve it; the reason is logged and counted.
async fn read_chunk(
    ctx: Arc<ReadCtx>,
    i: usize,
    stripe: u64,
) -> Result<Option<Bytes>, BlobStoreError> {
    let chunk = match &ctx.sources[i] {
        Source::Local(slot) => {
            let (ctx, slot) = (ctx.clone(), slot.clone());
            blocking(move || read_local_chunk(&ctx, &slot, i, stripe)).await?
        }
        Source::Remote(slot) => read_remote_chunk(&ctx, slot, i, stripe).await,
    };
    Ok(chunk.and_then(|chunk| ctx.sized(chunk, i, stripe)))
}

/// The read of one stripe, running as its own task so that it goes on (and its hedge
/// threshold measures the shards, not the consumer) while the stream is not polled.
/// Dropping it cancels the task, and with it every read the stripe still has in flight.
struct StripeTask<T>(JoinHandle<Result<T, BlobStoreError>>);

impl<T: Send + 'static> StripeTask<T> {
    fn spawn(read: impl Future<Output = Result<T, BlobStoreError>> + Send + 'static) -> Self {
        StripeTask(tokio::spawn(read))
    }
}

impl<T> Future for StripeTask<T> {
    type Output = Result<T, BlobStoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(BlobStoreError::ShuttingDown),
        })
    }
}

impl<T> Drop for StripeTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ReadCtx {
    fn new(
        inner: Arc<StoreInner>,
        peers: Option<&Peers>,
        layout: StripedLayout,
        digest: Digest,
        size: u64,
        stripes: Range<u64>,
    ) -> Arc<ReadCtx> {
        Arc::new(ReadCtx {
            codec: codec_for(layout.codec, layout.profile),
            sources: sources(&inner, peers, &layout),
            slow: (0..layout.profile.width())
                .map(|_| AtomicBool::new(false))
                .collect(),
            hedge: inner.cfg.read_hedge,
            launched: watch::Sender::new(stripes.start),
            inner,
            layout,
            digest,
            size,
            stripes,
        })
    }

    /// Whether a stripe of this read hedged around shard `i`.
    fn is_slow(&self, i: usize) -> bool {
        self.slow[i].load(Ordering::Relaxed)
    }

    /// Whether shard `i` is on a disk of this node that is known to be there and has
    /// not been found unusable.
    fn is_local(&self, i: usize) -> bool {
        match &self.sources[i] {
            Source::Local(slot) => matches!(
                *slot.lock().expect("shard slot poisoned"),
                Slot::Unopened(Some(_)) | Slot::Open(_)
            ),
            Source::Remote(_) => false,
        }
    }

    /// Shard length of `stripe` of this blob.
    fn shard_bytes(&self, stripe: u64) -> u32 {
        format::stripe_shard_bytes(
            self.layout.shard_bytes,
            self.layout.profile.k(),
            self.size,
            stripe,
        )
    }

    /// A verified chunk cut to the shard length of its stripe: a version 1 file holds
    /// the last stripe zero-padded to `shard_bytes`, whose leading bytes are the short
    /// shard (the codec's parity is computed per 64-byte block). Any other length is
    /// damage: the file does not belong to a blob of this size.
    fn sized(&self, chunk: Bytes, i: usize, stripe: u64) -> Option<Bytes> {
        let (shard_bytes, k) = (self.layout.shard_bytes, self.layout.profile.k());
        if let Some(len) = format::usable_shard_len(shard_bytes, k, self.size, stripe, chunk.len())
        {
            return Some(chunk.slice(..len));
        }
        let expected = self.shard_bytes(stripe);
        tracing::warn!(digest = %self.digest, shard = i, stripe, found = chunk.len(), expected,
            "shard chunk has the wrong length for the blob's size");
        self.inner.counters.shard_unavailable();
        self.inner.damaged(&self.digest, self.layout.upload, i);
        None
    }
}

fn read_local_chunk(ctx: &ReadCtx, slot: &Mutex<Slot>, i: usize, stripe: u64) -> Option<Bytes> {
    let file = open_shard(ctx, slot, i)?;
    let key = ChunkKey {
        upload: ctx.layout.upload,
        index: i as u8,
        stripe,
    };
    match shard::read_shared_chunk(&ctx.inner, file.as_ref(), ctx.layout.shard_bytes, key) {
        Ok(chunk) => Some(chunk),
        Err(ChunkUnusable::Io(e)) => {
            tracing::warn!(digest = %ctx.digest, shard = i, stripe, error = %e, "shard chunk unreadable");
            ctx.inner.counters.shard_unavailable();
            None
        }
        Err(ChunkUnusable::ChecksumMismatch) => {
            tracing::warn!(digest = %ctx.digest, shard = i, stripe, "shard chunk checksum mismatch");
            ctx.inner.damaged(&ctx.digest, ctx.layout.upload, i);
            None
        }
    }
}

/// Reads the chunk of `stripe` of shard `i` from the peer that holds it. Consecutive
/// stripes of a data shard come from one GetChunks stream that covers the rest of the
/// read; a parity shard on a peer, read only to replace a bad or late shard, is asked one stripe at a
/// time so the peer reads nothing that may not be needed. A call dropped while it
/// waits (its stripe was finished from other shards) leaves the stream before that
/// stripe's chunk, and the cursor still names that stripe: the next call, for a later
/// stripe, finds the stream elsewhere and opens a new one at its own stripe, so it
/// never takes another stripe's chunk.
async fn read_remote_chunk(
    ctx: &ReadCtx,
    slot: &tokio::sync::Mutex<RemoteSlot>,
    i: usize,
    stripe: u64,
) -> Option<Bytes> {
    let mut slot = slot.lock().await;
    let RemoteSlot {
        client,
        unavailable,
        cursor,
    } = &mut *slot;
    if *unavailable {
        return None;
    }
    if cursor
        .as_ref()
        .is_none_or(|(next, end, _)| *next != stripe || stripe >= *end)
    {
        let end = if i < ctx.layout.profile.k() {
            ctx.stripes.end
        } else {
            stripe + 1
        };
        let shard = ShardRef {
            disk: ctx.layout.shards[i].disk,
            upload: ctx.layout.upload,
            index: i as u8,
        };
        let chunks = client.get_chunks(&shard, &ctx.digest, &expected_header(ctx, i), stripe..end);
        *cursor = Some((stripe, end, chunks.boxed()));
    }
    let (next, _, chunks) = cursor.as_mut().expect("a stream at this stripe is open");
    let item = chunks
        .next()
        .await
        .unwrap_or(Err(ShardRpcError::Truncated { stripe }));
    match item {
        Ok(shard) => {
            *next += 1;
            Some(shard)
        }
        Err(e) => {
            let node = client.node();
            *cursor = None;
            if let ShardRpcError::Corrupt { .. } = e {
                tracing::warn!(digest = %ctx.digest, shard = i, stripe, %node, "remote shard chunk checksum mismatch");
                ctx.inner.counters.checksum_failed();
                ctx.inner.damaged(&ctx.digest, ctx.layout.upload, i);
            } else {
                if let ShardRpcError::NotFound { .. } = e {
                    ctx.inner.damaged(&ctx.digest, ctx.layout.upload, i);
                }
                tracing::warn!(digest = %ctx.digest, shard = i, stripe, %node, error = %e, "remote shard unavailable");
                ctx.inner.counters.shard_unavailable();
                *unavailable = true;
            }
            None
        }
    }
}

/// The header shard file `i` must have for this read's layout.
fn expected_header(ctx: &ReadCtx, i: usize) -> ShardHeader {
    ShardHeader {
        codec: ctx.layout.codec,
        profile: ctx.layout.profile,
        shard_index: i as u8,
        shard_bytes: ctx.layout.shard_bytes,
    }
}

/// The open file of shard `i`, opening it and checking its header on first use.
fn open_shard(ctx: &ReadCtx, slot: &Mutex<Slot>, i: usize) -> Option<Arc<dyn DiskFile>> {
    let mut slot = slot.lock().expect("shard slot poisoned");
    let disk = match &*slot {
        Slot::Open(file) => return Some(file.clone()),
        Slot::Unavailable => return None,
        Slot::Unopened(None) => {
            ctx.inner.counters.shard_unavailable();
            *slot = Slot::Unavailable;
            return None;
        }
        Slot::Unopened(Some(disk)) => disk.clone(),
    };
    let opened = shard::open_final(
        &ctx.inner,
        disk.as_ref(),
        &ctx.digest,
        &ctx.layout.upload,
        &expected_header(ctx, i),
    );
    match opened {
        Ok(file) => {
            let file: Arc<dyn DiskFile> = Arc::from(file);
            *slot = Slot::Open(file.clone());
            Some(file)
        }
        Err(reason) => {
            tracing::warn!(digest = %ctx.digest, shard = i, disk = %disk.id(), %reason, "shard file unusable");
            ctx.inner.damaged(&ctx.digest, ctx.layout.upload, i);
            match reason {
                Unusable::Header(HeaderError::ChecksumMismatch) => {
                    ctx.inner.counters.checksum_failed();
                }
                _ => ctx.inner.counters.shard_unavailable(),
            }
            *slot = Slot::Unavailable;
            None
        }
    }
}
