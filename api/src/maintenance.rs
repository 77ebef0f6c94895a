//! Background upkeep of a node: upload sessions that outlived their TTL are cancelled,
//! staging files of uploads that are not live here are removed once idle for the TTL
//! (at start-up, this node's own at once), blobs that no repository links any more
//! are collected (record through Raft first, then shard files), and shard files that
//! no committed blob references (a crash between writing shards and the Raft commit,
//! or between a record's removal and its files') are swept once they are older than
//! the TTL; one-time tokens that were redeemed or expired are removed. Runs until
//! the shutdown signal.

use std::collections::HashSet;
use std::time::Duration;

use berth_consensus::tenancy::{TenancyCommand, TenancyOutcome};
use berth_consensus::{CommandV1, Outcome};
use berth_types::BlobLayout;
use berth_types::limits::GC_BLOBS_PER_PASS_MAX;
use tokio::sync::watch;

use crate::AppState;
use crate::oci::error::OciResult;
use crate::uploads::now_ms;

/// Longest pause between upkeep passes.
pub const MAINTENANCE_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Shortest pause between upkeep passes.
pub const MAINTENANCE_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// Upkeep runs four times per upload TTL (bounded), so an idle session is gone
/// within 1.25 TTL.
pub fn interval_for(upload_ttl: Duration) -> Duration {
    (upload_ttl / 4).clamp(MAINTENANCE_INTERVAL_MIN, MAINTENANCE_INTERVAL_MAX)
}

/// Called once at start-up: upload sessions this node owned before it stopped cannot
/// continue (their hash state was in memory), so their records and staged bytes go.
pub async fn recover(app: &AppState) -> OciResult<()> {
    let node = app.node;
    let stale = app
        .meta
        .read(move |v| {
            Ok(v.uploads()?
                .into_iter()
                .filter(|u| u.id.owner() == node)
                .map(|u| u.id)
                .collect::<Vec<_>>())
        })
        .await?;
    for id in &stale {
        app.meta
            .propose(CommandV1::CancelUpload { id: *id })
            .await?;
    }
    let removed = sweep_staging(app, None).await?;
    tracing::info!(
        cancelled = stale.len(),
        staging_files_removed = removed,
        "recovered uploads"
    );
    Ok(())
}

/// Removes staging files of uploads that are not live here (this node's sessions and
/// the restripe it writes). At start-up (`idle_max` `None`) that is every file of this
/// node's own uploads, none of which survived the restart, while the shards other
/// nodes stream here are kept. Afterwards (`Some(ttl)`) a file goes once it has also
/// not been written for `ttl`: this node cannot see other nodes' sessions, or a
/// repair's rebuild writing here, and a session lives while it is written at least
/// once per upload TTL.
async fn sweep_staging(app: &AppState, idle_max: Option<Duration>) -> OciResult<usize> {
    let mut live: HashSet<_> = app.uploads.live().into_iter().collect();
    live.extend(app.uploads.placer.repairs.restripe.writing());
    let node = app.node;
    Ok(app
        .store
        .sweep_staging(move |id, idle| {
            live.contains(id)
                || match idle_max {
                    None => id.owner() != node,
                    Some(max) => idle < max,
                }
        })
        .await?)
}

/// Removes blobs that no repository links. The record goes first, through Raft, which
/// refuses if a repository linked the blob again meanwhile; only then are the shard
/// files deleted. A crash in between leaves files the orphan sweep removes.
async fn collect_unlinked(app: &AppState) -> OciResult<usize> {
    let digests = app
        .meta
        .read(|v| v.unlinked_blobs(GC_BLOBS_PER_PASS_MAX))
        .await?;
    let mut collected = 0;
    for digest in digests {
        let outcome = app
            .meta
            .propose(CommandV1::DeleteBlobRecord {
                digest: digest.clone(),
            })
            .await?;
        if let Outcome::BlobRecordDeleted(record) = outcome {
            if let BlobLayout::Striped(layout) = &record.layout {
                app.store.delete(layout, &digest).await?;
            }
            collected += 1;
        }
    }
    Ok(collected)
}

