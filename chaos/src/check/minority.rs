//! A node cut off from the majority never acknowledges a write: every write invoked on
//! a minority node after the partition was in place (every drop rule installed) and answered before it healed must
//! fail (503 with Retry-After, or no answer), never succeed.

use super::Verdict;
use crate::history::{Event, FaultRecord};

pub fn check(events: &[Event], faults: &[FaultRecord]) -> Verdict {
    let mut v = Verdict::new(
        "minority",
        "a node cut off from the majority never acknowledges a write",
    );
    for f in faults.iter().filter(|f| !f.minority.is_empty()) {
        let heal = f.heal_ms.unwrap_or(u64::MAX);
        for e in events.iter().filter(|e| {
            e.op.is_write()
                && f.minority.contains(&e.node)
                && e.invoke_ms >= f.in_place_ms
                && e.complete_ms < heal
        }) {
            v.checked += 1;
            if e.outcome.ok() {
                v.violation(format!(
                    "op {} ({}) on isolated node {} at {}..{} ms was acknowledged during {} ({}..{} ms)",
                    e.id,
                    e.op.name(),
                    e.node,
                    e.invoke_ms,
                    e.complete_ms,
                    f.kind,
                    f.in_place_ms,
                    heal
                ));
            }
        }
    }
    v
}
