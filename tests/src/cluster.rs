//! Clusters of real `berth` processes for multi-process tests, started and stopped
//! with `deploy/local/cluster.sh` on free loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::oci::Oci;
use crate::server::berth_binary;
use crate::sha256_digest;

/// `deploy/local/cluster.sh` of this checkout.
pub fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cluster.sh")
}

/// HTTP and gRPC port bases whose ports 1..=nodes+1 are all free right now.
fn port_bases(nodes: u16) -> Result<(u16, u16)> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..50 {
        // Both ranges stay below the kernel's ephemeral ports (32768 and up), so a
        // client socket elsewhere cannot take a port between this check and the bind.
        let http = rand::random_range(10_000u16..20_000);
        let grpc = http + 10_000;
        // One spare id for a node that joins later.
        if (1..=nodes + 1).all(|i| free(http + i) && free(grpc + i)) {
            return Ok((http, grpc));
        }
    }
    bail!("no free port ranges found")
}

/// How long a blob pull through a cluster node retries answers of 503 (an election,
/// or a node just killed still counted by placement).
pub const RETRY_503_FOR: Duration = Duration::from_secs(30);

/// A shard file on a node's disk.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub path: PathBuf,
    /// The upload that wrote it (its name is `<upload>.<index>`).
    pub upload: String,
    /// The hex digest of its blob (the folder it is in).
    pub blob: String,
    /// The shard index its name ends in.
    pub index: usize,
}

/// A cluster of real berth processes, stopped with `cluster.sh down` when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    http_base: u16,
    grpc_base: u16,
    nodes: u16,
    /// Extra environment for cluster.sh (e.g. `BERTH_CLUSTER_TLS_DIR`).
    env: Vec<(String, String)>,
}

impl Cluster {
    /// `cluster.sh up nodes DIR` on free ports.
    pub fn up(nodes: u16) -> Result<Cluster> {
        Cluster::up_with_env(nodes, Vec::new())
    }

    /// `cluster.sh up nodes DIR` with extra environment for cluster.sh.
    pub fn up_with_env(nodes: u16, env: Vec<(String, String)>) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster-")
            .tempdir()?;
        let (http_base, grpc_base) = port_bases(nodes)?;
        let out = Command::new("bash")
            .arg(launcher())
            .args(["up", &nodes.to_string()])
            .arg(dir.path())
            .env("BERTH_BIN", berth_binary()?)
            .env("BERTH_HTTP_BASE", http_base.to_string())
            .env("BERTH_GRPC_BASE", grpc_base.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .context("running cluster.sh up")?;
        let cluster = Cluster {
            dir,
            http_base,
            grpc_base,
            nodes,
            env,
        };
        ensure!(
            out.status.success(),
            "cluster.sh up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            stdout.lines().filter(|l| l.starts_with("node ")).count() == usize::from(nodes),
            "cluster.sh printed {stdout:?}"
        );
        Ok(cluster)
    }

    /// The data folder of `node`.
    pub fn data_dir(&self, node: u16) -> PathBuf {
        self.dir.path().join(format!("node-{node}"))
    }

