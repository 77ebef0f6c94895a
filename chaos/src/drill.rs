//! One drill: wait for a leader, start the workload, inject faults on the seeded
//! schedule (hold, heal, wait until the cluster has converged), stop the workload,
//! wait for final convergence, read everything acknowledged back through every node,
//! and hand the history to the checkers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::Client;
use serde::Deserialize;

use crate::check::convergence::NodeState;
use crate::fault::{FaultKind, Planned, Schedule};
use crate::history::{Event, FaultRecord, Op, Phase, Recorder};
use crate::lab::Lab;
use crate::topology::{Topology, run_shell};
use crate::workload::{Endpoint, TAGS_REPO, Workload};

/// What the drill runs against.
pub enum Driver<'a> {
    /// Nodes this process started.
    Local(&'a Lab),
    /// A deployed cluster and its fault commands.
    Deployed(&'a Topology),
}

/// Drill settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub duration: Duration,
    pub workers: u32,
    pub faults: Vec<FaultKind>,
    pub shuffle: bool,
    pub hold: Duration,
    pub gap: Duration,
    pub warmup: Duration,
    pub max_ops: u64,
    pub hot_tags: usize,
    pub max_blob: usize,
    /// One layer blob in this many is large (erasure-coded); 0 for none.
    pub large_blob_every: u32,
    /// Delay a latency fault adds to each direction of a node's cluster traffic.
    pub latency: Duration,
}

/// Probability that a lossy link drops a packet.
pub const LOSS_PROBABILITY: f64 = 0.2;
/// How long a rolling restart waits for a node to exit after SIGTERM before SIGKILL.
pub const STOP_BOUND: Duration = Duration::from_secs(20);
/// Time a rolling restart is expected to take per node, to fit it into the drill.
const ROLL_PER_NODE_MS: u64 = 12_000;
/// Shard files a corrupt-shards or delete-shards fault damages.
pub const SHARD_FILES_PER_FAULT: usize = 20;
/// The slow-link fault's token-bucket filter.
pub const SLOW_LINK_TBF: [&str; 6] = ["rate", "1mbit", "burst", "32kbit", "latency", "400ms"];

/// Everything a drill produced.
pub struct Outcome {
    pub events: Vec<Event>,
    pub faults: Vec<FaultRecord>,
    pub states: Vec<NodeState>,
    pub nodes: Vec<u64>,
    pub end_ms: u64,
    pub notes: Vec<String>,
}

/// Bound on waiting for a leader or for convergence.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on waiting for repair to empty every node's backlog after a heal.
const REDUNDANCY_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);
/// Read-back requests in flight.
const VERIFY_CONCURRENCY: usize = 16;
/// Read-back attempts per item and node while the answer is a 5xx or a timeout.
const VERIFY_TRIES: u32 = 3;
/// Bound on the whole read-back.
const VERIFY_TIME_MAX: Duration = Duration::from_secs(20 * 60);
/// Faults per drill, whatever the duration.
const FAULTS_MAX: usize = 500;

