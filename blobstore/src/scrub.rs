//! Scrubbing: reading one shard file of this node end to end and checking its header
//! and the checksum of every chunk, data and parity shards alike, at a bounded rate.
//! Reads of a healthy stripe never touch its parity shards (nor the data shards that
//! hold only a short stripe's padding), so damage there is found only here. What to
//! scrub, how often, and what to do with damage (queue it for repair) is the caller's.

use std::sync::Arc;
use std::time::Duration;

use berth_types::{Digest, DiskId, StripedLayout};
use tokio::time::Instant;

use crate::disk::DiskFile;
use crate::error::BlobStoreError;
use crate::format::{self, CHECKSUM_BYTES, HEADER_BYTES, HeaderError, ShardHeader};
use crate::shard::{self, ChunkUnusable, Unusable};
use crate::store::{BlobStore, blocking};

/// Credit a pacer keeps for a pause in reading (the time between two layouts, a slow
/// metadata read): at most this much time's worth of bytes is read unpaced after it.
const PACER_SLACK: Duration = Duration::from_secs(1);

/// Keeps reads (the scrubber's) or copies (rebalancing's shard moves) under a rate in
/// bytes per second, a token bucket of [`PACER_SLACK`]'s worth: each take of `n` bytes
/// first waits until the bytes taken so far fit in the time elapsed.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    since: Instant,
    bytes: u64,
}

impl Pacer {
    /// A pacer for `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Waits until `n` more bytes may be read.
    pub async fn take(&mut self, n: u64) {
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let elapsed = self.since.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        } else if elapsed - due > PACER_SLACK {
            self.since = Instant::now();
            self.bytes = 0;
        }
        self.bytes += n;
    }
}

/// What a scrub found wrong with a shard file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardDamage {
    #[error("the shard file is missing")]
    Missing,
    #[error("the shard is placed on disk {disk}, which this node does not have")]
    UnknownDisk { disk: DiskId },
    #[error("the shard file cannot be used: {reason}")]
    Unusable { reason: String },
    #[error("the chunk of stripe {stripe} cannot be read: {reason}")]
    ChunkUnreadable { stripe: u64, reason: String },
    #[error("the chunk of stripe {stripe} fails its checksum")]
    ChecksumMismatch { stripe: u64 },
}

/// The result of scrubbing one shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardHealth {
    /// Header and every chunk verified; `bytes` were read.
    Good { bytes: u64 },
    /// The file needs a rebuild; `bytes` were read before the damage was found.
    Damaged { damage: ShardDamage, bytes: u64 },
}

