//! The audit log's write side: request handlers [`AuditLog::record`] entries into a
//! bounded queue; [`run`] flushes them through Raft once a second (one
//! `TenancyCommand::Audit` per flush, so the log survives the loss of any node once
//! flushed) and prunes entries past the retention. Pulls are batched: identical pull
//! entries (identity, client, resource, outcome) of one flush become one entry with a
//! count. Entries still queued when a node dies (at most one flush interval) are lost.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_consensus::CommandV1;
use berth_consensus::tenancy::{
    AUDIT_BATCH_ENTRIES_MAX, AuditOutcome, AuditRecord, TenancyCommand,
};
use tokio::sync::{mpsc, watch};

use crate::AppState;
use crate::uploads::now_ms;

/// Entries waiting for a flush; more are dropped (and counted).
const QUEUE_ENTRIES_MAX: usize = 10_000;
/// How often queued entries are flushed.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often old entries are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// A new audit entry for now.
pub fn entry(
    identity: &str,
    client: &str,
    action: &str,
    resource: &str,
    project: Option<&str>,
    outcome: AuditOutcome,
) -> AuditRecord {
    AuditRecord {
        at_ms: now_ms(),
        identity: identity.to_owned(),
        client: client.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        project: project.map(str::to_owned),
        outcome,
        count: 1,
    }
}

pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    rx: Mutex<Option<mpsc::Receiver<AuditRecord>>>,
    dropped: AtomicU64,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::new()
    }
}

impl AuditLog {
    pub fn new() -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE_ENTRIES_MAX);
        AuditLog {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues an entry; never blocks. A full queue drops the entry and counts it.
    pub fn record(&self, e: AuditRecord) {
        if self.tx.try_send(e).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit queue full; entries dropped");
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Folds identical pull entries into one with a count; keeps everything else in order.
pub fn batch(entries: Vec<AuditRecord>) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::with_capacity(entries.len());
    let mut pulls: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for e in entries {
        if e.action == "pull" {
            let k = (
                e.identity.clone(),
                e.client.clone(),
                e.resource.clone(),
                format!("{:?}", e.outcome),
            );
            if let Some(&i) = pulls.get(&k) {
                out[i].count = out[i].count.saturating_add(e.count);
                continue;
            }
            pulls.insert(k, out.len());
        }
        out.push(e);
    }
    out
}

/// Flushes queued entries until `stop`, then once more.
pub async fn run(app: AppState, mut stop: watch::Receiver<bool>) {
    let Some(mut rx) = app
        .auth
        .audit
        .rx
        .lock()
        .expect("audit lock poisoned")
        .take()
    else {
        return;
    };
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let mut pending = Vec::new();
        while pending.len() < AUDIT_BATCH_ENTRIES_MAX {
            match rx.try_recv() {
                Ok(e) => pending.push(e),
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            let entries = batch(pending);
            let n = entries.len();
            if let Err(e) = app
                .meta
                .propose(CommandV1::Tenancy(TenancyCommand::Audit(entries)))
                .await
            {
                tracing::warn!(error = %e, entries = n, "audit flush failed; entries lost");
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_INTERVAL) {
            last_prune = Some(tokio::time::Instant::now());
            let retention = app.auth.config.audit_retention.as_millis() as u64;
            let before_ms = now_ms().saturating_sub(retention);
            if let Err(e) = app
                .meta
                .propose(CommandV1::Tenancy(TenancyCommand::PruneAudit { before_ms }))
                .await
            {
                tracing::warn!(error = %e, "audit prune failed");
            }
            app.auth.limits.shrink();
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_are_batched_and_others_kept() {
        let e = |action: &str, who: &str| {
            entry(
                who,
                "c",
                action,
                "team/app:v1",
                Some("team"),
                AuditOutcome::Success,
            )
        };
        let out = batch(vec![
            e("pull", "a"),
            e("push", "a"),
            e("pull", "a"),
            e("pull", "b"),
            e("push", "a"),
        ]);
        let summary: Vec<(String, String, u32)> = out
            .iter()
            .map(|r| (r.action.clone(), r.identity.clone(), r.count))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("pull".into(), "a".into(), 2),
                ("push".into(), "a".into(), 1),
                ("pull".into(), "b".into(), 1),
                ("push".into(), "a".into(), 1),
            ]
        );
    }
}
