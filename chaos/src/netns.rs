//! Network namespaces for a local drill: one namespace per node, each joined by a veth
//! pair to a bridge in the host namespace, addresses in a private 10.x/24 chosen per
//! run. Partitions and one-way cuts are iptables DROP rules inside the nodes'
//! namespaces, so they are real packet drops; packet loss is the same with a
//! `statistic` match; bandwidth limits are a tbf qdisc on a node's veth; latency is
//! NAT rules steering a node's cluster connections through delay proxies
//! ([`crate::proxy`]). The runner itself talks to every node through the bridge, which
//! drop and loss rules never touch. Every name carries a per-run
//! suffix; everything created is removed by [`Net::teardown`] (also on drop).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs a command, failing with its stderr.
pub fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces, veths and bridge of one run.
pub struct Net {
    suffix: String,
    /// First three octets of the run's /24.
    subnet: [u8; 3],
    nodes: Vec<u64>,
    bridge: Option<String>,
    namespaces: Vec<String>,
    host_veths: Vec<String>,
    down: bool,
}

impl Net {
    /// Creates the bridge and one namespace per node. On failure, removes whatever it
    /// had created and returns the error.
    pub fn create(nodes: &[u64], suffix: &str, third_octet: u8) -> Result<Net> {
        let mut net = Net {
            suffix: suffix.to_string(),
            subnet: [10, 213, third_octet],
            nodes: nodes.to_vec(),
            bridge: None,
            namespaces: Vec::new(),
            host_veths: Vec::new(),
            down: false,
        };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e);
        }
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let routes = Command::new("ip").args(["-4", "route"]).output()?;
        let prefix = format!("{}.{}.{}.", self.subnet[0], self.subnet[1], self.subnet[2]);
        if String::from_utf8_lossy(&routes.stdout).contains(&prefix) {
            bail!("subnet {prefix}0/24 is already routed here");
        }
        let bridge = format!("bc{}", self.suffix);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        self.bridge = Some(bridge.clone());
        let host = format!("{}/24", self.host_addr());
        run(&["ip", "addr", "add", &host, "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for &id in &self.nodes.clone() {
            let ns = self.namespace(id);
            run(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let (host_veth, peer) = self.veths(id);
            run(&[
                "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", &peer,
            ])?;
            self.host_veths.push(host_veth.clone());
            run(&["ip", "link", "set", &host_veth, "master", &bridge])?;
            run(&["ip", "link", "set", &host_veth, "up"])?;
            run(&["ip", "link", "set", &peer, "netns", &ns])?;
            let addr = format!("{}/24", self.addr(id));
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &peer,
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &peer, "up"])?;
            // Probe that iptables works in the namespace before relying on it.
            run(&["ip", "netns", "exec", &ns, "iptables", "-S", "INPUT"])?;
        }
        Ok(())
    }

    /// The namespace of node `id`.
    pub fn namespace(&self, id: u64) -> String {
        format!("berth-chaos-{}-{id}", self.suffix)
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> Ipv4Addr {
        let last = u8::try_from(id).unwrap_or(250).min(250);
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], last)
    }

    /// The bridge's address in the host namespace, from which the runner connects.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 254)
    }

    /// Drops every packet `to` receives from `from` (one direction).
    pub fn drop_from(&self, to: u64, from: u64) -> Result<()> {
        let ns = self.namespace(to);
        let src = self.addr(from).to_string();
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &src, "-j", "DROP",
        ])
    }

    /// Cuts every link between the two groups, both directions.
    pub fn split(&self, a: &[u64], b: &[u64]) -> Result<()> {
        for &x in a {
            for &y in b {
                self.drop_from(x, y)?;
                self.drop_from(y, x)?;
            }
        }
        Ok(())
    }

    /// Drops each packet between `id` and every node in `peers`, both directions, with
    /// probability `p` (iptables `statistic` match; the runner's traffic is untouched).
    pub fn lossy(&self, id: u64, peers: &[u64], p: f64) -> Result<()> {
        let ns = self.namespace(id);
        let prob = format!("{p:.3}");
        for &peer in peers {
            let addr = self.addr(peer).to_string();
            for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "iptables",
                    "-A",
                    chain,
                    dir,
                    &addr,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &prob,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Limits node `id`'s link (both ends of its veth, so both directions) with a
    /// token-bucket filter, e.g. `rate 1mbit burst 32kbit latency 400ms`.
    pub fn shape(&self, id: u64, tbf: &[&str]) -> Result<()> {
        let (host, peer) = self.veths(id);
        let mut args = vec!["tc", "qdisc", "add", "dev", &host, "root", "tbf"];
        args.extend_from_slice(tbf);
        run(&args)?;
        let ns = self.namespace(id);
        let mut args = vec![
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &peer, "root", "tbf",
        ];
        args.extend_from_slice(tbf);
        run(&args)
    }

    /// Steers node `id`'s cluster traffic through proxies in its namespace: connections
    /// to its cluster port go to `in_port`, and its own connections to each peer's
    /// cluster port go to `out_port(peer)`; packets carrying `mark` (the proxies'
    /// upstream connections) are left alone. Then every established cluster connection
    /// of the node is destroyed (`ss -K`), so the peers reconnect through the proxies.
    pub fn steer_cluster(
        &self,
        id: u64,
        peers: &[u64],
        cluster_port: u16,
        in_port: u16,
        out_port: impl Fn(u64) -> u16,
        mark: u32,
    ) -> Result<()> {
        let ns = self.namespace(id);
        let me = self.addr(id).to_string();
        let port = cluster_port.to_string();
        let mark = format!("0x{mark:x}");
        let to_in = format!("{me}:{in_port}");
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-d",
            &me,
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to_in,
        ])?;
        for &peer in peers {
            let addr = self.addr(peer).to_string();
            let to_out = format!("{me}:{}", out_port(peer));
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &addr,
                "--dport",
                &port,
                "-m",
                "mark",
                "!",
                "--mark",
                &mark,
                "-j",
                "DNAT",
                "--to-destination",
                &to_out,
            ])?;
        }
        let filter = format!("( sport = :{cluster_port} or dport = :{cluster_port} )");
        run(&["ip", "netns", "exec", &ns, "ss", "-K", "-t", &filter])
    }

    /// Node `id`'s veth ends: (host side on the bridge, side inside its namespace).
    fn veths(&self, id: u64) -> (String, String) {
        (
            format!("vc{}{id}", self.suffix),
            format!("vp{}{id}", self.suffix),
        )
    }

    /// Removes every drop, loss and NAT rule and every link limit.
    pub fn heal(&self) -> Result<()> {
        for (&id, ns) in self.nodes.iter().zip(&self.namespaces) {
            for chain in ["INPUT", "OUTPUT"] {
                run(&["ip", "netns", "exec", ns, "iptables", "-F", chain])?;
            }
            run(&["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-F"])?;
            // Only present after a slow-link fault; "no such qdisc" is fine.
            let (host, peer) = self.veths(id);
            let _ = run(&["tc", "qdisc", "del", "dev", &host, "root"]);
            let _ = run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", &peer, "root",
            ]);
        }
        Ok(())
    }

    /// Deletes the namespaces (which takes their veth ends and rules with them), the
    /// host veths and the bridge. Idempotent; errors are reported, not fatal.
    pub fn teardown(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        for ns in self.namespaces.drain(..) {
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("berth-chaos: teardown: {e:#}");
            }
        }
        for veth in self.host_veths.drain(..) {
            // Usually gone with its peer's namespace.
            let _ = run(&["ip", "link", "del", &veth]);
        }
        if let Some(bridge) = self.bridge.take()
            && let Err(e) = run(&["ip", "link", "del", &bridge])
        {
            eprintln!("berth-chaos: teardown: {e:#}");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
