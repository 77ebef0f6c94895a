//! Drives one seeded run: real berth nodes (openraft, the redb stores, the tonic
//! transport) as turmoil hosts, the plan's proposals and faults, then healing, a clean
//! stop, and the checkers over what was observed and what is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_types::{NodeId, UploadId};
use tokio::sync::mpsc;
use tonic::transport::Server;

use super::history::{Ack, NodeFinal, Observation};
use super::plan::{Event, FAULT_MS, Plan, Target};
use super::{committed_entries, election_safety, log_matching, net};
use crate::cluster::{ClusterInit, RaftTuning};
use crate::handle::{Metadata, RaftStatus};
use crate::model::Command;
use crate::tests::repo;

/// One simulation step.
const TICK: Duration = Duration::from_millis(1);
/// After healing, the cluster must converge within this much simulated time.
const HEAL_MS_MAX: u64 = 30_000;
/// Converged means: unchanged and complete for this long.
const STABLE_MS: u64 = 200;
/// A clean stop of every node must finish within this much simulated time.
const STOP_MS_MAX: u64 = 10_000;
/// The Raft port of every simulated node.
const PORT: u16 = 7000;

fn host(id: u64) -> String {
    format!("n{id}")
}

/// Raft timing of the simulated cluster: short, so a run covers many elections. With
/// `compaction`, a snapshot every 20 entries keeping 5 behind it, so a node that was
/// down or cut off catches up through a streamed snapshot; without, no compaction at
/// all, so the checkers see every entry ever committed.
fn tuning(compaction: bool) -> RaftTuning {
    RaftTuning {
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(300),
        snapshot_every_entries: if compaction { 20 } else { 1_000_000 },
        logs_kept_after_snapshot: 5,
        ..RaftTuning::default()
    }
}

/// What every incarnation of a node needs to start.
struct ClusterSpec {
    members: BTreeMap<NodeId, String>,
    dirs: BTreeMap<u64, PathBuf>,
    tuning: RaftTuning,
}

enum Request {
    Propose(Box<Command>),
    Stop,
}

/// A node whose software is running.
struct Live {
    meta: Metadata,
    incarnation: u32,
    requests: mpsc::UnboundedSender<Request>,
}

/// State shared between the driver and the simulated hosts.
#[derive(Default)]
struct Shared {
    now_ms: AtomicU64,
    starts: Mutex<BTreeMap<u64, u32>>,
    live: Mutex<BTreeMap<u64, Live>>,
    stopped: Mutex<BTreeSet<u64>>,
    acks: Mutex<Vec<Ack>>,
    failed: AtomicU64,
    in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("no simulation code panics while holding a lock")
}

