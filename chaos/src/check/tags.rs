//! Tag reads are linearizable per tag. Every tag write carries a unique manifest, so a
//! read's digest names the write it saw. A read of tag T that began at `r.invoke` is
//! stale when some write to T was acknowledged before `r.invoke` and was itself invoked
//! after the write the read saw had been acknowledged (so the seen value was already
//! overwritten for good), or when an earlier completed read had already seen a newer
//! write. A read may not return a value never written, or written only after it ended,
//! nor "not found" once a write to the tag was acknowledged. A write without an
//! acknowledgement may take effect at any time after its invocation.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{Event, Op};

/// A write to one tag: when it was invoked, and when it was acknowledged (if it was).
#[derive(Clone, Copy)]
struct Write {
    invoke: u64,
    acked_at: Option<u64>,
    /// The earliest invocation of a write of this value whose outcome is unknown (no
    /// answer, or a 5xx such as a 503 after the forwarding deadline): it may take
    /// effect at any time after it was invoked, so the value may be current again.
    indeterminate_from: Option<u64>,
}

/// Largest `value` among `(at, value)` pairs with `at < before`; pairs sorted by `at`.
fn max_before(sorted: &[(u64, u64)], prefix_max: &[u64], before: u64) -> Option<u64> {
    let n = sorted.partition_point(|(at, _)| *at < before);
    (n > 0).then(|| prefix_max[n - 1])
}

fn prefix_max(sorted: &[(u64, u64)]) -> Vec<u64> {
    let mut m = 0;
    sorted
        .iter()
        .map(|(_, v)| {
            m = m.max(*v);
            m
        })
        .collect()
}

pub fn check(events: &[Event]) -> Verdict {
    let mut v = Verdict::new(
        "tags",
        "per-tag linearizable reads: no read returns a value older than one acknowledged before it began",
    );
    type TagKey = (String, String);
    let mut writes: BTreeMap<TagKey, BTreeMap<String, Write>> = BTreeMap::new();
    let mut reads: BTreeMap<TagKey, Vec<&Event>> = BTreeMap::new();
    let mut repos_with_deletes = std::collections::BTreeSet::new();
    for e in events {
        match &e.op {
            Op::MoveTag { repo, tag, digest } | Op::PushManifest { repo, tag, digest } => {
                let w = writes
                    .entry((repo.clone(), tag.clone()))
                    .or_default()
                    .entry(digest.clone())
                    .or_insert(Write {
                        invoke: e.invoke_ms,
                        acked_at: None,
                        indeterminate_from: None,
                    });
                w.invoke = w.invoke.min(e.invoke_ms);
                if e.outcome.ok() {
                    w.acked_at = Some(w.acked_at.map_or(e.complete_ms, |a| a.max(e.complete_ms)));
                } else if e.outcome.status.is_none_or(|s| s >= 500) {
                    w.indeterminate_from = Some(
                        w.indeterminate_from
                            .map_or(e.invoke_ms, |i| i.min(e.invoke_ms)),
                    );
                }
            }
            Op::ReadTag { repo, tag } => reads
                .entry((repo.clone(), tag.clone()))
                .or_default()
                .push(e),
            Op::DeleteManifest { repo, .. } => {
                repos_with_deletes.insert(repo.clone());
            }
            _ => {}
        }
    }
    for (key, tag_reads) in &reads {
        let empty = BTreeMap::new();
        let tag_writes = writes.get(key).unwrap_or(&empty);
        // (acknowledged at, invoked at) of acknowledged writes.
        let mut acked: Vec<(u64, u64)> = tag_writes
            .values()
            .filter_map(|w| w.acked_at.map(|a| (a, w.invoke)))
            .collect();
        acked.sort_unstable();
        let acked_max = prefix_max(&acked);
        // (read completed at, invocation of the write it saw).
        let mut seen: Vec<(u64, u64)> = tag_reads
            .iter()
            .filter(|r| r.outcome.ok())
            .filter_map(|r| {
                let w = tag_writes.get(r.outcome.body_digest.as_deref()?)?;
                Some((r.complete_ms, w.invoke))
            })
            .collect();
        seen.sort_unstable();
        let seen_max = prefix_max(&seen);
        for r in tag_reads {
            let name = format!("{}:{}", key.0, key.1);
            match r.outcome.status {
                Some(404) if !repos_with_deletes.contains(&key.0) => {
                    v.checked += 1;
                    if let Some(&(at, _)) = acked.first()
                        && at < r.invoke_ms
                    {
                        v.violation(format!(
                            "op {} on node {}: read of {name} at {}..{} ms found nothing, but a write was acknowledged at {at} ms",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    }
                }
                Some(s) if (200..300).contains(&s) => {
                    v.checked += 1;
                    let digest = r.outcome.body_digest.clone().unwrap_or_default();
                    let Some(w) = tag_writes.get(&digest) else {
                        v.violation(format!(
                            "op {} on node {}: read of {name} returned {digest}, which no write put there",
                            r.id, r.node
                        ));
                        continue;
                    };
                    if w.invoke > r.complete_ms {
                        v.violation(format!(
                            "op {} on node {}: read of {name} ending at {} ms returned {digest}, written only from {} ms",
                            r.id, r.node, r.complete_ms, w.invoke
                        ));
                    }
                    // A write of this value with an unknown outcome, invoked before the
                    // read ended, may have taken effect just before the read.
                    if w.indeterminate_from.is_some_and(|i| i < r.complete_ms) {
                        continue;
                    }
                    let Some(w_acked) = w.acked_at else { continue };
                    if let Some(newer) = max_before(&acked, &acked_max, r.invoke_ms)
                        && newer > w_acked
                    {
                        v.violation(format!(
                            "op {} on node {}: stale read of {name} at {}..{} ms returned {digest} (acknowledged at {w_acked} ms), \
                             but a write invoked at {newer} ms was acknowledged before the read began",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    } else if let Some(newer) = max_before(&seen, &seen_max, r.invoke_ms)
                        && newer > w_acked
                    {
                        v.violation(format!(
                            "op {} on node {}: read of {name} at {}..{} ms returned {digest} (acknowledged at {w_acked} ms), \
                             but an earlier read had already seen a write invoked at {newer} ms",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    v
}
