//! The scrubber: on a schedule, this node re-reads every shard file that the committed
//! layouts place on its disks, data and parity alike, checking the header and every
//! chunk's checksum at a bounded rate (`berth_blobstore::Pacer`), and queues every
//! shard found missing, unreadable or corrupt for the repair worker (`Repairs`), which
//! rebuilds it from the rest of its stripe. Reads of healthy stripes never touch
//! parity, so without the scrubber rotten parity would wait for the day it is needed.
//!
//! Layouts are read a page at a time from this node's copy of the metadata, so memory
//! stays bounded whatever the number of blobs; damage is confirmed against the current
//! layout (a linearizable read) before it is queued, so a shard that repair or a
//! delete moved away meanwhile is not rebuilt for nothing. A pass that completes is
//! recorded through `ScrubConfig::on_pass` (the node keeps it in its data folder), so
//! the schedule survives restarts. So does a pass in progress: every
//! [`PROGRESS_EVERY`] the last blob it covered is recorded through
//! `ScrubConfig::on_progress`, and a node
//! that starts with such a mark goes on from it at once instead of scrubbing from the
//! first blob again, so a node restarted more often than a pass takes still covers
//! every shard.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_blobstore::{Pacer, ShardHealth};
use berth_types::{BlobLayout, Digest, ShardPlacement, UploadId};
use tokio::sync::watch;

use crate::AppState;

/// Blob layouts read per page.
const SCRUB_PAGE: usize = 256;
/// Wait before a page of layouts is asked for again after the metadata failed.
const METADATA_RETRY: Duration = Duration::from_secs(5);
/// How often a pass records how far it has come: the most scrubbing a crash can make
/// the node do again.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Called with the time a pass completed.
pub type PassRecorder = Arc<dyn Fn(SystemTime) + Send + Sync>;

/// Called every [`PROGRESS_EVERY`] of a pass with the last blob the pass has covered.
pub type ProgressRecorder = Arc<dyn Fn(&Digest) + Send + Sync>;

/// How the scrubber runs.
#[derive(Clone)]
pub struct ScrubConfig {
    /// Time from the start of one pass to the start of the next; zero turns the
    /// scrubber off.
    pub interval: Duration,
    /// Bytes read per second, at most.
    pub bytes_per_sec: u64,
    /// When the last pass completed (kept across restarts), if ever.
    pub last_pass: Option<SystemTime>,
    /// What the schedule counts from: the last completed pass, or when the node first
    /// scheduled scrubbing, so restarts never keep postponing the first pass.
    pub since: SystemTime,
    /// Records the completion of a pass.
    pub on_pass: PassRecorder,
    /// Where the pass that a shutdown or crash interrupted goes on from: the last blob
    /// it covered. `None` when the last pass completed, or none began.
    pub resume_after: Option<Digest>,
    /// Records how far the pass in progress has come.
    pub on_progress: ProgressRecorder,
}

impl std::fmt::Debug for ScrubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubConfig")
            .field("interval", &self.interval)
            .field("bytes_per_sec", &self.bytes_per_sec)
            .field("last_pass", &self.last_pass)
            .field("since", &self.since)
            .field("resume_after", &self.resume_after)
            .finish_non_exhaustive()
    }
}

/// How long to wait before the first pass: until one interval after `since`. A
/// `since` in the future (a clock set back) waits one interval.
fn first_wait(interval: Duration, since: SystemTime, now: SystemTime) -> Duration {
    match now.duration_since(since) {
        Ok(elapsed) => interval.saturating_sub(elapsed),
        Err(_) => interval,
    }
}

