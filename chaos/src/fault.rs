//! Fault kinds and the seeded schedule: which fault comes next, how long it is held
//! and which node it picks are all drawn from the seed, so a drill replays with the
//! same `--seed` (the leader at injection time is whatever the cluster elected).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a follower, restart it after the hold.
    KillFollower,
    /// SIGKILL any node, restart it after the hold.
    KillRandom,
    /// SIGSTOP the leader, SIGCONT after the hold.
    PauseLeader,
    /// SIGSTOP a follower, SIGCONT after the hold.
    PauseFollower,
    /// Cut one random node off from all others (both directions).
    PartitionOne,
    /// Split into a minority holding the leader and a majority.
    PartitionSplit,
    /// One node stops receiving from every other node but can still send.
    OneWay,
    /// One node's cluster traffic (both directions) goes through a delay proxy.
    LatencyOne,
    /// One node's link is limited to 1 mbit/s by a tbf qdisc on its veth.
    SlowLink,
    /// 20 % of the packets between one node and its peers are dropped.
    LossyOne,
    /// Bytes flipped in shard files on one disk of one node, while it runs.
    CorruptShards,
    /// Shard files deleted on one disk of one node, while it runs.
    DeleteShards,
    /// One node's small disk filled up; freed at the heal.
    DiskFull,
    /// Every node in turn (followers first, the leader last) stopped with SIGTERM
    /// (SIGKILL after a bound), restarted, and waited for until it has caught up.
    RollingRestart,
}

pub const ALL: [FaultKind; 15] = [
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::KillRandom,
    FaultKind::PauseLeader,
    FaultKind::PauseFollower,
    FaultKind::PartitionOne,
    FaultKind::PartitionSplit,
    FaultKind::OneWay,
    FaultKind::LatencyOne,
    FaultKind::SlowLink,
    FaultKind::LossyOne,
    FaultKind::CorruptShards,
    FaultKind::DeleteShards,
    FaultKind::DiskFull,
    FaultKind::RollingRestart,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillRandom => "kill-random",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::PartitionOne => "partition-one",
            FaultKind::PartitionSplit => "partition-split",
            FaultKind::OneWay => "one-way",
            FaultKind::LatencyOne => "latency-one",
            FaultKind::SlowLink => "slow-link",
            FaultKind::LossyOne => "lossy-one",
            FaultKind::CorruptShards => "corrupt-shards",
            FaultKind::DeleteShards => "delete-shards",
            FaultKind::DiskFull => "disk-full",
            FaultKind::RollingRestart => "rolling-restart",
        }
    }

    /// Needs packet drops, NAT or qdiscs, hence network namespaces.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionOne
                | FaultKind::PartitionSplit
                | FaultKind::OneWay
                | FaultKind::LatencyOne
                | FaultKind::SlowLink
                | FaultKind::LossyOne
        )
    }
}

impl FaultKind {
    /// Acts on shard files, which exist only for blobs above the inline size.
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            FaultKind::CorruptShards | FaultKind::DeleteShards | FaultKind::DiskFull
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<FaultKind> {
        ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
            anyhow::anyhow!("unknown fault {s:?}; known: {}", names.join(", "))
        })
    }
}

/// Parses `--faults`: `all` or a comma-separated list.
pub fn parse_list(s: &str) -> Result<Vec<FaultKind>> {
    if s == "all" {
        return Ok(ALL.to_vec());
    }
    let kinds: Vec<FaultKind> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(FaultKind::from_str)
        .collect::<Result<_>>()?;
    if kinds.is_empty() {
        bail!("--faults names no fault");
    }
    Ok(kinds)
}

/// One scheduled fault: kind, how long it is held, and a random number that picks the
/// target among the candidates at injection time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub kind: FaultKind,
    pub hold_ms: u64,
    pub pick: u64,
}

impl Planned {
    /// The node among `candidates` (sorted) this fault hits.
    pub fn choose(&self, candidates: &[u64]) -> Option<u64> {
        if candidates.is_empty() {
            return None;
        }
        let i = usize::try_from(self.pick % candidates.len() as u64).unwrap_or(0);
        Some(candidates[i])
    }
}

/// The seeded sequence of faults. With `shuffle` the kinds are drawn at random from
/// the list, otherwise they come in list order, cycling.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    shuffle: bool,
    hold_ms: u64,
    n: usize,
}

impl Schedule {
    pub fn new(seed: u64, kinds: Vec<FaultKind>, shuffle: bool, hold_ms: u64) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            shuffle,
            hold_ms,
            n: 0,
        }
    }

    /// The next fault. Holds vary between 75 % and 125 % of the configured hold.
    pub fn next_fault(&mut self) -> Planned {
        let kind = if self.shuffle {
            self.kinds[self.rng.random_range(0..self.kinds.len())]
        } else {
            self.kinds[self.n % self.kinds.len()]
        };
        self.n += 1;
        let hold_ms = self
            .rng
            .random_range(self.hold_ms * 3 / 4..=self.hold_ms * 5 / 4);
        Planned {
            kind,
            hold_ms,
            pick: self.rng.random(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let plan = |seed| {
            let mut s = Schedule::new(seed, ALL.to_vec(), true, 10_000);
            (0..20).map(|_| s.next_fault()).collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
    }

    #[test]
    fn listed_faults_come_in_order() {
        let kinds = parse_list("kill-leader,pause-follower,partition-one").unwrap();
        let mut s = Schedule::new(1, kinds.clone(), false, 10_000);
        let got: Vec<FaultKind> = (0..4).map(|_| s.next_fault().kind).collect();
        assert_eq!(got, [kinds[0], kinds[1], kinds[2], kinds[0]]);
        assert!(parse_list("kill-everything").is_err());
    }
}
