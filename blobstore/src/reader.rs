//! Reading a striped blob: a stream of the requested byte range, stripe by stripe. Only
//! the stripes of the range are touched, and within a stripe only the data shards that
//! hold requested bytes. Every chunk's checksum is checked; a shard that is missing,
//! short, unreadable or corrupt is replaced by other shards and the stripe is decoded,
//! so a damaged shard costs a reconstruction, never wrong bytes. The next stripe is
//! read while the current one is consumed.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use berth_types::{Digest, StripedLayout};
use bytes::Bytes;
use futures::future::join_all;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use crate::codec::{Codec, codec_for};
use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, HEADER_BYTES, HeaderError, ShardHeader};
use crate::store::{StoreInner, blocking};

/// Stripes read concurrently: the one being sent and the next one.
const READ_AHEAD_STRIPES: usize = 2;

enum Slot {
    /// Not opened yet; `None` if the shard is on no disk of this node.
    Unopened(Option<Arc<dyn Disk>>),
    Open(Arc<dyn DiskFile>),
    /// Missing, or its header is damaged or does not match the layout.
    Unavailable,
}

struct ReadCtx {
    inner: Arc<StoreInner>,
    layout: StripedLayout,
    codec: Arc<dyn Codec>,
    digest: Digest,
    /// One slot per shard index, opened on first use and kept for the whole read.
    slots: Vec<Mutex<Slot>>,
}