impl BlobStore {
    /// Reads shard `index` of a committed blob of `size` bytes from its file on this
    /// node, checking its header against `layout` and every chunk's checksum, each
    /// chunk read only when `pacer` allows, and that the file ends where its last chunk
    /// does. Stops at the first damage. Damage is also counted like a read's
    /// (`checksum_failures`, `shards_unavailable`). Fails with `InvalidLayout` when
    /// `layout` does not place shard `index` on this node.
    pub async fn scrub_shard(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
        size: u64,
        index: usize,
        pacer: &mut Pacer,
    ) -> Result<ShardHealth, BlobStoreError> {
        let inner = self.inner().clone();
        let at = match layout.shards.get(index) {
            Some(at) if layout.is_valid() && at.node == inner.node => *at,
            _ => return Err(BlobStoreError::InvalidLayout),
        };
        let Some(slot) = inner.slot(at.disk) else {
            inner.counters.shard_unavailable();
            return Ok(ShardHealth::Damaged {
                damage: ShardDamage::UnknownDisk { disk: at.disk },
                bytes: 0,
            });
        };
        let expected = ShardHeader {
            codec: layout.codec,
            profile: layout.profile,
            shard_index: index as u8,
            shard_bytes: layout.shard_bytes,
        };
        pacer.take(HEADER_BYTES).await;
        let opened = {
            let (inner, disk) = (inner.clone(), slot.disk.clone());
            let (digest, upload) = (digest.clone(), layout.upload);
            blocking(move || shard::open_final(&inner, disk.as_ref(), &digest, &upload, &expected))
                .await?
        };
        let file: Arc<dyn DiskFile> = match opened {
            Ok(file) => Arc::from(file),
            Err(reason) => {
                let damage = match reason {
                    Unusable::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        inner.counters.shard_unavailable();
                        ShardDamage::Missing
                    }
                    Unusable::Header(HeaderError::ChecksumMismatch) => {
                        inner.counters.checksum_failed();
                        ShardDamage::Unusable {
                            reason: reason.to_string(),
                        }
                    }
                    reason => {
                        inner.counters.shard_unavailable();
                        ShardDamage::Unusable {
                            reason: reason.to_string(),
                        }
                    }
                };
                return Ok(ShardHealth::Damaged { damage, bytes: 0 });
            }
        };
        let mut bytes = HEADER_BYTES;
        let (stripes, k) = (layout.stripe_count(size), layout.profile.k());
        let file_size = {
            let file = file.clone();
            blocking(move || file.size()).await?
        };
        for stripe in 0..stripes {
            // The last chunk is short in a version 2 file, full in a version 1 one.
            let expected = format::stripe_shard_bytes(layout.shard_bytes, k, size, stripe);
            // A file that ends before the chunk does (at its version 2 length) was
            // cut short: unreadable there, whatever the checksum would say.
            let end = format::chunk_offset(layout.shard_bytes, stripe)
                + CHECKSUM_BYTES
                + u64::from(expected);
            match &file_size {
                Ok(len) if *len >= end => {}
                found => {
                    inner.counters.shard_unavailable();
                    let reason = match found {
                        Ok(len) => format!("the file ends at byte {len}, the chunk at {end}"),
                        Err(e) => e.to_string(),
                    };
                    return Ok(ShardHealth::Damaged {
                        damage: ShardDamage::ChunkUnreadable { stripe, reason },
                        bytes,
                    });
                }
            }
            pacer.take(CHECKSUM_BYTES + u64::from(expected)).await;
            let (worker, file, shard_bytes) = (inner.clone(), file.clone(), layout.shard_bytes);
            let read = blocking(move || {
                shard::read_chunk(&worker, file.as_ref(), shard_bytes, stripe)
                    .map(|chunk| chunk.shard.len())
            })
            .await?;
            let damage = match read {
                Ok(len)
                    if format::usable_shard_len(shard_bytes, k, size, stripe, len).is_some() =>
                {
                    bytes += CHECKSUM_BYTES + len as u64;
                    continue;
                }
                Ok(len) => {
                    inner.counters.shard_unavailable();
                    ShardDamage::ChunkUnreadable {
                        stripe,
                        reason: format!(
                            "{len} shard bytes where a blob of {size} bytes has {expected}"
                        ),
                    }
                }
                Err(ChunkUnusable::ChecksumMismatch) => ShardDamage::ChecksumMismatch { stripe },
                Err(ChunkUnusable::Io(e)) => {
                    inner.counters.shard_unavailable();
                    ShardDamage::ChunkUnreadable {
                        stripe,
                        reason: e.to_string(),
                    }
                }
            };
            return Ok(ShardHealth::Damaged { damage, bytes });
        }
        // Every chunk is good; bytes after the last one mean the file is not what it
        // claims (a write that went elsewhere, a copy gone wrong): rebuilt clean.
        if let Ok(len) = file_size
            && len != bytes
        {
            inner.counters.shard_unavailable();
            let reason = format!("the file has {len} bytes, its chunks end at byte {bytes}");
            return Ok(ShardHealth::Damaged {
                damage: ShardDamage::Unusable { reason },
                bytes,
            });
        }
        Ok(ShardHealth::Good { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 KiB at 256 KiB/s takes a quarter of a second, after the first take (which
    /// never waits).
    #[tokio::test(start_paused = true)]
    async fn a_pacer_holds_reads_to_its_rate() {
        let mut pacer = Pacer::new(256 * 1024);
        let started = Instant::now();
        for _ in 0..17 {
            pacer.take(4096).await;
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(260),
            "64 KiB at 256 KiB/s took {elapsed:?}"
        );
    }

    /// A long pause earns at most `PACER_SLACK` of credit: after ten idle seconds,
    /// three more reads of a second's worth still take two seconds.
    #[tokio::test(start_paused = true)]
    async fn a_pause_earns_bounded_credit() {
        let mut pacer = Pacer::new(1000);
        pacer.take(1000).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let started = Instant::now();
        for _ in 0..3 {
            pacer.take(1000).await;
        }
        assert!(started.elapsed() >= Duration::from_secs(2));
    }
}