#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
    /// The applied index and state digest, read together (absent while the node's
    /// state cannot be read).
    #[serde(default)]
    pub state: Option<AppliedState>,
    /// Every member as this node sees it, each with its own report when it answered.
    #[serde(default)]
    pub members: Vec<MemberJson>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberJson {
    pub id: u64,
    #[serde(default)]
    pub report: Option<ReportJson>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportJson {
    pub repair: RepairJson,
}

/// A node's repair counters: shards it knows need a rebuild.
#[derive(Debug, Clone, Deserialize)]
pub struct RepairJson {
    pub backlog_shards: u64,
}

impl Status {
    /// The repair backlog of the whole cluster, summed over every member's own report
    /// in this node's status; `None` while a member's report is missing.
    fn cluster_backlog(&self) -> Option<u64> {
        self.members
            .iter()
            .map(|m| m.report.as_ref().map(|r| r.repair.backlog_shards))
            .sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AppliedState {
    pub applied: Option<u64>,
    pub digest: String,
}

pub async fn status(client: &Client, node: &Endpoint) -> Result<Status> {
    let resp = client
        .get(format!("{}/api/v1/cluster/status", node.url))
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let body = resp.bytes().await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The node that claims leadership with the highest term, if any answers.
async fn leader(client: &Client, nodes: &[Endpoint]) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for n in nodes {
        if let Ok(s) = status(client, n).await
            && s.is_leader
            && best.is_none_or(|(t, _)| s.term > t)
        {
            best = Some((s.term, n.id));
        }
    }
    best.map(|(_, id)| id)
}

async fn wait_leader(client: &Client, nodes: &[Endpoint]) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Some(l) = leader(client, nodes).await {
            return Ok(l);
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("no leader within {CONVERGE_TIMEOUT:?}")
}

/// Waits until every node answers, all agree on one leader, and every node has applied
/// at least what the leader had committed one poll earlier. Bounded.
async fn wait_caught_up(client: &Client, nodes: &[Endpoint]) -> bool {
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    let mut prev_commit: Option<u64> = None;
    while tokio::time::Instant::now() < deadline {
        let mut all = Vec::new();
        for n in nodes {
            match status(client, n).await {
                Ok(s) => all.push(s),
                Err(_) => break,
            }
        }
        if all.len() == nodes.len() {
            let leaders: Vec<Option<u64>> = all.iter().map(|s| s.leader).collect();
            let agreed = leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]);
            let leader_commit = all.iter().find(|s| s.is_leader).and_then(|s| s.committed);
            if agreed {
                if let Some(c) = prev_commit
                    && all.iter().all(|s| s.last_applied.unwrap_or(0) >= c)
                {
                    return true;
                }
                prev_commit = leader_commit.or(prev_commit);
            }
        } else {
            prev_commit = None;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// Waits (bounded) until every member reports an empty repair backlog (one node's
/// status carries every member's report): every shard the cluster knows to be missing
/// or damaged has been rebuilt. Returns whether it got there and the largest backlog
/// (summed over the members) it saw. Damage nothing has read yet is not known; the
/// scrubber finds it on its schedule.
async fn wait_redundant(client: &Client, nodes: &[Endpoint]) -> (bool, u64) {
    let deadline = tokio::time::Instant::now() + REDUNDANCY_TIMEOUT;
    let mut peak = 0;
    while tokio::time::Instant::now() < deadline {
        // One status carries every member's report: the first node that answers.
        let mut total = None;
        for n in nodes {
            if let Ok(s) = status(client, n).await {
                total = s.cluster_backlog();
                break;
            }
        }
        if let Some(t) = total {
            peak = peak.max(t);
            if t == 0 {
                return (true, peak);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    (false, peak)
}

/// What an injected fault needs to be healed.
enum Heal {
    /// Damage that stays (corrupted or deleted shards): berth must read around it.
    Nothing,
    FreeDisk(u64),
    Restart(u64),
    Resume(u64),
    Network,
    Command(String),
}

/// Injects a planned fault on the local lab. Returns the record (without times) and
/// how to heal it, or a note when the fault could not be applied.
async fn inject_local(
    lab: &Lab,
    rec: &Recorder,
    client: &Client,
    nodes: &[Endpoint],
    p: &Planned,
    s: &Settings,
) -> Result<Option<(FaultRecord, Heal)>> {
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let Some(leader) = leader(client, nodes).await else {
        return Ok(None);
    };
    let followers: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    // The injection instant is taken right before the action, the in-place instant
    // right after it (all signals sent, every iptables rule installed).
    let timed = |action: &dyn Fn() -> Result<()>| -> Result<(u64, u64)> {
        let at = rec.now_ms();
        action()?;
        Ok((at, rec.now_ms()))
    };
    let record = |(at, placed): (u64, u64), targets: Vec<u64>, minority: Vec<u64>, note: String| {
        FaultRecord {
            kind: p.kind.name().into(),
            targets,
            minority,
            inject_ms: at,
            in_place_ms: placed,
            heal_ms: None,
            converged_ms: None,
            redundant_ms: None,
            backlog_peak: None,
            note,
        }
    };
    let out = match p.kind {
        FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillRandom => {
            let target = match p.kind {
                FaultKind::KillLeader => Some(leader),
                FaultKind::KillFollower => p.choose(&followers),
                _ => p.choose(&ids),
            };
            let Some(t) = target else { return Ok(None) };
            let times = timed(&|| lab.kill(t))?;
            let role = if t == leader { "leader" } else { "follower" };
            (
                record(times, vec![t], vec![], format!("SIGKILL node {t} ({role})")),
                Heal::Restart(t),
            )
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            let target = if p.kind == FaultKind::PauseLeader {
                Some(leader)
            } else {
                p.choose(&followers)
            };
            let Some(t) = target else { return Ok(None) };
            let times = timed(&|| lab.pause(t))?;
            let role = if t == leader { "leader" } else { "follower" };
            (
                record(times, vec![t], vec![], format!("SIGSTOP node {t} ({role})")),
                Heal::Resume(t),
            )
        }
        FaultKind::PartitionOne => {
            let Some(t) = p.choose(&ids) else {
                return Ok(None);
            };
            let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != t).collect();
            let times = timed(&|| lab.split(&[t], &rest))?;
            let role = if t == leader { "leader" } else { "follower" };
            (
                record(
                    times,
                    vec![t],
                    vec![t],
                    format!("node {t} ({role}) cut off from {rest:?}"),
                ),
                Heal::Network,
            )
        }
        FaultKind::PartitionSplit => {
            // The minority holds the leader, so the majority must elect a new one.
            let size = (ids.len() - 1) / 2;
            let mut minority = vec![leader];
            let mut others = followers.clone();
            let mut rng = StdRng::seed_from_u64(p.pick);
            while minority.len() < size.max(1) && !others.is_empty() {
                let i = rand::Rng::random_range(&mut rng, 0..others.len());
                minority.push(others.swap_remove(i));
            }
            minority.sort_unstable();
            let majority: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|i| !minority.contains(i))
                .collect();
            let times = timed(&|| lab.split(&minority, &majority))?;
            (
                record(
                    times,
                    minority.clone(),
                    minority.clone(),
                    format!(
                        "minority {minority:?} (with leader {leader}) vs majority {majority:?}"
                    ),
                ),
                Heal::Network,
            )
        }
        FaultKind::OneWay => {
            let Some(t) = p.choose(&ids) else {
                return Ok(None);
            };
            let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != t).collect();
            let times = timed(&|| lab.cut_inbound(t, &rest))?;
            let role = if t == leader { "leader" } else { "follower" };
            (
                record(
                    times,
                    vec![t],
                    vec![t],
                    format!("node {t} ({role}) hears nothing from {rest:?} but can send"),
                ),
                Heal::Network,
            )
        }
        FaultKind::LatencyOne | FaultKind::SlowLink | FaultKind::LossyOne => {
            let Some(t) = p.choose(&ids) else {
                return Ok(None);
            };
            let role = if t == leader { "leader" } else { "follower" };
            let (times, what) = match p.kind {
                FaultKind::LatencyOne => (
                    timed(&|| lab.add_latency(t, s.latency))?,
                    format!(
                        "node {t} ({role}): cluster traffic delayed {} ms each way",
                        s.latency.as_millis()
                    ),
                ),
                FaultKind::SlowLink => (
                    timed(&|| lab.slow_link(t, &SLOW_LINK_TBF))?,
                    format!(
                        "node {t} ({role}): link limited by tbf {}",
                        SLOW_LINK_TBF.join(" ")
                    ),
                ),
                _ => (
                    timed(&|| lab.lossy(t, LOSS_PROBABILITY))?,
                    format!(
                        "node {t} ({role}): {:.0} % of packets to and from peers dropped",
                        LOSS_PROBABILITY * 100.0
                    ),
                ),
            };
            // Degraded, not cut off: the node may still acknowledge writes.
            (record(times, vec![t], vec![], what), Heal::Network)
        }
        FaultKind::CorruptShards | FaultKind::DeleteShards => {
            let Some(t) = p.choose(&ids) else {
                return Ok(None);
            };
            let at = rec.now_ms();
            let files = if p.kind == FaultKind::CorruptShards {
                lab.corrupt_shards(t, SHARD_FILES_PER_FAULT, p.pick)?
            } else {
                lab.delete_shards(t, SHARD_FILES_PER_FAULT, p.pick)?
            };
            let placed = rec.now_ms();
            let verb = if p.kind == FaultKind::CorruptShards {
                "corrupted"
            } else {
                "deleted"
            };
            let disk = files
                .first()
                .and_then(|f| {
                    f.ancestors().find(|a| {
                        a.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("disk"))
                    })
                })
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "(no shard files yet)".into());
            (
                record(
                    (at, placed),
                    vec![t],
                    vec![],
                    format!("node {t}: {} shard files {verb} on {disk}", files.len()),
                ),
                Heal::Nothing,
            )
        }
        FaultKind::RollingRestart => {
            let mut order = followers.clone();
            order.push(leader);
            let at = rec.now_ms();
            let mut placed = None;
            let mut steps = Vec::new();
            for &id in &order {
                let t0 = rec.now_ms();
                // Waiting for the exit blocks; keep it off the runtime's other tasks.
                let graceful = tokio::task::block_in_place(|| lab.stop(id, STOP_BOUND))?;
                placed.get_or_insert(rec.now_ms());
                let stopped = rec.now_ms();
                lab.restart(id)?;
                let caught_up = wait_caught_up(client, nodes).await;
                steps.push(format!(
                    "node {id}{} stopped in {:.1} s{}, {} {:.1} s after restart",
                    if id == leader { " (leader)" } else { "" },
                    (stopped - t0) as f64 / 1000.0,
                    if graceful {
                        ""
                    } else {
                        " (SIGKILL after the bound)"
                    },
                    if caught_up {
                        "caught up"
                    } else {
                        "NOT caught up"
                    },
                    (rec.now_ms() - stopped) as f64 / 1000.0,
                ));
                if !caught_up {
                    break;
                }
            }
            (
                record(
                    (at, placed.unwrap_or(at)),
                    order.clone(),
                    vec![],
                    steps.join("; "),
                ),
                Heal::Nothing,
            )
        }
        FaultKind::DiskFull => {
            let Some(t) = p.choose(&ids) else {
                return Ok(None);
            };
            let at = rec.now_ms();
            let bytes = lab.fill_disk(t)?;
            let placed = rec.now_ms();
            (
                record(
                    (at, placed),
                    vec![t],
                    vec![],
                    format!(
                        "node {t}: disk {} full (tmpfs shrunk to the {} MiB it holds)",
                        tmpfs_disk_name(),
                        bytes >> 20
                    ),
                ),
                Heal::FreeDisk(t),
            )
        }
    };
    Ok(Some(out))
}

/// The disk a disk-full fault fills: each node's last `--disk`.
fn tmpfs_disk_name() -> String {
    format!("disk{}", crate::lab::DISKS_PER_NODE - 1)
}

fn heal_local(lab: &Lab, heal: &Heal) -> Result<()> {
    match heal {
        Heal::Nothing => Ok(()),
        Heal::FreeDisk(id) => lab.free_disk(*id),
        Heal::Restart(id) => lab.restart(*id),
        Heal::Resume(id) => lab.resume(*id),
        Heal::Network => lab.heal_network(),
        Heal::Command(cmd) => run_shell(cmd),
    }
}

pub fn endpoints(driver: &Driver<'_>) -> Vec<Endpoint> {
    match driver {
        Driver::Local(lab) => lab
            .specs
            .iter()
            .map(|s| Endpoint {
                id: s.id,
                url: s.url(),
            })
            .collect(),
        Driver::Deployed(t) => t
            .nodes
            .iter()
            .map(|n| Endpoint {
                id: n.id,
                url: n.url.trim_end_matches('/').to_string(),
            })
            .collect(),
    }
}

pub async fn run(driver: Driver<'_>, s: &Settings) -> Result<Outcome> {
    let nodes = endpoints(&driver);
    let client = crate::workload::client()?;
    let mut notes = Vec::new();
    let first_leader = wait_leader(&client, &nodes).await?;
    notes.push(format!("initial leader: node {first_leader}"));
    let rec = Arc::new(Recorder::new(s.max_ops));
    let work = Arc::new(Workload::new(
        nodes.clone(),
        rec.clone(),
        s.hot_tags,
        s.max_blob,
        s.large_blob_every,
    )?);
    work.setup(&mut StdRng::seed_from_u64(s.seed)).await?;

    let deadline_ms = rec.now_ms() + u64::try_from(s.duration.as_millis())?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..s.workers)
        .map(|w| tokio::spawn(work.clone().worker(w, s.seed, deadline_ms, stop.clone())))
        .collect();

    let mut faults = Vec::new();
    let mut schedule = Schedule::new(s.seed, s.faults.clone(), s.shuffle, ms(s.hold));
    let mut topo_next = 0usize;
    let mut probes = Vec::new();
    tokio::time::sleep(s.warmup).await;
    for _ in 0..FAULTS_MAX {
        let (planned, hold_ms) = match &driver {
            Driver::Local(_) => {
                let p = schedule.next_fault();
                let h = if p.kind == FaultKind::RollingRestart {
                    ROLL_PER_NODE_MS * nodes.len() as u64
                } else {
                    p.hold_ms
                };
                (Some(p), h)
            }
            Driver::Deployed(t) => match t.faults.get(topo_next % t.faults.len().max(1)) {
                Some(f) => (None, f.hold_secs * 1000),
                None => break,
            },
        };
        // Leave room for the hold, the heal and a look at the healed cluster.
        if rec.now_ms() + hold_ms + ms(s.gap) + 10_000 > deadline_ms {
            break;
        }
        // Probes start with the injection (a rolling restart happens inside it) and
        // end with the heal.
        let probe_stop = Arc::new(AtomicBool::new(false));
        let probe_task = probe(&work, &nodes, hold_ms * 2, probe_stop.clone());
        let injected = match (&driver, &planned) {
            (Driver::Local(lab), Some(p)) => {
                if let Some(why) = lab.unsupported(p.kind) {
                    notes.push(format!("skipped {}: {why}", p.kind));
                    continue;
                }
                inject_local(lab, &rec, &client, &nodes, p, s).await?
            }
            (Driver::Deployed(t), _) => {
                let f = &t.faults[topo_next % t.faults.len()];
                topo_next += 1;
                let at = rec.now_ms();
                run_shell(&f.inject).with_context(|| format!("injecting {:?}", f.name))?;
                let placed = rec.now_ms();
                Some((
                    FaultRecord {
                        kind: f.name.clone(),
                        targets: f.targets.clone(),
                        minority: f.minority.clone(),
                        inject_ms: at,
                        in_place_ms: placed,
                        heal_ms: None,
                        converged_ms: None,
                        redundant_ms: None,
                        backlog_peak: None,
                        note: f.inject.clone(),
                    },
                    Heal::Command(f.heal.clone()),
                ))
            }
            _ => None,
        };
        let Some((mut record, heal)) = injected else {
            probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            probes.push(probe_task);
            notes.push("a fault was skipped: no leader to aim at".into());
            tokio::time::sleep(s.gap).await;
            continue;
        };
        eprintln!(
            "berth-chaos: {} ms: {} ({})",
            record.inject_ms, record.kind, record.note
        );
        let rolled = planned
            .as_ref()
            .is_some_and(|p| p.kind == FaultKind::RollingRestart);
        if !rolled {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        match &driver {
            Driver::Local(lab) => heal_local(lab, &heal)?,
            Driver::Deployed(_) => heal_local_command(&heal)?,
        }
        record.heal_ms = Some(rec.now_ms());
        probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        probes.push(probe_task);
        if wait_caught_up(&client, &nodes).await {
            record.converged_ms = Some(rec.now_ms());
            let (redundant, peak) = wait_redundant(&client, &nodes).await;
            record.backlog_peak = Some(peak);
            if redundant {
                record.redundant_ms = Some(rec.now_ms());
            } else {
                notes.push(format!(
                    "{}: the repair backlog was not empty within {REDUNDANCY_TIMEOUT:?} \
                     after converging",
                    record.kind
                ));
            }
        } else {
            notes.push(format!(
                "{} did not converge within {CONVERGE_TIMEOUT:?} after healing",
                record.kind
            ));
        }
        eprintln!(
            "berth-chaos: healed at {:?} ms, converged at {:?} ms, fully redundant at {:?} ms",
            record.heal_ms, record.converged_ms, record.redundant_ms
        );
        faults.push(record);
        tokio::time::sleep(s.gap).await;
    }

    if faults.is_empty() {
        notes.push(
            "NO FAULT WAS INJECTED: none fitted into --duration after the warm-up (a fault \
             needs its hold, the gap and 10 s to look at the healed cluster; a rolling \
             restart reserves 12 s per node)"
                .into(),
        );
    }
    // Workers stop at the deadline; a request in flight ends within its timeout.
    let stop_at = tokio::time::Instant::now()
        + Duration::from_millis(deadline_ms.saturating_sub(rec.now_ms()))
        + crate::workload::REQUEST_TIMEOUT * 4;
    for w in workers {
        let left = stop_at.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, w).await.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            notes.push("a worker overran its deadline and was abandoned".into());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Every probe is recorded before the history is read (each request is bounded).
    for p in probes {
        let _ = p.await;
    }
    let end_ms = rec.now_ms();

    if !wait_caught_up(&client, &nodes).await {
        notes.push("the cluster did not converge after the drill".into());
    }
    let states = final_states(&client, &work, &nodes).await;
    if let Some(note) = verify(&work, &rec, &nodes).await {
        notes.push(note);
    }
    notes.push(reconstructions(&client, &nodes).await);
    Ok(Outcome {
        events: rec.events(),
        faults,
        states,
        nodes: nodes.iter().map(|n| n.id).collect(),
        end_ms,
        notes,
    })
}

/// While a fault holds, sends a write to every node every half second (until `stop`,
/// bounded by `max_ms`; the task ends when every probe has been answered and recorded). The
/// workers are closed loops, so while their requests wait out a dead leader they
/// invoke nothing new; these open-loop probes make the first acknowledged write after
/// the injection (the recovery time) and the writes a cut-off node refuses visible
/// whatever the workers are stuck on.
fn probe(
    work: &Arc<Workload>,
    nodes: &[Endpoint],
    max_ms: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let work = work.clone();
    let targets = nodes.to_vec();
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for seq in 0..max_ms / PROBE_INTERVAL_MS {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for n in &targets {
                let (work, n) = (work.clone(), n.clone());
                tasks.spawn(async move {
                    work.probe_write(&n, seq).await;
                });
            }
            tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
        }
        while tasks.join_next().await.is_some() {}
    })
}

