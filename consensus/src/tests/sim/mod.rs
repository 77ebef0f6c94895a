//! Deterministic simulation of the consensus layer with turmoil. Each simulated host
//! runs a real berth metadata member: openraft, the Raft log and state machine in its
//! own redb file, and the tonic gRPC transport (replication, votes and forwarding),
//! dialing and accepting over turmoil's simulated TCP instead of the kernel's. A seed
//! fixes the schedule ([`plan`]): proposals on random nodes, two-way and one-way
//! partitions, isolated nodes, held-back links, and crashes (also of the leader)
//! followed by restarts on the same redb file; in half the seeds the log is compacted
//! every few entries, so nodes also catch up through streamed snapshots. After the faults heal the cluster must
//! converge; the nodes stop cleanly and their files are read back.
//!
//! One invariant per file: [`election_safety`], [`log_matching`] and
//! [`committed_entries`] (nothing acknowledged is lost; the state machines agree).
//!
//! Seeds: `BERTH_SIM_SEEDS=N` runs seeds 1..=N (default [`CI_SEEDS`]);
//! `BERTH_SIM_SEED=S` runs seed S alone, `BERTH_SIM_REPEAT=N` times (default once). A
//! failing seed panics with the command that replays it. The plan of a seed, turmoil's
//! network and every timer are reproduced exactly; openraft draws its election
//! timeouts from an unseeded thread RNG and redb runs on tokio's blocking pool, so a
//! replay re-runs the same faults and workload but the interleaving inside them may
//! differ.

mod committed_entries;
mod election_safety;
mod history;
mod log_matching;
mod net;
mod plan;
mod run;

use std::time::Instant;

/// Seeds a plain `cargo test` runs.
const CI_SEEDS: u64 = 16;

fn seeds() -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
    };
    match (var("BERTH_SIM_SEED"), var("BERTH_SIM_SEEDS")) {
        (Some(seed), _) => vec![seed; var("BERTH_SIM_REPEAT").unwrap_or(1) as usize],
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => (1..=CI_SEEDS).collect(),
    }
}

fn replay(seed: u64) -> String {
    format!(
        "BERTH_SIM_SEED={seed} cargo test -p berth-consensus --lib tests::sim -- --nocapture \
         (add BERTH_SIM_REPEAT=20 to run it 20 times: the faults replay exactly, Raft's \
         interleaving may not)"
    )
}

#[test]
fn seeded_faults_never_break_election_safety_or_lose_committed_entries() {
    for seed in seeds() {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| run::run(seed));
        let failure = match outcome {
            Ok(Ok(summary)) => {
                let run::Summary {
                    nodes,
                    sim_ms,
                    proposed,
                    acked,
                    failed,
                    crashes,
                    elections,
                    log_len,
                    compacted,
                } = summary;
                eprintln!(
                    "sim seed {seed}: passed in {:.1} s: {nodes} nodes, {sim_ms} simulated ms, \
                     {crashes} crashes, {elections} leaderships, {proposed} proposals \
                     ({acked} acknowledged, {failed} failed), {log_len} log entries kept, \
                     {compacted} nodes compacted their log",
                    started.elapsed().as_secs_f64()
                );
                continue;
            }
            Ok(Err(violation)) => violation,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the run panicked".to_owned()),
        };
        panic!(
            "sim seed {seed} failed: {failure}\nfaults of this seed:\n{}\nreplay: {}",
            plan::Plan::new(seed).faults(),
            replay(seed)
        );
    }
}

/// Values for the checkers' own tests.
#[cfg(test)]
mod test_support {
    use openraft::RaftTypeConfig;
    use openraft::vote::RaftLeaderIdExt;

    use super::history::{Ack, NodeFinal, upload_of};
    use crate::model::Command;
    use crate::tests::{repo, upload};
    use crate::type_config::{Entry, LogId, TypeConfig};

    pub(super) fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, node),
            index,
        )
    }

    pub(super) fn ack(n: u128) -> Ack {
        Ack {
            at_ms: n as u64,
            via: 1,
            cmd: Command::CreateUpload {
                id: upload(n),
                repo: repo("sim/r"),
                at_ms: n as u64,
            },
        }
    }

    /// A node that applied all of `log` and holds the uploads of `applied`.
    pub(super) fn final_state(node: u64, log: Vec<Entry>, applied: &[&Ack]) -> NodeFinal {
        let uploads: Vec<_> = applied.iter().filter_map(|a| upload_of(&a.cmd)).collect();
        NodeFinal {
            node,
            last_applied: log.last().map(|e| e.log_id),
            last_purged: None,
            log: log.into_iter().map(|e| (e.log_id.index, e)).collect(),
            state_digest: [uploads.len() as u8; 32],
            uploads,
        }
    }
}
