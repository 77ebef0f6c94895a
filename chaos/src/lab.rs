//! A local cluster the drill starts itself: N real `berth serve` processes, each in its
//! own network namespace (see [`crate::netns`]) or, when namespaces cannot be created,
//! on loopback ports with a fault proxy ([`crate::proxy`]) in front of each node's
//! cluster listener (`--grpc-advertise` names the proxy, so every peer dials it). The
//! lab kills (SIGKILL), stops (SIGTERM), pauses (SIGSTOP), resumes (SIGCONT) and
//! restarts its own children by PID, reaches into their disk folders for disk faults,
//! and on teardown stops all of them and removes its network, proxies and mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::netns::Net;
use crate::proxy::{LinkView, Links, Proxy, ProxySpec, Rules};

/// Firewall mark of the delay proxies' upstream connections (NAT leaves them alone).
const PROXY_MARK: u32 = 0x6263;
/// Port of a node's inbound delay proxy; its outbound proxies use this plus the peer id.
const PROXY_PORT_BASE: u16 = 6100;

/// Data disks per node: three `--disk` folders give berth's local 2+1 profile, so a
/// corrupted or deleted shard file is rebuilt from parity.
pub const DISKS_PER_NODE: usize = 3;
/// Size of the tmpfs a node's last disk lives on when the drill may fill it
/// (`disk-full`); a ceiling, tmpfs takes memory only for what is written.
pub const TMPFS_DISK_BYTES: u64 = 4 << 30;
/// Room left on a disk the `disk-full` fault shrank: below berth's free-space reserve,
/// so the disk counts as full and takes no new shards.
const FULL_DISK_ROOM_BYTES: u64 = 1 << 20;

/// Where one node lives.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The node's cluster address as the membership lists it: `grpc` in namespaces,
    /// the fault proxy in front of it on loopback.
    pub cluster: SocketAddr,
    pub netns: Option<String>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl NodeSpec {
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The node's data disks (`--disk`), inside its data folder.
    pub fn disks(&self) -> Vec<PathBuf> {
        (0..DISKS_PER_NODE)
            .map(|i| self.data.join(format!("disk{i}")))
            .collect()
    }
}

struct Proc {
    child: Option<Child>,
}

/// The running nodes and their network.
pub struct Lab {
    pub specs: Vec<NodeSpec>,
    berth: PathBuf,
    members: String,
    procs: Mutex<Vec<Proc>>,
    net: Mutex<Option<Net>>,
    /// Delay proxies of a running latency fault.
    proxies: Mutex<Vec<Proxy>>,
    /// On loopback: the fault proxy in front of each node's cluster listener, and the
    /// link faults they apply.
    front: Mutex<Vec<Proxy>>,
    links: Arc<Links>,
    /// PID -> node id of the running nodes, to tell which node a connection is from.
    pids: Arc<Mutex<BTreeMap<u32, u64>>>,
    /// Why the tmpfs disks for disk-full could not be mounted, or that none were asked.
    small_disk_error: Option<String>,
    /// tmpfs mounts this lab made (unmounted on teardown).
    mounts: Mutex<Vec<PathBuf>>,
    /// Why the lab runs on loopback, when it does.
    pub loopback_reason: Option<String>,
    /// Blobs (digest folder names) whose shards a disk fault of this drill damaged.
    damaged: Mutex<BTreeSet<String>>,
}

