//! A three-node berth cluster started with `deploy/local/cluster.sh`, driven over HTTP:
//! any node serves any request (a blob pushed through one node pulls through the
//! others, striped blobs through the shard service), and after the Raft leader is
//! killed with SIGKILL, writes resume through the survivors and everything acknowledged
//! stays readable. The recovery time is printed.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use berth_tests::cluster::Cluster;
use berth_tests::server::berth_binary;
use berth_tests::{Oci, random_bytes, sha256_digest};

const NODES: u16 = 3;
/// Upper bound on the time from the leader's death to the first acknowledged write.
const RECOVERY_MAX: Duration = Duration::from_secs(10);

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
    let cluster = Cluster::up(NODES).unwrap_or_else(|e| panic!("{e:#}"));
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
    let cluster = Cluster::up(NODES).unwrap_or_else(|e| panic!("{e:#}"));
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