/// Runs scrub passes on `cfg`'s schedule until `shutdown` turns true, which also ends
/// a pass in progress.
pub async fn run(app: AppState, cfg: ScrubConfig, mut shutdown: watch::Receiver<bool>) {
    if cfg.interval.is_zero() {
        tracing::info!("scrubber off");
        return;
    }
    if let Some(last) = cfg.last_pass {
        app.metrics.scrub_pass_completed(last);
    }
    let mut resume = cfg.resume_after.clone();
    let mut wait = if resume.is_some() {
        Duration::ZERO
    } else {
        first_wait(cfg.interval, cfg.since, SystemTime::now())
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let started = tokio::time::Instant::now();
        let after = resume.take();
        if let Some(after) = &after {
            tracing::info!(%after, "scrub: going on with the pass a restart interrupted");
        }
        tokio::select! {
            _ = pass(&app, cfg.bytes_per_sec, after, cfg.on_progress.as_ref()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let done = SystemTime::now();
        app.metrics.scrub_pass_completed(done);
        (cfg.on_pass)(done);
        wait = cfg.interval.saturating_sub(started.elapsed());
    }
}

/// What one pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub shards: u64,
    pub bytes: u64,
    pub damaged: u64,
}

/// A pass over every layout after blob `after` (all of them without it), scrubbing
/// the shards placed on this node; `on_progress` hears every [`PROGRESS_EVERY`] the
/// last blob it has covered.
pub async fn pass(
    app: &AppState,
    bytes_per_sec: u64,
    after: Option<Digest>,
    on_progress: &(dyn Fn(&Digest) + Send + Sync),
) -> PassStats {
    let started = tokio::time::Instant::now();
    let mut recorded = started;
    let mut pacer = Pacer::new(bytes_per_sec);
    let mut stats = PassStats::default();
    let mut cursor = after;
    loop {
        let after = cursor.clone();
        let page = match app
            .meta
            .read_local(move |v| v.blobs_after(after.as_ref(), SCRUB_PAGE))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "scrub: metadata unavailable; retrying");
                tokio::time::sleep(METADATA_RETRY).await;
                continue;
            }
        };
        let done = page.len() < SCRUB_PAGE;
        cursor = page.last().map(|r| r.digest.clone());
        for record in page {
            let BlobLayout::Striped(layout) = &record.layout else {
                continue;
            };
            for (index, at) in layout.shards.iter().enumerate() {
                if at.node != app.node {
                    continue;
                }
                let health = app
                    .store
                    .scrub_shard(layout, &record.digest, record.size, index, &mut pacer)
                    .await;
                let (bytes, damage) = match health {
                    Ok(ShardHealth::Good { bytes }) => (bytes, None),
                    Ok(ShardHealth::Damaged { damage, bytes }) => (bytes, Some(damage)),
                    Err(e) => {
                        tracing::warn!(digest = %record.digest, shard = index, error = %e, "scrub: shard not checked");
                        continue;
                    }
                };
                stats.shards += 1;
                stats.bytes += bytes;
                app.metrics.scrub_verified(bytes);
                let Some(damage) = damage else {
                    continue;
                };
                if still_placed(app, &record.digest, layout.upload, index, *at).await {
                    tracing::warn!(digest = %record.digest, shard = index, disk = %at.disk, %damage, "scrub: damaged shard queued for repair");
                    stats.damaged += 1;
                    app.metrics.scrub_damaged();
                    app.uploads.placer.repairs.queue(&record.digest, &[index]);
                }
            }
            if recorded.elapsed() >= PROGRESS_EVERY {
                on_progress(&record.digest);
                recorded = tokio::time::Instant::now();
            }
        }
        if done {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        shards = stats.shards,
        bytes = stats.bytes,
        damaged = stats.damaged,
        secs,
        mb_per_sec = stats.bytes as f64 / 1e6 / secs.max(1e-3),
        "scrub pass complete"
    );
    stats
}

/// Whether the committed layout still places shard `index` of `upload` at `at`. When
/// the metadata cannot say, the shard counts as placed: a needless rebuild costs less
/// than damage left alone.
async fn still_placed(
    app: &AppState,
    digest: &Digest,
    upload: UploadId,
    index: usize,
    at: ShardPlacement,
) -> bool {
    let wanted = digest.clone();
    match app.meta.read(move |v| v.blob(&wanted)).await {
        Ok(Some(record)) => match record.layout {
            BlobLayout::Striped(l) => l.upload == upload && l.shards.get(index) == Some(&at),
            BlobLayout::Inline(_) => false,
        },
        Ok(None) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_first_pass_waits_out_the_interval_since_the_last_one() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(first_wait(10 * HOUR, now, now), 10 * HOUR);
        assert_eq!(first_wait(10 * HOUR, now - 3 * HOUR, now), 7 * HOUR);
        assert_eq!(first_wait(10 * HOUR, now - 30 * HOUR, now), Duration::ZERO);
        // A recorded time in the future (a clock set back) waits one interval at most.
        assert_eq!(first_wait(10 * HOUR, now + 5 * HOUR, now), 10 * HOUR);
    }
}
