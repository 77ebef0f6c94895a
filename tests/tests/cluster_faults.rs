//! Faults against clusters of real `berth` processes on loopback: a node cut off from
//! the quorum (the other two paused with SIGSTOP) refuses writes and reads with 503 and
//! Retry-After instead of a false success or stale data, then converges once they
//! resume; a five-node cluster survives two simultaneous kills; a killed follower
//! restarts, catches up and serves what was written while it was down.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use berth_tests::cluster::Cluster;
use berth_tests::{Oci, random_bytes, sha256_digest};

const REPO: &str = "faults/app";

async fn pull(oci: &Oci, digest: &str) -> Result<Vec<u8>> {
    let resp = oci.http().get(oci.blob_url(REPO, digest)).send().await?;
    ensure!(
        resp.status() == 200,
        "GET {digest} via {}: {}",
        oci.base(),
        resp.status()
    );
    Ok(resp.bytes().await?.to_vec())
}

/// Pushes through `oci` until one push is acknowledged, for at most `limit`.
async fn push_until_acked(oci: &Oci, limit: Duration) -> Result<(String, Vec<u8>, Duration)> {
    let started = Instant::now();
    loop {
        let data = random_bytes(1500);
        match oci.push_blob(REPO, &data).await {
            Ok(digest) => return Ok((digest, data, started.elapsed())),
            Err(e) if started.elapsed() < limit => {
                eprintln!("push not acknowledged yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("no push acknowledged within {limit:?}: {e:#}"),
        }
    }
}

async fn run(cluster: &Cluster, body: impl AsyncFnOnce(&Cluster) -> Result<()>) {
    if let Err(e) = body(cluster).await {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

// Proves that a node that cannot reach a quorum never acknowledges a write and never
// serves a read it cannot prove current: both get 503 with Retry-After and the OCI
// error envelope. After the others resume, it accepts writes and serves every
// acknowledged blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_quorum_answers_503_then_converges() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(3).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let first = random_bytes(1200);
        let first_digest = Oci::new(&c.url(1)).push_blob(REPO, &first).await?;
        let leader = c.leader(&[1, 2, 3]).await?;
        let lone = (1..=3).find(|&n| n != leader).expect("a follower");
        let paused: Vec<u16> = (1..=3).filter(|&n| n != lone).collect();
        for &n in &paused {
            c.signal(n, "-STOP")?;
        }
        let oci = Oci::new(&c.url(lone));
        let attempt = async {
            let data = random_bytes(800);
            let digest = sha256_digest(&data);
            let url = format!("{}?digest={digest}", oci.uploads_url(REPO));
            let write = oci.http().post(url).body(data).send().await?;
            let read = oci
                .http()
                .get(oci.blob_url(REPO, &first_digest))
                .send()
                .await?;
            Ok::<_, anyhow::Error>((write, read))
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), attempt).await;
        for &n in &paused {
            c.signal(n, "-CONT")?;
        }
        let (write, read) =
            outcome.map_err(|_| anyhow::anyhow!("the lone node hung for 60 s"))??;
        for (what, resp) in [("write", write), ("read", read)] {
            ensure!(
                resp.status() == 503,
                "lone node answered the {what} with {}",
                resp.status()
            );
            ensure!(
                resp.headers().contains_key("retry-after"),
                "{what}: 503 without Retry-After"
            );
            let body: serde_json::Value = resp.json().await?;
            ensure!(body["errors"][0]["code"] == "UNAVAILABLE", "{what}: {body}");
        }
        let (digest, data, took) = push_until_acked(&oci, Duration::from_secs(30)).await?;
        eprintln!("the lone node accepted writes {took:?} after the others resumed");
        for n in 1..=3 {
            let node = Oci::new(&c.url(n));
            ensure!(
                pull(&node, &first_digest).await? == first,
                "node {n} lost an acknowledged blob"
            );
            ensure!(
                pull(&node, &digest).await? == data,
                "node {n} misses a write made after healing"
            );
        }
        Ok(())
    })
    .await;
}

// Proves that a five-node cluster keeps accepting writes after two nodes, the leader
// among them, are killed at once, and that every acknowledged blob stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_simultaneous_kills() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(5).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let mut acked = Vec::new();
        for n in 1..=5 {
            let data = random_bytes(1000 + usize::from(n));
            acked.push((Oci::new(&c.url(n)).push_blob(REPO, &data).await?, data));
        }
        let leader = c.leader(&[1, 2, 3, 4, 5]).await?;
        let other = (1..=5).find(|&n| n != leader).expect("a follower");
        c.signal(leader, "-9")?;
        c.signal(other, "-9")?;
        let survivors: Vec<u16> = (1..=5).filter(|&n| n != leader && n != other).collect();
        let (digest, data, took) =
            push_until_acked(&Oci::new(&c.url(survivors[0])), Duration::from_secs(20)).await?;
        eprintln!("nodes {leader} (leader) and {other} killed; first write after {took:?}");
        acked.push((digest, data));
        for &n in &survivors {
            let oci = Oci::new(&c.url(n));
            for (digest, data) in &acked {
                ensure!(
                    pull(&oci, digest).await? == *data,
                    "{digest} differs via node {n}"
                );
            }
        }
        Ok(())
    })
    .await;
}

// Proves that a follower killed with SIGKILL restarts from its data folder, catches
// up with what was written while it was down, and serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_restarts_and_catches_up() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(3).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let leader = c.leader(&[1, 2, 3]).await?;
        // Node 1 is the one `add` joins through, so restart one of the others.
        let follower = [2, 3]
            .into_iter()
            .find(|&n| n != leader)
            .expect("a follower");
        c.signal(follower, "-9")?;
        c.forget(follower)?;
        let writer = Oci::new(&c.url(leader));
        let mut written = Vec::new();
        for _ in 0..20 {
            let data = random_bytes(900);
            written.push((writer.push_blob(REPO, &data).await?, data));
        }
        c.add(follower)?;
        let oci = Oci::new(&c.url(follower));
        for (digest, data) in &written {
            ensure!(
                pull(&oci, digest).await? == *data,
                "restarted node {follower} misses {digest}"
            );
        }
        let voters = c.voters(leader).await?;
        ensure!(
            voters == vec![1, 2, 3],
            "voters after the restart: {voters:?}"
        );
        Ok(())
    })
    .await;
}