const PROBE_INTERVAL_MS: u64 = 500;

fn heal_local_command(heal: &Heal) -> Result<()> {
    match heal {
        Heal::Command(cmd) => run_shell(cmd),
        _ => bail!("a deployed cluster heals only with commands"),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Applied index, state digest and tag map of every node, once all applied indices
/// (Raft's and the one read with the digest) agree (bounded).
async fn final_states(client: &Client, work: &Workload, nodes: &[Endpoint]) -> Vec<NodeState> {
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    let mut states = Vec::new();
    while tokio::time::Instant::now() < deadline {
        states.clear();
        for n in nodes {
            let (applied, leader, state, error) = match status(client, n).await {
                Ok(st) => (st.last_applied, st.leader, st.state, None),
                Err(e) => (None, None, None, Some(format!("{e:#}"))),
            };
            states.push(NodeState {
                node: n.id,
                last_applied: applied,
                leader,
                tags: BTreeMap::new(),
                state_applied: state.as_ref().and_then(|s| s.applied),
                state_digest: state.map(|s| s.digest),
                error,
            });
        }
        let first = states[0].last_applied;
        if first.is_some()
            && states
                .iter()
                .all(|s| s.last_applied == first && s.state_applied == first && s.error.is_none())
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    for (state, n) in states.iter_mut().zip(nodes) {
        for tag in work.hot_tag_names() {
            let out = work
                .read_tag(u32::MAX, Phase::Verify, n, TAGS_REPO, &tag)
                .await;
            let value = match (out.status, out.body_digest) {
                (Some(200), Some(d)) => d,
                (status, _) => format!("status {status:?} {}", out.error.unwrap_or_default()),
            };
            state.tags.insert(format!("{TAGS_REPO}:{tag}"), value);
        }
    }
    states
}

/// The `berth_shard_reconstructions` counter of every node, in words: how often a
/// read rebuilt a missing or corrupt shard from parity, in the workload's reads and
/// the read-back (which reads every acknowledged blob through every node). A node
/// restarted during the drill counts only since its restart.
async fn reconstructions(client: &Client, nodes: &[Endpoint]) -> String {
    let mut parts = Vec::new();
    for n in nodes {
        let got = async {
            let body = client
                .get(format!("{}/metrics", n.url))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.lines()
                .find_map(|l| l.strip_prefix("berth_shard_reconstructions "))
                .map(|v| v.trim().to_string())
        }
        .await;
        parts.push(format!("node {}: {}", n.id, got.as_deref().unwrap_or("?")));
    }
    format!(
        "shard reconstructions from parity, workload and read-back (berth_shard_reconstructions since each node's last start): {}",
        parts.join(", ")
    )
}

/// Reads every acknowledged push and every acknowledged delete back through every
/// node. A 503, 5xx or timeout is retried a few times; a refused connection is not
/// (the node is down, and the durability checker says so). The whole read-back is
/// bounded by `VERIFY_TIME_MAX`; whatever was not read by then is reported as never
/// read back.
async fn verify(work: &Workload, rec: &Recorder, nodes: &[Endpoint]) -> Option<String> {
    let mut items: Vec<(String, String, bool)> = Vec::new();
    for e in rec
        .events()
        .iter()
        .filter(|e| e.phase == Phase::Workload && e.outcome.ok())
    {
        match &e.op {
            Op::PushBlob { repo, digest } => items.push((repo.clone(), digest.clone(), true)),
            Op::PushManifest { repo, digest, .. }
            | Op::MoveTag { repo, digest, .. }
            | Op::DeleteManifest { repo, digest } => {
                items.push((repo.clone(), digest.clone(), false))
            }
            _ => {}
        }
    }
    items.sort();
    items.dedup();
    let jobs = items
        .iter()
        .flat_map(|item| nodes.iter().map(move |n| (item, n)));
    let all = futures::stream::iter(jobs)
        .map(|((repo, digest, blob), node)| async move {
            for _ in 0..VERIFY_TRIES {
                let out = work
                    .pull(u32::MAX, Phase::Verify, node, repo, digest, *blob)
                    .await;
                let definite = out.ok()
                    || out.status.is_some_and(|s| s < 500)
                    || out.error.as_deref() == Some("connection failed");
                if definite {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .collect::<Vec<()>>();
    match tokio::time::timeout(VERIFY_TIME_MAX, all).await {
        Ok(_) => None,
        Err(_) => Some(format!(
            "the read-back stopped after {VERIFY_TIME_MAX:?}; items not read count as never read back"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_backlog_needs_every_members_report() {
        let status = |members: serde_json::Value| -> Status {
            serde_json::from_value(serde_json::json!({
                "leader": 1, "is_leader": true, "term": 3, "committed": 9,
                "last_applied": 9, "members": members
            }))
            .unwrap()
        };
        let report = |n: u64| serde_json::json!({ "repair": { "backlog_shards": n } });
        let all = status(serde_json::json!([
            { "id": 1, "report": report(2) },
            { "id": 2, "report": report(0) },
            { "id": 3, "report": report(5) },
        ]));
        assert_eq!(all.cluster_backlog(), Some(7));
        let one_silent = status(serde_json::json!([
            { "id": 1, "report": report(0) },
            { "id": 2, "report": null, "unreachable": "timed out" },
        ]));
        assert_eq!(one_silent.cluster_backlog(), None);
    }
}