/// Removes one-time tokens that were redeemed or expired more than one access-token
/// lifetime ago: until then an access token from the redemption still names the
/// record. Proposed only when there is one (every node runs this; the command is
/// idempotent).
async fn prune_one_time_tokens(app: &AppState) -> OciResult<usize> {
    let before_ms = now_ms().saturating_sub(app.auth.config.token_ttl.as_millis() as u64);
    let due = app
        .meta
        .read_local(move |v| {
            Ok(v.all_one_time_tokens()?.iter().any(|t| {
                t.expires_at_ms < before_ms || t.redeemed_at_ms.is_some_and(|at| at < before_ms)
            }))
        })
        .await?;
    if !due {
        return Ok(0);
    }
    match app
        .meta
        .propose(CommandV1::Tenancy(TenancyCommand::PruneOneTimeTokens {
            before_ms,
        }))
        .await?
    {
        Outcome::Tenancy(TenancyOutcome::Audited(n)) => Ok(n as usize),
        _ => Ok(0),
    }
}

/// One upkeep pass.
pub async fn run_once(app: &AppState, upload_ttl: Duration) -> OciResult<()> {
    let expired = app.uploads.expire_idle(upload_ttl).await;
    let before_ms = now_ms().saturating_sub(upload_ttl.as_millis() as u64);
    // One barrier for the whole pass: afterwards the local state holds every commit
    // acknowledged before it, so the checks below read locally instead of asking the
    // leader once per session or file.
    app.meta.read(|_| Ok(())).await?;
    let stale = app
        .meta
        .read_local(move |v| Ok(v.uploads()?.iter().any(|u| u.started_at_ms < before_ms)))
        .await?;
    if stale {
        // Only when there is something to expire: an idle cluster writes no log entries.
        app.meta
            .propose(CommandV1::ExpireUploads { before_ms })
            .await?;
    }
    let staging = sweep_staging(app, Some(upload_ttl)).await?;
    let collected = collect_unlinked(app).await?;
    let one_time_pruned = prune_one_time_tokens(app).await?;
    let meta = app.meta.clone();
    let handle = tokio::runtime::Handle::current();
    let orphans = app
        .store
        .sweep_orphans(
            move |digest, upload, index, here| {
                let (digest, upload) = (digest.clone(), *upload);
                // Only files older than the TTL are asked about; any commit of theirs
                // happened long before the barrier above, so the local state is enough.
                // Called on a blocking thread: wait for the answer there.
                handle
                    .block_on(meta.read_local(move |v| {
                        Ok(matches!(
                            v.blob(&digest)?.map(|b| b.layout),
                            Some(berth_types::BlobLayout::Striped(l))
                                if l.upload == upload && l.shards.get(index) == Some(&here)
                        ))
                    }))
                    // When in doubt, keep the file.
                    .unwrap_or(true)
            },
            upload_ttl,
        )
        .await?;
    if expired + staging + collected + orphans + one_time_pruned > 0 {
        tracing::info!(
            expired,
            staging,
            collected,
            orphans,
            one_time_pruned,
            "maintenance pass"
        );
    }
    Ok(())
}

/// Runs upkeep every [`interval_for`]`(upload_ttl)` until `shutdown` turns true.
pub async fn run(app: AppState, upload_ttl: Duration, mut shutdown: watch::Receiver<bool>) {
    let interval = interval_for(upload_ttl);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = run_once(&app, upload_ttl).await {
            tracing::warn!(error = ?e.message, "maintenance pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_scales_with_ttl_within_bounds() {
        assert_eq!(
            interval_for(Duration::from_secs(86_400)),
            MAINTENANCE_INTERVAL_MAX
        );
        assert_eq!(interval_for(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            interval_for(Duration::from_millis(100)),
            MAINTENANCE_INTERVAL_MIN
        );
    }
}