/// Counts a proposal in flight until it is dropped, also when its host crashes.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn propose(shared: Arc<Shared>, meta: Metadata, via: u64, cmd: Command) {
    let _counted = InFlight::enter(&shared);
    match meta.propose(cmd.clone()).await {
        Ok(_) => lock(&shared.acks).push(Ack {
            at_ms: shared.now_ms.load(Ordering::SeqCst),
            via,
            cmd,
        }),
        Err(_) => {
            shared.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The software of one simulated node: berth's metadata member behind a tonic server on
/// the simulated network, plus a request loop the driver uses to propose and stop.
async fn node(shared: Arc<Shared>, spec: Arc<ClusterSpec>, id: u64) -> turmoil::Result {
    let incarnation = {
        let mut starts = lock(&shared.starts);
        let n = starts.entry(id).or_insert(0);
        *n += 1;
        *n - 1
    };
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let (meta, service) = Metadata::open_cluster_with(
        &spec.dirs[&id],
        NodeId(id),
        format!("{}:{PORT}", host(id)),
        ClusterInit::Bootstrap(spec.members.clone()),
        &spec.tuning,
        net::dialer(),
    )
    .await?;
    let (requests, mut inbox) = mpsc::unbounded_channel();
    lock(&shared.live).insert(
        id,
        Live {
            meta: meta.clone(),
            incarnation,
            requests,
        },
    );
    let serve = Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming(net::incoming(listener));
    let work = async {
        while let Some(request) = inbox.recv().await {
            match request {
                Request::Propose(cmd) => {
                    tokio::task::spawn_local(propose(shared.clone(), meta.clone(), id, *cmd));
                }
                Request::Stop => break,
            }
        }
        meta.shutdown().await
    };
    tokio::select! {
        served = serve => served?,
        stopped = work => stopped?,
    }
    lock(&shared.stopped).insert(id);
    Ok(())
}

/// What a passing run did, for the test's log.
pub(super) struct Summary {
    pub nodes: u64,
    pub sim_ms: u64,
    pub proposed: u64,
    pub acked: usize,
    pub failed: u64,
    pub crashes: u64,
    pub elections: usize,
    pub log_len: usize,
    /// Nodes whose log was compacted behind a snapshot.
    pub compacted: usize,
}

struct Driver<'a> {
    sim: turmoil::Sim<'a>,
    shared: Arc<Shared>,
    nodes: u64,
    crashed: BTreeSet<u64>,
    held: BTreeSet<(u64, u64)>,
    observations: Vec<Observation>,
    last_seen: BTreeMap<u64, (u32, u64, bool)>,
    elapsed_ms: u64,
    proposed: u64,
    crashes: u64,
}

impl Driver<'_> {
    fn statuses(&self) -> BTreeMap<u64, (u32, RaftStatus)> {
        lock(&self.shared.live)
            .iter()
            .map(|(id, live)| (*id, (live.incarnation, live.meta.status())))
            .collect()
    }

    /// Advances the simulation one tick and records every node whose role changed.
    fn step(&mut self) -> Result<(), String> {
        self.sim
            .step()
            .map_err(|e| format!("a node's software failed: {e}"))?;
        self.elapsed_ms += TICK.as_millis() as u64;
        self.shared.now_ms.store(self.elapsed_ms, Ordering::SeqCst);
        for (node, (incarnation, status)) in self.statuses() {
            let seen = (incarnation, status.term, status.is_leader);
            if self.last_seen.insert(node, seen) != Some(seen) {
                self.observations.push(Observation {
                    at_ms: self.elapsed_ms,
                    node,
                    incarnation,
                    term: status.term,
                    is_leader: status.is_leader,
                });
            }
        }
        Ok(())
    }

    fn pairs(&self) -> Vec<(u64, u64)> {
        let ids = 1..=self.nodes;
        ids.clone()
            .flat_map(|a| ids.clone().map(move |b| (a, b)))
            .filter(|(a, b)| a != b)
            .collect()
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Propose { via } => {
                self.proposed += 1;
                let n = u128::from(self.proposed);
                let cmd = Command::CreateUpload {
                    id: UploadId::new(NodeId(via), n),
                    repo: repo(&format!("sim/r{}", n % 4)),
                    at_ms: self.proposed,
                };
                if let Some(live) = lock(&self.shared.live).get(&via) {
                    live.requests.send(Request::Propose(Box::new(cmd))).ok();
                }
            }
            Event::Partition(a, b) => self.sim.partition(host(a), host(b)),
            Event::PartitionOneWay { from, to } => self.sim.partition_oneway(host(from), host(to)),
            Event::Isolate(a) => {
                for b in (1..=self.nodes).filter(|b| *b != a) {
                    self.sim.partition(host(a), host(b));
                }
            }
            Event::Hold(a, b) => {
                if self.held.insert((a.min(b), a.max(b))) {
                    self.sim.hold(host(a), host(b));
                }
            }
            Event::Release(a, b) => {
                if self.held.remove(&(a.min(b), a.max(b))) {
                    self.sim.release(host(a), host(b));
                }
            }
            Event::Heal => self.heal(),
            Event::Crash(target) => {
                let node = match target {
                    Target::Node(n) => Some(n),
                    Target::Leader => self
                        .statuses()
                        .into_iter()
                        .find(|(_, (_, s))| s.is_leader)
                        .map(|(n, _)| n),
                };
                // Keep a majority of the software running; partitions may still cut it.
                let crashable = (self.nodes - 1) / 2;
                if let Some(node) = node
                    && !self.crashed.contains(&node)
                    && (self.crashed.len() as u64) < crashable
                {
                    // The driver's handle must go first: a restart reopens the redb
                    // file, which only works once every handle to it is dropped.
                    lock(&self.shared.live).remove(&node);
                    self.sim.crash(host(node));
                    self.crashed.insert(node);
                    self.crashes += 1;
                }
            }
            Event::RestartCrashed => {
                for node in std::mem::take(&mut self.crashed) {
                    self.sim.bounce(host(node));
                }
            }
        }
    }

    fn heal(&mut self) {
        for (a, b) in self.pairs() {
            self.sim.repair(host(a), host(b));
        }
        for (a, b) in std::mem::take(&mut self.held) {
            self.sim.release(host(a), host(b));
        }
    }

    /// Every node runs, agrees on one leader and applied the leader's whole log, and no
    /// proposal is pending.
    fn converged(&self) -> bool {
        if self.shared.in_flight.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let statuses = self.statuses();
        if statuses.len() as u64 != self.nodes {
            return false;
        }
        let Some((_, leader)) = statuses.values().find(|(_, s)| s.is_leader) else {
            return false;
        };
        leader.committed == leader.last_log_index
            && statuses
                .values()
                .all(|(_, s)| s.leader == leader.leader && s.last_applied == leader.last_log_index)
    }

    /// Steps until `done` held for `stable_ms` in a row, or fails after `max_ms`.
    fn step_until(
        &mut self,
        what: &str,
        max_ms: u64,
        stable_ms: u64,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        let mut held_for = 0;
        for _ in 0..max_ms {
            self.step()?;
            held_for = if done(self) { held_for + 1 } else { 0 };
            if held_for >= stable_ms {
                return Ok(());
            }
        }
        Err(format!(
            "{what} did not happen within {max_ms} simulated ms; statuses: {:#?}",
            self.statuses()
        ))
    }
}