pub(crate) fn read(
    inner: Arc<StoreInner>,
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
    let slots = layout
        .shards
        .iter()
        .map(|p| {
            let disk = if p.node == inner.node {
                inner.slot(p.disk).map(|s| s.disk.clone())
            } else {
                None
            };
            if disk.is_none() {
                tracing::warn!(node = %p.node, disk = %p.disk, "shard is not on a disk of this node");
            }
            Mutex::new(Slot::Unopened(disk))
        })
        .collect();
    let ctx = Arc::new(ReadCtx {
        codec: codec_for(layout.codec, layout.profile),
        inner,
        layout,
        digest,
        slots,
    });
    stream::iter(stripes)
        .map(move |stripe| {
            let start = stripe * stripe_bytes;
            // Offsets within the stripe's data; the range never reaches the padding.
            let within = (range.start.max(start) - start) as usize
                ..(range.end.min(start + stripe_bytes) - start) as usize;
            read_stripe(ctx.clone(), stripe, within)
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
    let k = ctx.layout.profile.k();
    let width = ctx.layout.profile.width();
    let shard_bytes = ctx.layout.shard_bytes as usize;
    let needed = within.start / shard_bytes..within.end.div_ceil(shard_bytes);

    let mut good: Vec<Option<Bytes>> = vec![None; width];
    let mut tried = vec![false; width];
    let mut batch: Vec<usize> = needed.clone().collect();
    loop {
        let results = join_all(batch.iter().map(|&i| {
            blocking({
                let ctx = ctx.clone();
                move || read_chunk(&ctx, i, stripe)
            })
        }))
        .await;
        for (&i, chunk) in batch.iter().zip(results) {
            tried[i] = true;
            good[i] = chunk?;
        }
        if needed.clone().all(|i| good[i].is_some()) {
            break;
        }
        let available = good.iter().flatten().count();
        if available >= k {
            rebuild(&ctx, &mut good, needed.clone()).await?;
            break;
        }
        // Untried data shards come before parity: they cost no decoding if the
        // missing shard turns out to be outside the range after all.
        batch = (0..width)
            .filter(|&i| !tried[i])
            .take(k - available)
            .collect();
        if batch.is_empty() {
            return Err(BlobStoreError::TooFewShards {
                stripe,
                needed: k,
                available,
            });
        }
    }

    Ok(needed
        .map(|i| {
            let shard = good[i]
                .take()
                .expect("every needed shard is read or rebuilt");
            let start = within.start.max(i * shard_bytes) - i * shard_bytes;
            let end = within.end.min((i + 1) * shard_bytes) - i * shard_bytes;
            shard.slice(start..end)
        })
        .collect())
}

/// Decodes the missing shards of `needed` from the `k` or more good shards.
async fn rebuild(
    ctx: &Arc<ReadCtx>,
    good: &mut [Option<Bytes>],
    needed: Range<usize>,
) -> Result<(), BlobStoreError> {
    let wanted: Vec<usize> = needed.filter(|&i| good[i].is_none()).collect();
    let codec = ctx.codec.clone();
    let shards = good.to_vec();
    let wanted_for_codec = wanted.clone();
    let rebuilt = blocking(move || {
        let view: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
        codec.reconstruct(&view, &wanted_for_codec)
    })
    .await??;
    ctx.inner.counters.reconstructed();
    for (i, shard) in wanted.into_iter().zip(rebuilt) {
        good[i] = Some(Bytes::from(shard));
    }
    Ok(())
}

/// Reads and verifies the chunk of `stripe` in shard file `i`. `None` when the shard
/// cannot serve it; the reason is logged and counted.
fn read_chunk(ctx: &ReadCtx, i: usize, stripe: u64) -> Option<Bytes> {
    let file = open_shard(ctx, i)?;
    let counters = &ctx.inner.counters;
    let shard_bytes = ctx.layout.shard_bytes;
    let mut buf = vec![0u8; format::chunk_bytes(shard_bytes) as usize];
    if let Err(e) = file.read_at(&mut buf, format::chunk_offset(shard_bytes, stripe)) {
        tracing::warn!(digest = %ctx.digest, shard = i, stripe, error = %e, "shard chunk unreadable");
        counters.shard_unavailable();
        return None;
    }
    counters.add_read(buf.len() as u64);
    let (sum, data) = buf.split_at(format::CHECKSUM_BYTES as usize);
    if format::chunk_checksum(stripe, data) != sum {
        tracing::warn!(digest = %ctx.digest, shard = i, stripe, "shard chunk checksum mismatch");
        counters.checksum_failed();
        return None;
    }
    Some(Bytes::from(buf).slice(format::CHECKSUM_BYTES as usize..))
}

/// The open file of shard `i`, opening it and checking its header on first use.
fn open_shard(ctx: &ReadCtx, i: usize) -> Option<Arc<dyn DiskFile>> {
    let mut slot = ctx.slots[i].lock().expect("shard slot poisoned");
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
    match open_and_check(ctx, disk.as_ref(), i) {
        Ok(file) => {
            *slot = Slot::Open(file.clone());
            Some(file)
        }
        Err(reason) => {
            tracing::warn!(digest = %ctx.digest, shard = i, disk = %disk.id(), %reason, "shard file unusable");
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

#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("cannot open or read the header: {0}")]
    Io(#[from] io::Error),
    #[error("bad header: {0}")]
    Header(#[from] HeaderError),
    #[error("header {found:?} does not match the layout")]
    Mismatch { found: ShardHeader },
}

fn open_and_check(ctx: &ReadCtx, disk: &dyn Disk, i: usize) -> Result<Arc<dyn DiskFile>, Unusable> {
    let path = format::final_path(&ctx.digest, &ctx.layout.upload, i);
    let file: Arc<dyn DiskFile> = Arc::from(disk.open(&path)?);
    let mut bytes = [0u8; HEADER_BYTES as usize];
    file.read_at(&mut bytes, 0)?;
    ctx.inner.counters.add_read(HEADER_BYTES);
    let found = ShardHeader::decode(&bytes)?;
    let expected = ShardHeader {
        codec: ctx.layout.codec,
        profile: ctx.layout.profile,
        shard_index: i as u8,
        shard_bytes: ctx.layout.shard_bytes,
    };
    if found != expected {
        return Err(Unusable::Mismatch { found });
    }
    Ok(file)
}
