//! A local cluster the drill starts itself: N real `berth serve` processes, each in its
//! own network namespace (see [`crate::netns`]) or, when namespaces cannot be created,
//! on loopback ports. The lab kills (SIGKILL), pauses (SIGSTOP), resumes (SIGCONT) and
//! restarts its own children by PID, and stops all of them on teardown.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use crate::netns::Net;
use crate::proxy::{Proxy, ProxySpec, Rules};

/// Firewall mark of the delay proxies' upstream connections (NAT leaves them alone).
const PROXY_MARK: u32 = 0x6263;
/// Port of a node's inbound delay proxy; its outbound proxies use this plus the peer id.
const PROXY_PORT_BASE: u16 = 6100;

/// Where one node lives.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub netns: Option<String>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl NodeSpec {
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
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
    /// Why the lab runs on loopback, when it does.
    pub loopback_reason: Option<String>,
}

impl Lab {
    /// Creates the network (namespaces unless `loopback`), starts every node and waits
    /// (bounded) until each answers `/readyz`.
    pub fn start(
        berth: &Path,
        nodes: u64,
        dir: &Path,
        loopback: bool,
        suffix: &str,
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
            (None, Some("asked for with --loopback".to_string()))
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
                    specs.push(spec(id, free_port()?, free_port()?, None, dir));
                }
                specs
            }
        };
        let members = specs
            .iter()
            .map(|s| format!("{}={}", s.id, s.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let lab = Lab {
            specs,
            berth: berth.to_path_buf(),
            members,
            procs: Mutex::new(Vec::new()),
            net: Mutex::new(net),
            proxies: Mutex::new(Vec::new()),
            loopback_reason,
        };
        for s in &lab.specs {
            let child = lab.spawn(s)?;
            lab.procs.lock().unwrap().push(Proc { child: Some(child) });
        }
        Ok(lab)
    }

    /// Partitions work only with namespaces.
    pub fn has_namespaces(&self) -> bool {
        self.net.lock().unwrap().is_some()
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
            .args(["--initial-cluster", &self.members])
            .arg("--data")
            .arg(&s.data)
            .args(["--log-format", "json"]);
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
        cmd.spawn()
            .with_context(|| format!("starting node {} ({})", s.id, self.berth.display()))
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
            None => bail!("partitions need network namespaces"),
        }
    }

    /// `to` stops receiving anything from every node in `from`.
    pub fn cut_inbound(&self, to: u64, from: &[u64]) -> Result<()> {
        match self.net.lock().unwrap().as_ref() {
            Some(net) => from.iter().try_for_each(|&f| net.drop_from(to, f)),
            None => bail!("partitions need network namespaces"),
        }
    }

    /// Adds `delay` to every byte node `id` sends to and receives from its peers on the
    /// cluster path: a proxy in its namespace for inbound cluster connections and one
    /// per peer for its outbound ones, with NAT rules steering the traffic through them.
    pub fn add_latency(&self, id: u64, delay: std::time::Duration) -> Result<()> {
        let net = self.net.lock().unwrap();
        let Some(net) = net.as_ref() else {
            bail!("latency needs network namespaces");
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
        netns,
        data: dir.join(format!("node-{id}")),
        log: dir.join(format!("node-{id}.log")),
    }
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
