//! A deployed cluster described in TOML: the nodes' URLs and, per fault, the shell
//! command that injects it and the one that heals it. The drill then drives those
//! commands instead of starting nodes.
//!
//! ```toml
//! [[node]]
//! id = 1
//! url = "http://10.0.0.1:5000"
//!
//! [[fault]]
//! name = "kill node 2"
//! inject = "ssh node2 systemctl kill -s KILL berth"
//! heal = "ssh node2 systemctl start berth"
//! hold_secs = 20
//! # Nodes cut off from the majority while the fault holds (checked: they must not
//! # acknowledge writes).
//! minority = []
//! ```

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TopoNode {
    pub id: u64,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TopoFault {
    pub name: String,
    pub inject: String,
    pub heal: String,
    #[serde(default = "default_hold")]
    pub hold_secs: u64,
    #[serde(default)]
    pub minority: Vec<u64>,
    /// Nodes the fault hits, for the report.
    #[serde(default)]
    pub targets: Vec<u64>,
}

fn default_hold() -> u64 {
    15
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Topology {
    #[serde(rename = "node")]
    pub nodes: Vec<TopoNode>,
    #[serde(rename = "fault", default)]
    pub faults: Vec<TopoFault>,
}

/// Longest a topology command may run.
pub const COMMAND_TIMEOUT_SECS: u64 = 60;

impl Topology {
    pub fn load(path: &Path) -> Result<Topology> {
        ensure!(
            path.is_file(),
            "topology file {} does not exist",
            path.display()
        );
        let t: Topology = Figment::from(Toml::file(path))
            .extract()
            .with_context(|| format!("reading topology {}", path.display()))?;
        t.validate()?;
        Ok(t)
    }

    pub fn parse(text: &str) -> Result<Topology> {
        let t: Topology = Figment::from(Toml::string(text))
            .extract()
            .context("reading topology")?;
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.nodes.is_empty(), "the topology lists no node");
        for n in &self.nodes {
            ensure!(
                n.url.starts_with("http://") || n.url.starts_with("https://"),
                "node {} url {:?} is not http(s)",
                n.id,
                n.url
            );
        }
        for f in &self.faults {
            for id in f.minority.iter().chain(&f.targets) {
                ensure!(
                    self.nodes.iter().any(|n| n.id == *id),
                    "fault {:?} names node {id}, which the topology does not list",
                    f.name
                );
            }
            ensure!(f.hold_secs > 0, "fault {:?} has hold_secs 0", f.name);
        }
        Ok(())
    }
}

/// Runs a topology command with `sh -c`, bounded by `timeout`.
pub fn run_shell(cmd: &str) -> Result<()> {
    let status = Command::new("timeout")
        .arg(COMMAND_TIMEOUT_SECS.to_string())
        .args(["sh", "-c", cmd])
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_parses_and_bad_ones_are_refused() {
        let t = Topology::parse(
            r#"
[[node]]
id = 1
url = "http://10.0.0.1:5000"
[[node]]
id = 2
url = "http://10.0.0.2:5000"
[[fault]]
name = "isolate 2"
inject = "ssh n2 iptables -A INPUT -j DROP"
heal = "ssh n2 iptables -F INPUT"
minority = [2]
"#,
        )
        .unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.faults[0].hold_secs, 15);
        assert_eq!(t.faults[0].minority, [2]);
        assert!(Topology::parse("[[node]]\nid = 1\nurl = \"ftp://x\"\n").is_err());
        assert!(
            Topology::parse(
                "[[node]]\nid = 1\nurl = \"http://x\"\n[[fault]]\nname=\"a\"\ninject=\"true\"\nheal=\"true\"\nminority=[9]\n"
            )
            .is_err()
        );
    }
}
