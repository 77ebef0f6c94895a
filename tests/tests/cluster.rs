//! A three-node berth cluster started with `deploy/local/cluster.sh`, driven over HTTP:
//! any node serves any request (a blob pushed through one node pulls through the
//! others, striped blobs through the shard service), and after the Raft leader is
//! killed with SIGKILL, writes resume through the survivors and everything acknowledged
//! stays readable. The recovery time is printed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::server::berth_binary;
use berth_tests::{Oci, random_bytes, sha256_digest};

const NODES: u16 = 3;
/// Upper bound on the time from the leader's death to the first acknowledged write.
const RECOVERY_MAX: Duration = Duration::from_secs(10);

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cluster.sh")
}

/// HTTP and gRPC port bases whose ports 1..=NODES are all free right now.
fn port_bases() -> Result<(u16, u16)> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..50 {
        let http = rand::random_range(20_000u16..40_000);
        let grpc = http + 20_000;
        // One spare id beyond NODES for a node that joins later.
        if (1..=NODES + 1).all(|i| free(http + i) && free(grpc + i)) {
            return Ok((http, grpc));
        }
    }
    bail!("no free port ranges found")
}

/// The cluster, stopped with `cluster.sh down` when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    http_base: u16,
    grpc_base: u16,
}

impl Cluster {
    fn up() -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster-")
            .tempdir()?;
        let (http_base, grpc_base) = port_bases()?;
        let out = Command::new("bash")
            .arg(launcher())
            .args(["up", &NODES.to_string()])
            .arg(dir.path())
            .env("BERTH_BIN", berth_binary()?)
            .env("BERTH_HTTP_BASE", http_base.to_string())
            .env("BERTH_GRPC_BASE", grpc_base.to_string())
            .output()
            .context("running cluster.sh up")?;
        let cluster = Cluster {
            dir,
            http_base,
            grpc_base,
        };
        ensure!(
            out.status.success(),
            "cluster.sh up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            stdout.lines().filter(|l| l.starts_with("node ")).count() == NODES as usize,
            "cluster.sh printed {stdout:?}"
        );
        Ok(cluster)
    }

    /// `cluster.sh add DIR id`: one more node that joins through node 1.
    fn add(&self, id: u16) -> Result<()> {
        let out = Command::new("bash")
            .arg(launcher())
            .arg("add")
            .arg(self.dir.path())
            .arg(id.to_string())
            .env("BERTH_BIN", berth_binary()?)
            .env("BERTH_HTTP_BASE", self.http_base.to_string())
            .env("BERTH_GRPC_BASE", self.grpc_base.to_string())
            .output()?;
        ensure!(
            out.status.success(),
            "cluster.sh add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Voter ids in the status answer of `node`.
    async fn voters(&self, node: u16) -> Result<Vec<u64>> {
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

    fn url(&self, node: u16) -> String {
        format!("http://127.0.0.1:{}", self.http_base + node)
    }

    fn pid(&self, node: u16) -> Result<u32> {
        let path = self.dir.path().join(format!("node-{node}.pid"));
        Ok(std::fs::read_to_string(&path)?.trim().parse()?)
    }

    fn logs(&self) -> String {
        (1..=NODES + 1)
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

    /// `berth cluster status --json` against every node agrees on the leader and term
    /// and lists three voters, each caught up in the leader's view.
    fn check_status(&self, leader: u16) -> Result<()> {
        let mut cmd = Command::new(berth_binary()?);
        cmd.args(["cluster", "status", "--json"]);
        for i in 1..=NODES {
            cmd.arg("--url").arg(self.url(i));
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "cluster status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        ensure!(answers.len() == NODES as usize, "{answers:?}");
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
            members.len() == NODES as usize && members.iter().all(|m| m["voter"] == true),
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
    async fn leader(&self, among: &[u16]) -> Result<u16> {
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

async fn pull(oci: &Oci, repo: &str, digest: &str) -> Result<Vec<u8>> {
    let resp = oci.http().get(oci.blob_url(repo, digest)).send().await?;
    ensure!(
        resp.status() == 200,
        "GET {digest} through {}: {}",
        oci.base(),
        resp.status()
    );
    Ok(resp.bytes().await?.to_vec())
}

// Proves that any node serves any request, and that killing the leader stops writes
// only briefly and loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_as_one_registry_and_survive_a_leader_kill() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up().unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let repo = "team/app";
        let nodes: Vec<Oci> = (1..=NODES).map(|i| Oci::new(&cluster.url(i))).collect();
        // A striped blob (shard files on node 1) and an inline one (in the metadata).
        let big = random_bytes(3 * 1024 * 1024 + 17);
        let big_digest = nodes[0].push_blob(repo, &big).await?;
        let small = random_bytes(1000);
        let small_digest = nodes[1].push_blob(repo, &small).await?;
        for oci in &nodes {
            ensure!(
                pull(oci, repo, &big_digest).await? == big,
                "big blob differs via {}",
                oci.base()
            );
            ensure!(
                pull(oci, repo, &small_digest).await? == small,
                "small blob differs via {}",
                oci.base()
            );
        }

        let leader = cluster.leader(&[1, 2, 3]).await?;
        cluster.check_status(leader)?;
        let survivors: Vec<u16> = (1..=NODES).filter(|&n| n != leader).collect();
        let mut acked = vec![(small_digest.clone(), small.clone())];
        let pid = cluster.pid(leader)?;
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        let killed = Instant::now();
        // Keep writing through a survivor until the first write is acknowledged.
        let writer = Oci::new(&cluster.url(survivors[0]));
        let mut attempt = 0u32;
        let recovery = loop {
            attempt += 1;
            let data = random_bytes(2000);
            match writer.push_blob(repo, &data).await {
                Ok(digest) => {
                    acked.push((digest, data));
                    break killed.elapsed();
                }
                Err(e) if killed.elapsed() < RECOVERY_MAX => {
                    eprintln!("write attempt {attempt} after the kill: {e:#}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    bail!("no write acknowledged {RECOVERY_MAX:?} after the leader died: {e:#}")
                }
            }
        };
        eprintln!("leader node {leader} killed; first write acknowledged after {recovery:?}");
        for _ in 0..10 {
            let data = random_bytes(3000);
            let digest = Oci::new(&cluster.url(survivors[1]))
                .push_blob(repo, &data)
                .await?;
            acked.push((digest, data));
        }
        let new_leader = cluster.leader(&survivors).await?;
        ensure!(new_leader != leader, "the dead node still leads");
        for &n in &survivors {
            let oci = Oci::new(&cluster.url(n));
            for (digest, data) in &acked {
                ensure!(
                    pull(&oci, repo, digest).await? == *data,
                    "{digest} differs via node {n}"
                );
            }
            ensure!(sha256_digest(&pull(&oci, repo, &small_digest).await?) == small_digest);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

// Proves that a node started with `--join` is admitted through a running member,
// becomes a voter that serves reads and writes, and that `berth cluster remove` takes
// it out again while the cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_is_removed() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up().unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let repo = "team/join";
        let before = random_bytes(500);
        let before_digest = Oci::new(&cluster.url(2)).push_blob(repo, &before).await?;
        cluster.add(NODES + 1)?;
        let voters = cluster.voters(1).await?;
        ensure!(voters == vec![1, 2, 3, 4], "voters after join: {voters:?}");
        let newcomer = Oci::new(&cluster.url(NODES + 1));
        ensure!(
            pull(&newcomer, repo, &before_digest).await? == before,
            "new node misses an earlier write"
        );
        let after = random_bytes(700);
        let after_digest = newcomer.push_blob(repo, &after).await?;
        ensure!(pull(&Oci::new(&cluster.url(1)), repo, &after_digest).await? == after);

        let out = Command::new(berth_binary()?)
            .args([
                "cluster",
                "remove",
                "--url",
                &cluster.url(2),
                &(NODES + 1).to_string(),
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "cluster remove: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let voters = cluster.voters(1).await?;
            if voters == vec![1, 2, 3] {
                break;
            }
            ensure!(Instant::now() < deadline, "voters after remove: {voters:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last = random_bytes(900);
        let last_digest = Oci::new(&cluster.url(3)).push_blob(repo, &last).await?;
        ensure!(pull(&Oci::new(&cluster.url(1)), repo, &last_digest).await? == last);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}
