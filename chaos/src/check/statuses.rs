//! Server errors: no 5xx other than 503 ever, except 507 (storage full) from the node
//! whose disk a `disk-full` fault filled, while it holds; a 503 carries `Retry-After`;
//! and a 503 only while a fault is active (from its injection until the cluster has
//! converged after healing, plus a grace period).

use super::Verdict;
use crate::history::{Event, FaultRecord};

pub fn check(events: &[Event], faults: &[FaultRecord], grace_ms: u64, end_ms: u64) -> Verdict {
    let mut v = Verdict::new(
        "statuses",
        "no 5xx other than 503 (507 from a full disk), and 503 (with Retry-After) only during faults",
    );
    let full_disks: Vec<(u64, u64, &[u64])> = faults
        .iter()
        .filter(|f| f.kind == "disk-full")
        .map(|f| {
            let until = f.converged_ms.or(f.heal_ms).unwrap_or(end_ms);
            (
                f.inject_ms,
                until.saturating_add(grace_ms),
                f.targets.as_slice(),
            )
        })
        .collect();
    let windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| {
            let until = f.converged_ms.or(f.heal_ms).unwrap_or(end_ms);
            (f.inject_ms, until.saturating_add(grace_ms))
        })
        .collect();
    for e in events {
        let Some(status) = e.outcome.status else {
            continue;
        };
        v.checked += 1;
        let full_disk = status == 507
            && full_disks.iter().any(|&(a, b, nodes)| {
                nodes.contains(&e.node) && e.invoke_ms <= b && e.complete_ms >= a
            });
        if full_disk {
            continue;
        }
        if status >= 500 && status != 503 {
            v.violation(format!(
                "op {} ({}) on node {} at {}..{} ms answered {status}",
                e.id,
                e.op.name(),
                e.node,
                e.invoke_ms,
                e.complete_ms
            ));
        } else if status == 503 {
            if !e.outcome.retry_after {
                v.violation(format!(
                    "op {} ({}) on node {}: 503 without Retry-After",
                    e.id,
                    e.op.name(),
                    e.node
                ));
            }
            let in_fault = windows
                .iter()
                .any(|&(a, b)| e.invoke_ms <= b && e.complete_ms >= a);
            if !in_fault {
                v.violation(format!(
                    "op {} ({}) on node {} at {}..{} ms: 503 while no fault was active",
                    e.id,
                    e.op.name(),
                    e.node,
                    e.invoke_ms,
                    e.complete_ms
                ));
            }
        }
    }
    v
}
