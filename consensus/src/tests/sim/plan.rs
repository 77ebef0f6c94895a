//! The schedule of one simulated run, a pure function of its seed: how many nodes, how
//! slow the network is, and when which proposal is made and which fault strikes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Simulated milliseconds of workload under faults; healing follows.
pub(super) const FAULT_MS: u64 = 4_000;
/// Pause between two faults, in simulated milliseconds.
const FAULT_GAP_MS: std::ops::Range<u64> = 150..700;
/// Pause between two proposals, in simulated milliseconds.
const PROPOSAL_GAP_MS: std::ops::Range<u64> = 5..40;
/// How long a crashed node stays down, in simulated milliseconds.
const DOWNTIME_MS: std::ops::Range<u64> = 50..1_500;
/// How long messages between two nodes are held back in a delay burst.
const HOLD_MS: std::ops::Range<u64> = 50..800;

/// Which node a crash hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Node(u64),
    /// Whichever node leads when the crash happens (none if there is no leader).
    Leader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// Propose a new command on this node (skipped while it is down).
    Propose {
        via: u64,
    },
    /// Cut both directions between two nodes.
    Partition(u64, u64),
    /// Drop what `from` sends to `to`; the other direction still works.
    PartitionOneWay {
        from: u64,
        to: u64,
    },
    /// Cut a node off from every other.
    Isolate(u64),
    /// Hold back every message between two nodes until [`Event::Release`].
    Hold(u64, u64),
    Release(u64, u64),
    /// Repair every partition and release every held link.
    Heal,
    /// Kill the node's software: its runtime and every task in it are dropped, so
    /// only what reached its redb file survives.
    Crash(Target),
    /// Start the software of every crashed node again, on the same redb file.
    RestartCrashed,
}

/// The schedule of one run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub nodes: u64,
    /// Snapshot and purge the log every few entries, so lagging and restarted nodes
    /// catch up through streamed snapshots.
    pub compaction: bool,
    pub max_latency_ms: u64,
    /// Events by simulated millisecond, in order.
    pub events: Vec<(u64, Event)>,
}

impl Plan {
    pub(super) fn new(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = if rng.random_bool(0.3) { 5 } else { 3 };
        let compaction = rng.random_bool(0.5);
        let max_latency_ms = rng.random_range(2..30);
        let mut events = Vec::new();
        let mut at = 0;
        while at < FAULT_MS {
            events.push((
                at,
                Event::Propose {
                    via: rng.random_range(1..=nodes),
                },
            ));
            at += rng.random_range(PROPOSAL_GAP_MS);
        }
        // Let the cluster elect its first leader before the first fault.
        let mut at = 500;
        while at < FAULT_MS {
            let a = rng.random_range(1..=nodes);
            let b = loop {
                let b = rng.random_range(1..=nodes);
                if b != a {
                    break b;
                }
            };
            match rng.random_range(0..9) {
                0 => events.push((at, Event::Partition(a, b))),
                1 => events.push((at, Event::PartitionOneWay { from: a, to: b })),
                2 => events.push((at, Event::Isolate(a))),
                3 => {
                    events.push((at, Event::Hold(a, b)));
                    events.push((at + rng.random_range(HOLD_MS), Event::Release(a, b)));
                }
                4 => events.push((at, Event::Heal)),
                5 | 6 => {
                    events.push((at, Event::Crash(Target::Node(a))));
                    events.push((at + rng.random_range(DOWNTIME_MS), Event::RestartCrashed));
                }
                _ => {
                    events.push((at, Event::Crash(Target::Leader)));
                    events.push((at + rng.random_range(DOWNTIME_MS), Event::RestartCrashed));
                }
            }
            at += rng.random_range(FAULT_GAP_MS);
        }
        events.sort_by_key(|(at, _)| *at);
        Plan {
            nodes,
            compaction,
            max_latency_ms,
            events,
        }
    }

    /// The faults of the plan, one line each, for a failure report.
    pub(super) fn faults(&self) -> String {
        self.events
            .iter()
            .filter(|(_, e)| !matches!(e, Event::Propose { .. }))
            .map(|(at, e)| format!("  {at:>5} ms {e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        let a = Plan::new(7);
        let b = Plan::new(7);
        assert_eq!(a.events, b.events);
        assert_eq!((a.nodes, a.max_latency_ms), (b.nodes, b.max_latency_ms));
        assert_ne!(Plan::new(8).events, a.events);
        assert!(a.events.iter().any(|(_, e)| matches!(e, Event::Crash(_))));
    }
}