    /// The shard files under `node`'s data folder (files in a `blobs` folder, named
    /// `<upload>.<index>` in their blob's digest folder), sorted by path.
    pub fn shard_files(&self, node: u16) -> Vec<ShardFile> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.components().any(|c| c.as_os_str() == "blobs") {
                    out.push(path);
                }
            }
        }
        let mut paths = Vec::new();
        walk(&self.data_dir(node), &mut paths);
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_string_lossy().into_owned();
                let (upload, index) = name.rsplit_once('.')?;
                let index = index.parse().ok()?;
                let upload = upload.to_owned();
                let blob = path.parent()?.file_name()?.to_string_lossy().into_owned();
                Some(ShardFile {
                    path,
                    upload,
                    blob,
                    index,
                })
            })
            .collect()
    }

    /// Pushes `data` into `repo` through `node` and returns its digest; an answer of
    /// 503 is retried for up to `retry_503_for` (zero: a 503 is an error).
    pub async fn push_blob(
        &self,
        node: u16,
        repo: &str,
        data: &[u8],
        retry_503_for: Duration,
    ) -> Result<String> {
        let oci = Oci::new(&self.url(node));
        let deadline = Instant::now() + retry_503_for;
        loop {
            match oci.push_blob(repo, data).await {
                Ok(digest) => return Ok(digest),
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("503") => {
                    eprintln!("retrying a push through node {node}: {e:#}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    return Err(
                        e.context(format!("pushing {} bytes through node {node}", data.len()))
                    );
                }
            }
        }
    }

    /// Pulls every blob of `blobs` (digest, content) from `repo` through `node` and
    /// checks its length and digest; an answer of 503 is retried for up to
    /// [`RETRY_503_FOR`] per blob.
    pub async fn pull_all(&self, node: u16, repo: &str, blobs: &[(String, Vec<u8>)]) -> Result<()> {
        let oci = Oci::new(&self.url(node));
        for (digest, data) in blobs {
            let deadline = Instant::now() + RETRY_503_FOR;
            loop {
                match oci.fetch_blob(repo, digest).await {
                    Ok(got) => {
                        ensure!(
                            got.len() == data.len() && sha256_digest(&got) == *digest,
                            "{digest} through node {node}: {} bytes, wrong content",
                            got.len()
                        );
                        break;
                    }
                    Err(e) if Instant::now() < deadline && format!("{e:#}").contains("503") => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        return Err(e.context(format!("pulling {digest} through node {node}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// The gRPC (cluster listener) address of `node`.
    pub fn grpc_addr(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.grpc_base + node)
    }

    /// `cluster.sh add DIR id`: one more node (or a stopped one again) that joins
    /// through node 1.
    pub fn add(&self, id: u16) -> Result<()> {
        self.add_via(id, 1)
    }

    /// `cluster.sh add DIR id via`: one more node (or a stopped one again) that joins
    /// through node `via` (node 1 itself is started again through another).
    pub fn add_via(&self, id: u16, via: u16) -> Result<()> {
        let out = Command::new("bash")
            .arg(launcher())
            .arg("add")
            .arg(self.dir.path())
            .arg(id.to_string())
            .arg(via.to_string())
            .env("BERTH_BIN", berth_binary()?)
            .env("BERTH_HTTP_BASE", self.http_base.to_string())
            .env("BERTH_GRPC_BASE", self.grpc_base.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        ensure!(
            out.status.success(),
            "cluster.sh add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Voter ids in the status answer of `node`.
    pub async fn voters(&self, node: u16) -> Result<Vec<u64>> {
        let status: serde_json::Value =
            reqwest::get(format!("{}/api/v1/cluster/status", self.url(node)))
                .await?
                .json()
                .await?;
        Ok(status["members"]
            .as_array()
            .context("no members")?
            .iter()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect())
    }

    pub fn url(&self, node: u16) -> String {
        format!("http://127.0.0.1:{}", self.http_base + node)
    }

    pub fn pid(&self, node: u16) -> Result<u32> {
        let path = self.dir.path().join(format!("node-{node}.pid"));
        Ok(std::fs::read_to_string(&path)?.trim().parse()?)
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        (1..=self.nodes + 1)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node {i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends `signal` (`-9`, `-STOP`, `-CONT`) to node `node`'s process.
    pub fn signal(&self, node: u16, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.pid(node)?.to_string()])
            .status()?;
        ensure!(status.success(), "kill {signal} node {node} failed");
        Ok(())
    }

    /// Forgets node `node`'s pid file after it was killed, so `add` can start it again.
    pub fn forget(&self, node: u16) -> Result<()> {
        std::fs::remove_file(self.dir.path().join(format!("node-{node}.pid")))?;
        Ok(())
    }

    /// `berth cluster status --json` against every node agrees on the leader and term
    /// and lists three voters, each caught up in the leader's view.
    pub fn check_status(&self, leader: u16) -> Result<()> {
        let mut cmd = Command::new(berth_binary()?);
        cmd.args(["cluster", "status", "--json"]);
        for i in 1..=self.nodes {
            cmd.arg("--url").arg(self.url(i));
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "cluster status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        ensure!(answers.len() == usize::from(self.nodes), "{answers:?}");
        let term = &answers[0]["term"];
        for a in &answers {
            ensure!(
                a["leader"] == u64::from(leader),
                "node {} names leader {}",
                a["node"],
                a["leader"]
            );
            ensure!(&a["term"] == term, "terms differ: {answers:?}");
        }
        let lead = &answers[usize::from(leader - 1)];
        ensure!(lead["is_leader"] == true, "{lead}");
        let members = lead["members"].as_array().context("no members")?;
        ensure!(
            members.len() == usize::from(self.nodes) && members.iter().all(|m| m["voter"] == true),
            "{lead}"
        );
        let table = Command::new(berth_binary()?)
            .args(["cluster", "status", "--url", &self.url(leader)])
            .output()?;
        let table = String::from_utf8_lossy(&table.stdout);
        ensure!(
            table.contains("leader") && table.contains("membership"),
            "{table}"
        );
        Ok(())
    }

    /// The node whose /metrics says it leads.
    pub async fn leader(&self, among: &[u16]) -> Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for &n in among {
                let Ok(resp) = reqwest::get(format!("{}/metrics", self.url(n))).await else {
                    continue;
                };
                if resp
                    .text()
                    .await?
                    .lines()
                    .any(|l| l == "berth_raft_is_leader 1")
                {
                    return Ok(n);
                }
            }
            ensure!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(launcher())
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}