fn scratch() -> tempfile::TempDir {
    // tmpfs when there is one: the runs fsync a lot, and the simulation is about
    // ordering and loss of messages and processes, not about the speed of a disk.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("berth-sim").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Runs seed `seed` and checks every invariant; `Err` says which one failed and how.
pub(super) fn run(seed: u64) -> Result<Summary, String> {
    let plan = Plan::new(seed);
    let scratch = scratch();
    let spec = Arc::new(ClusterSpec {
        members: (1..=plan.nodes)
            .map(|id| (NodeId(id), format!("{}:{PORT}", host(id))))
            .collect(),
        dirs: (1..=plan.nodes)
            .map(|id| (id, scratch.path().join(host(id))))
            .collect(),
        tuning: tuning(plan.compaction),
    });
    let shared = Arc::new(Shared::default());
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(3_600))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(plan.max_latency_ms))
        .rng_seed(seed)
        .build();
    for id in 1..=plan.nodes {
        let (shared, spec) = (shared.clone(), spec.clone());
        sim.host(host(id), move || node(shared.clone(), spec.clone(), id));
    }
    let mut driver = Driver {
        sim,
        shared: shared.clone(),
        nodes: plan.nodes,
        crashed: BTreeSet::new(),
        held: BTreeSet::new(),
        observations: Vec::new(),
        last_seen: BTreeMap::new(),
        elapsed_ms: 0,
        proposed: 0,
        crashes: 0,
    };

    let mut events = plan.events.iter().peekable();
    for ms in 0..FAULT_MS {
        while let Some((_, event)) = events.next_if(|(at, _)| *at <= ms) {
            driver.apply(*event);
        }
        driver.step()?;
    }
    driver.heal();
    driver.apply(Event::RestartCrashed);
    driver.step_until(
        "convergence after healing",
        HEAL_MS_MAX,
        STABLE_MS,
        Driver::converged,
    )?;

    for live in std::mem::take(&mut *lock(&shared.live)).into_values() {
        live.requests.send(Request::Stop).ok();
    }
    let nodes = plan.nodes;
    driver.step_until("a clean stop of every node", STOP_MS_MAX, 1, |d| {
        lock(&d.shared.stopped).len() as u64 == nodes
    })?;
    let Driver {
        sim,
        observations,
        elapsed_ms,
        proposed,
        crashes,
        ..
    } = driver;
    // Drops every host's runtime and with it the last handles to the redb files.
    drop(sim);

    let finals = (1..=plan.nodes)
        .map(|id| NodeFinal::read(id, &spec.dirs[&id]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading a node's store after the run: {e}"))?;
    let acks = std::mem::take(&mut *lock(&shared.acks));
    election_safety::check(&observations).map_err(|e| format!("election safety: {e}"))?;
    log_matching::check(&finals).map_err(|e| format!("log matching: {e}"))?;
    committed_entries::check(&acks, &finals)
        .map_err(|e| format!("committed entries never lost: {e}"))?;
    Ok(Summary {
        nodes: plan.nodes,
        sim_ms: elapsed_ms,
        proposed,
        acked: acks.len(),
        failed: shared.failed.load(Ordering::SeqCst),
        crashes,
        elections: observations
            .iter()
            .filter(|o| o.is_leader)
            .map(|o| (o.term, o.node, o.incarnation))
            .collect::<BTreeSet<_>>()
            .len(),
        log_len: finals[0].log.len(),
        compacted: finals.iter().filter(|f| f.last_purged.is_some()).count(),
    })
}