impl Lab {
    /// Creates the network (namespaces unless `loopback`), starts every node and waits
    /// (bounded) until each answers `/readyz`.
    /// With `small_disks`, every node's last disk is a tmpfs of at most
    /// [`TMPFS_DISK_BYTES`], which the `disk-full` fault shrinks to what it holds.
    pub fn start(
        berth: &Path,
        nodes: u64,
        dir: &Path,
        loopback: bool,
        suffix: &str,
        small_disks: bool,
    ) -> Result<Lab> {
        anyhow::ensure!(berth.is_file(), "no berth binary at {}", berth.display());
        anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be 1..9");
        let ids: Vec<u64> = (1..=nodes).collect();
        // Data folders are per run, so two drills writing into one report folder never
        // share a node's data.
        let dir = &dir.join(format!("run-{suffix}"));
        std::fs::create_dir_all(dir)?;
        let third = u8::from_str_radix(&suffix[..2], 16).unwrap_or(7);
        let (net, loopback_reason) = if loopback {
            (None, Some("asked for with --network loopback".to_string()))
        } else {
            // Another drill may hold the subnet: try a few.
            let mut last = None;
            let mut net = None;
            for k in 0..5u8 {
                match Net::create(&ids, suffix, third.wrapping_add(k.wrapping_mul(37))) {
                    Ok(n) => {
                        net = Some(n);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (net, last) {
                (Some(n), _) => (Some(n), None),
                (None, e) => (
                    None,
                    Some(format!(
                        "network namespaces unavailable: {:#}",
                        e.expect("tried")
                    )),
                ),
            }
        };
        let specs = match &net {
            Some(net) => ids
                .iter()
                .map(|&id| {
                    let ip = net.addr(id);
                    spec(
                        id,
                        SocketAddr::from((ip, 5000)),
                        SocketAddr::from((ip, 6000)),
                        Some(net.namespace(id)),
                        dir,
                    )
                })
                .collect(),
            None => {
                let mut specs = Vec::new();
                for &id in &ids {
                    let mut s = spec(id, free_port()?, free_port()?, None, dir);
                    s.cluster = free_port()?;
                    specs.push(s);
                }
                specs
            }
        };
        let members = specs
            .iter()
            .map(|s| format!("{}={}", s.id, s.cluster))
            .collect::<Vec<_>>()
            .join(",");
        let lab = Lab {
            specs,
            berth: berth.to_path_buf(),
            members,
            procs: Mutex::new(Vec::new()),
            net: Mutex::new(net),
            proxies: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
            small_disk_error: (!small_disks)
                .then(|| "the lab was started without tmpfs disks".to_string()),
            front: Mutex::new(Vec::new()),
            links: Arc::new(Links::default()),
            pids: Arc::new(Mutex::new(BTreeMap::new())),
            loopback_reason,
            damaged: Mutex::new(BTreeSet::new()),
        };
        let mut lab = lab;
        if !lab.has_namespaces() {
            lab.start_front_proxies()?;
        }
        for s in &lab.specs {
            for d in s.disks() {
                std::fs::create_dir_all(&d)?;
            }
            if small_disks {
                let last = s.disks().pop().expect("disks");
                let size = format!("size={TMPFS_DISK_BYTES}");
                let mounted = crate::netns::run(&[
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    &size,
                    "tmpfs",
                    &last.to_string_lossy(),
                ]);
                match mounted {
                    Ok(()) => lab.mounts.lock().unwrap().push(last),
                    Err(e) => {
                        lab.small_disk_error = Some(format!("no tmpfs disk: {e:#}"));
                    }
                }
            }
        }
        for s in &lab.specs {
            let child = lab.spawn(s)?;
            lab.procs.lock().unwrap().push(Proc { child: Some(child) });
        }
        Ok(lab)
    }

    /// Whether the lab has network namespaces (else it runs on loopback).
    pub fn has_namespaces(&self) -> bool {
        self.net.lock().unwrap().is_some()
    }

    /// Why this lab cannot inject `kind`, if it cannot: on loopback the fault proxies
    /// cut and delay links, but packet loss and link limits need namespaces; a full
    /// disk needs the tmpfs disks, which need root.
    pub fn unsupported(&self, kind: crate::fault::FaultKind) -> Option<String> {
        use crate::fault::FaultKind;
        match kind {
            FaultKind::SlowLink | FaultKind::LossyOne if !self.has_namespaces() => Some(
                "it needs network namespaces (iptables/tc), which this run does not have".into(),
            ),
            FaultKind::DiskFull => self.small_disk_error.clone(),
            _ => None,
        }
    }

    pub fn supports(&self, kind: crate::fault::FaultKind) -> bool {
        self.unsupported(kind).is_none()
    }

    /// Loopback mode: a fault proxy in front of every node's cluster listener. The
    /// membership lists the proxies, so all cluster traffic passes them; each tells
    /// which node a connection comes from by the PID owning the client socket.
    fn start_front_proxies(&self) -> Result<()> {
        let pids = self.pids.clone();
        let resolve: crate::proxy::Resolver = Arc::new(move |peer| {
            let pids = pids.lock().unwrap().clone();
            node_of_client(peer, &pids)
        });
        let mut front = self.front.lock().unwrap();
        for s in &self.specs {
            front.push(Proxy::start(
                ProxySpec {
                    netns: None,
                    listen: s.cluster,
                    upstream: s.grpc,
                    mark: None,
                    link: Some(LinkView {
                        node: s.id,
                        links: self.links.clone(),
                        resolve: resolve.clone(),
                    }),
                },
                Arc::new(Rules::default()),
            )?);
        }
        Ok(())
    }

    fn spawn(&self, s: &NodeSpec) -> Result<Child> {
        let log = OpenOptions::new().create(true).append(true).open(&s.log)?;
        let mut cmd = match &s.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.berth);
                c
            }
            None => Command::new(&self.berth),
        };
        cmd.arg("serve")
            .args(["--node-id", &s.id.to_string()])
            .args(["--listen", &s.http.to_string()])
            .args(["--grpc-listen", &s.grpc.to_string()])
            .args(["--grpc-advertise", &s.cluster.to_string()])
            .args(["--initial-cluster", &self.members])
            .arg("--data")
            .arg(&s.data);
        for d in s.disks() {
            cmd.arg("--disk").arg(d);
        }
        cmd.args(["--log-format", "json"]);
        // The lab's own private network: plain HTTP, plain gRPC and open access are
        // allowed there on purpose (berth refuses them off loopback by default).
        if !s.http.ip().is_loopback() {
            cmd.arg("--allow-insecure-http").arg("--allow-open-access");
        }
        if !s.grpc.ip().is_loopback() {
            cmd.arg("--allow-insecure-cluster");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {} ({})", s.id, self.berth.display()))?;
        let mut pids = self.pids.lock().unwrap();
        pids.retain(|_, id| *id != s.id);
        pids.insert(child.id(), s.id);
        Ok(child)
    }

    fn index(&self, id: u64) -> Result<usize> {
        self.specs
            .iter()
            .position(|s| s.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// SIGKILL, and reap.
    pub fn kill(&self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let mut procs = self.procs.lock().unwrap();
        let p = &mut procs[i];
        if let Some(mut child) = p.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops node `id` the way an operator would: SIGTERM, then SIGKILL if it has not
    /// exited within `bound`. Returns whether it exited on its own.
    pub fn stop(&self, id: u64, bound: std::time::Duration) -> Result<bool> {
        self.signal(id, "-TERM")?;
        let i = self.index(id)?;
        let deadline = std::time::Instant::now() + bound;
        loop {
            let mut procs = self.procs.lock().unwrap();
            let Some(child) = procs[i].child.as_mut() else {
                return Ok(true);
            };
            if child.try_wait()?.is_some() {
                procs[i].child = None;
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                procs[i].child = None;
                return Ok(false);
            }
            drop(procs);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Starts a killed node again on the same data folder.
    pub fn restart(&self, id: u64) -> Result<()> {
        let i = self.index(id)?;
        let child = self.spawn(&self.specs[i])?;
        let mut procs = self.procs.lock().unwrap();
        if procs[i].child.is_some() {
            drop(procs);
            let mut child = child;
            child.kill()?;
            child.wait()?;
            bail!("node {id} is still running");
        }
        procs[i].child = Some(child);
        Ok(())
    }

    fn signal(&self, id: u64, sig: &str) -> Result<()> {
        let i = self.index(id)?;
        let procs = self.procs.lock().unwrap();
        let pid = procs[i]
            .child
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?
            .id();
        crate::netns::run(&["kill", sig, &pid.to_string()])
    }

    /// SIGSTOP.
    pub fn pause(&self, id: u64) -> Result<()> {
        self.signal(id, "-STOP")
    }

    /// SIGCONT.
    pub fn resume(&self, id: u64) -> Result<()> {
        self.signal(id, "-CONT")
    }

    /// Cuts `a` from `b` both ways.
    pub fn split(&self, a: &[u64], b: &[u64]) -> Result<()> {
        match self.net.lock().unwrap().as_ref() {
            Some(net) => net.split(a, b),
            None => {
                for &x in a {
                    for &y in b {
                        self.links.cut(x, y);
                        self.links.cut(y, x);
                    }
                }
                Ok(())
            }
        }
    }

    /// `to` stops receiving anything from every node in `from`.
    pub fn cut_inbound(&self, to: u64, from: &[u64]) -> Result<()> {
        match self.net.lock().unwrap().as_ref() {
            Some(net) => from.iter().try_for_each(|&f| net.drop_from(to, f)),
            None => {
                from.iter().for_each(|&f| self.links.cut(f, to));
                Ok(())
            }
        }
    }

    /// Adds `delay` to every byte node `id` sends to and receives from its peers on the
    /// cluster path: a proxy in its namespace for inbound cluster connections and one
    /// per peer for its outbound ones, with NAT rules steering the traffic through them.
    pub fn add_latency(&self, id: u64, delay: std::time::Duration) -> Result<()> {
        let net = self.net.lock().unwrap();
        let Some(net) = net.as_ref() else {
            self.links.delay(id, delay);
            return Ok(());
        };
        let spec = &self.specs[self.index(id)?];
        let ns = spec.netns.clone();
        let peers: Vec<&NodeSpec> = self.specs.iter().filter(|s| s.id != id).collect();
        let rules = std::sync::Arc::new(Rules::default());
        // Every message crosses exactly one of the node's proxies, so each proxy
        // delays both directions: a request and its answer each wait `delay`.
        rules.set_delay(delay, delay);
        let mut proxies = self.proxies.lock().unwrap();
        let at = |port: u16| SocketAddr::new(spec.grpc.ip(), port);
        proxies.push(Proxy::start(
            ProxySpec {
                netns: ns.clone(),
                listen: at(PROXY_PORT_BASE),
                upstream: spec.grpc,
                mark: Some(PROXY_MARK),
                link: None,
            },
            rules.clone(),
        )?);
        for p in &peers {
            proxies.push(Proxy::start(
                ProxySpec {
                    netns: ns.clone(),
                    listen: at(out_port(p.id)),
                    upstream: p.grpc,
                    mark: Some(PROXY_MARK),
                    link: None,
                },
                rules.clone(),
            )?);
        }
        let peer_ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        net.steer_cluster(
            id,
            &peer_ids,
            spec.grpc.port(),
            PROXY_PORT_BASE,
            out_port,
            PROXY_MARK,
        )
    }

    /// Limits node `id`'s link with a tbf qdisc on both ends of its veth.
    pub fn slow_link(&self, id: u64, tbf: &[&str]) -> Result<()> {
        match self.net.lock().unwrap().as_ref() {
            Some(net) => net.shape(id, tbf),
            None => bail!("link limits need network namespaces"),
        }
    }

    /// Drops packets between node `id` and its peers with probability `p`.
    pub fn lossy(&self, id: u64, p: f64) -> Result<()> {
        let peers: Vec<u64> = self
            .specs
            .iter()
            .map(|s| s.id)
            .filter(|&s| s != id)
            .collect();
        match self.net.lock().unwrap().as_ref() {
            Some(net) => net.lossy(id, &peers, p),
            None => bail!("packet loss needs network namespaces"),
        }
    }

    /// Removes every partition, loss, NAT and link-limit rule, then stops the delay
    /// proxies (their connections close; the nodes reconnect directly).
    pub fn heal_network(&self) -> Result<()> {
        let healed = match self.net.lock().unwrap().as_ref() {
            Some(net) => net.heal(),
            None => Ok(()),
        };
        let proxies: Vec<Proxy> = self.proxies.lock().unwrap().drain(..).collect();
        drop(proxies);
        self.links.heal();
        healed
    }

    /// Stops every node (SIGKILL, which also ends a paused one) and removes the
    /// network. Idempotent.
    pub fn teardown(&self) {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut() {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        drop(procs);
        let proxies: Vec<Proxy> = self.proxies.lock().unwrap().drain(..).collect();
        drop(proxies);
        let front: Vec<Proxy> = self.front.lock().unwrap().drain(..).collect();
        drop(front);
        for m in self.mounts.lock().unwrap().drain(..) {
            if let Err(e) = crate::netns::run(&["umount", &m.to_string_lossy()]) {
                eprintln!("berth-chaos: teardown: {e:#}");
            }
        }
        if let Some(mut net) = self.net.lock().unwrap().take() {
            net.teardown();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn spec(
    id: u64,
    http: SocketAddr,
    grpc: SocketAddr,
    netns: Option<String>,
    dir: &Path,
) -> NodeSpec {
    NodeSpec {
        id,
        http,
        grpc,
        cluster: grpc,
        netns,
        data: dir.join(format!("node-{id}")),
        log: dir.join(format!("node-{id}.log")),
    }
}

/// Up to `count` of `files` (shard files, sorted), drawn by `rng`, at most one per blob
/// (the digest folder holding it) and none of a blob in `damaged`; the blobs picked are
/// added to `damaged`.
fn pick_undamaged(
    mut files: Vec<PathBuf>,
    damaged: &mut BTreeSet<String>,
    count: usize,
    rng: &mut StdRng,
) -> Vec<PathBuf> {
    let blob = |f: &PathBuf| {
        f.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files.retain(|f| !damaged.contains(&blob(f)));
    let mut picked = Vec::new();
    while picked.len() < count && !files.is_empty() {
        let f = files.swap_remove(rng.random_range(0..files.len()));
        // Another shard of the same blob on this disk stays untouched as well.
        if damaged.insert(blob(&f)) {
            picked.push(f);
        }
    }
    picked
}

/// Disk faults: the runner reaches into a node's disk folders while the node runs.
impl Lab {
    /// Flips bytes in up to `count` shard files on one disk of node `id` (the disk and
    /// the files drawn from `seed`), while the node runs. Returns the files changed.
    pub fn corrupt_shards(&self, id: u64, count: usize, seed: u64) -> Result<Vec<PathBuf>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let files = self.pick_shards(id, count, &mut rng)?;
        for f in &files {
            let mut bytes = std::fs::read(f)?;
            if bytes.is_empty() {
                continue;
            }
            // A few bytes anywhere: header, chunk data or checksums.
            for _ in 0..16 {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 0x5a;
            }
            // Written in place, as a failing disk would.
            std::fs::write(f, &bytes)?;
        }
        Ok(files)
    }

    /// Deletes up to `count` shard files on one disk of node `id`.
    pub fn delete_shards(&self, id: u64, count: usize, seed: u64) -> Result<Vec<PathBuf>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let files = self.pick_shards(id, count, &mut rng)?;
        for f in &files {
            std::fs::remove_file(f)?;
        }
        Ok(files)
    }

    /// Shard files (`blobs/<alg>/<xx>/<hex>/<upload>.<shard>`) on one disk of `id`, of
    /// blobs no earlier disk fault of this drill damaged. Nothing in a drill reads every
    /// blob or waits for the scrubber (weekly by default), so damage from several faults
    /// could pile up unseen on more than `m` shards of one stripe: a loss the drill
    /// would have made, not the cluster. Each blob takes at most one damaged shard.
    fn pick_shards(&self, id: u64, count: usize, rng: &mut StdRng) -> Result<Vec<PathBuf>> {
        let spec = &self.specs[self.index(id)?];
        let disks = spec.disks();
        let disk = &disks[rng.random_range(0..disks.len())];
        let mut files = Vec::new();
        let mut stack = vec![disk.join("blobs")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                } else if is_shard_name(&e.file_name().to_string_lossy()) {
                    files.push(p);
                }
            }
        }
        files.sort();
        let mut damaged = self.damaged.lock().expect("damaged lock poisoned");
        Ok(pick_undamaged(files, &mut damaged, count, rng))
    }

    /// Makes node `id`'s tmpfs disk full while it runs: remounts it with a size just
    /// above what it holds. Returns the bytes it holds.
    pub fn fill_disk(&self, id: u64) -> Result<u64> {
        let disk = self.tmpfs_disk(id)?;
        let mut last = None;
        // berth may write between the measurement and the remount; a few tries.
        for _ in 0..5 {
            let used = used_bytes(&disk)?;
            match remount(&disk, used + FULL_DISK_ROOM_BYTES) {
                Ok(()) => return Ok(used),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// Gives node `id`'s tmpfs disk its full size back.
    pub fn free_disk(&self, id: u64) -> Result<()> {
        remount(&self.tmpfs_disk(id)?, TMPFS_DISK_BYTES)
    }

    fn tmpfs_disk(&self, id: u64) -> Result<PathBuf> {
        let spec = &self.specs[self.index(id)?];
        let disk = spec.disks().pop().expect("disks");
        anyhow::ensure!(
            self.mounts.lock().unwrap().contains(&disk),
            "node {id} has no tmpfs disk"
        );
        Ok(disk)
    }
}

fn used_bytes(path: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}", path.display()))
}

fn remount(path: &Path, bytes: u64) -> Result<()> {
    let opts = format!("remount,size={bytes}");
    crate::netns::run(&["mount", "-o", &opts, &path.to_string_lossy()])
}

/// `<upload>.<shard index>`, the name of a shard file.
fn is_shard_name(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(u, n)| {
        !u.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The node whose process owns the client end of a loopback connection from `peer`:
/// the socket's inode from `/proc/net/tcp`, then the node PID holding that inode.
fn node_of_client(peer: SocketAddr, pids: &BTreeMap<u32, u64>) -> Option<u64> {
    let port = format!(":{:04X}", peer.port());
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1].ends_with(&port)).then(|| f[9].to_string())
    })?;
    let want = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, id)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want))
            .then_some(*id)
    })
}

fn out_port(peer: u64) -> u16 {
    PROXY_PORT_BASE + u16::try_from(peer).unwrap_or(99).min(99)
}

/// A loopback port below the ephemeral range that is free right now.
fn free_port() -> Result<SocketAddr> {
    for _ in 0..100 {
        let port = rand::random_range(20_000u16..30_000);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free loopback port found")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback proxies tell nodes apart by the PID owning the client socket.
    #[test]
    fn a_loopback_client_is_traced_to_the_process_that_owns_its_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, peer) = l.accept().unwrap();
        let me = std::process::id();
        assert_eq!(node_of_client(peer, &BTreeMap::from([(me, 7)])), Some(7));
        // Another process (init) does not own it.
        assert_eq!(node_of_client(peer, &BTreeMap::from([(1, 7)])), None);
        drop(client);
    }

    #[test]
    fn a_blob_is_damaged_by_one_disk_fault_at_most() {
        let files = |blobs: &[&str]| -> Vec<PathBuf> {
            blobs
                .iter()
                .flat_map(|b| {
                    (0..2).map(move |i| PathBuf::from(format!("blobs/sha256/ab/{b}/u.{i}")))
                })
                .collect()
        };
        let mut damaged = BTreeSet::new();
        let mut rng = StdRng::seed_from_u64(3);
        let first = pick_undamaged(files(&["a", "b", "c"]), &mut damaged, 10, &mut rng);
        // One shard of each blob, though each had two files on the disk.
        assert_eq!(first.len(), 3);
        assert_eq!(damaged.len(), 3);
        // A later fault (another node's disk) finds only blobs not damaged before.
        let second = pick_undamaged(files(&["b", "c", "d"]), &mut damaged, 10, &mut rng);
        assert_eq!(second.len(), 1);
        assert!(second[0].to_string_lossy().contains("/d/"), "{second:?}");
        assert!(pick_undamaged(files(&["a", "d"]), &mut damaged, 10, &mut rng).is_empty());
    }

    #[test]
    fn only_shard_files_are_picked_for_damage() {
        assert!(is_shard_name("0190c3f1-upload.0"));
        assert!(is_shard_name("u.12"));
        for other in ["disk.json", ".1", "u.", "u.x1", "chaos-filler"] {
            assert!(!is_shard_name(other), "{other}");
        }
    }
}
