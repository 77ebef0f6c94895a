//! Restriping with real `berth` processes on loopback: blobs pushed while a member of
//! a 3-node 2+1 cluster is down get the profile of the two reachable members (1+1);
//! once the member is back, the leader rewrites them 2+1 in the background, the old
//! 1+1 files go, and every blob survives the loss of any one node again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_tests::cluster::{Cluster, RETRY_503_FOR};
use berth_tests::random_bytes;
use berth_tests::server::berth_binary;

const REPO: &str = "restripe/app";

/// Blob sizes: one inline, the others striped; with 1 MiB shards a 1+1 stripe holds
/// 1 MiB of content and a 2+1 stripe 2 MiB, so several span many stripes.
const SIZES: [usize; 10] = [
    1024,
    70 * 1024,
    100 * 1024 + 7,
    300 * 1024,
    (1 << 20) + 1,
    (2 << 20) + 5,
    (3 << 20) + 3,
    (5 << 20) + 3,
    (8 << 20) + 11,
    200 * 1024,
];

/// Blobs above this size are striped; smaller ones live in the metadata.
const INLINE_MAX: usize = 64 * 1024;

/// Short repair passes, and old files removed two seconds after a swap.
fn env() -> Vec<(String, String)> {
    [
        ("BERTH_CLUSTER_PROFILE", "2+1"),
        ("BERTH_REPAIR_INTERVAL_SECS", "1"),
        ("BERTH_RESTRIPE_MIB_PER_SEC", "64"),
        ("BERTH_RESTRIPE_OLD_FILES_SECS", "2"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Per node 1..=3: the shard files of `digest` there.
/// Each as (upload id, shard index) from their names `<upload>.<index>`.
fn files_by_node(c: &Cluster, digest: &str) -> Vec<Vec<(String, String)>> {
    let hex = digest.trim_start_matches("sha256:");
    (1..=3)
        .map(|n| {
            c.shard_files(n)
                .into_iter()
                .filter(|f| f.blob == hex)
                .map(|f| (f.upload, f.index.to_string()))
                .collect()
        })
        .collect()
}

/// What the cluster status through the leader says of restriping: the leader, its
/// count of blobs left on another profile (`None` before a complete round), and the
/// blobs and bytes restriped by all members together (the leader may change).
struct Progress {
    leader: u16,
    left: Option<u64>,
    blobs: u64,
    bytes: u64,
}

async fn progress(c: &Cluster) -> Result<Progress> {
    let leader = c.leader(&[1, 2, 3]).await?;
    let status: serde_json::Value =
        reqwest::get(format!("{}/api/v1/cluster/status", c.url(leader)))
            .await?
            .json()
            .await?;
    let members = status["members"].as_array().context("no members")?;
    let of = |m: &serde_json::Value, k: &str| m["report"]["repair"]["restripe"][k].as_u64();
    let me = members
        .iter()
        .find(|m| m["id"] == u64::from(leader))
        .with_context(|| format!("the leader is not among the members: {status}"))?;
    Ok(Progress {
        leader,
        left: of(me, "blobs_left"),
        blobs: members
            .iter()
            .filter_map(|m| of(m, "restriped_blobs"))
            .sum(),
        bytes: members
            .iter()
            .filter_map(|m| of(m, "restriped_bytes"))
            .sum(),
    })
}

/// Bytes and milliseconds of every restripe the nodes logged ("blob restriped").
fn restripe_log(c: &Cluster) -> (u64, u64) {
    let (mut bytes, mut ms) = (0, 0);
    for n in 1..=3 {
        let log = std::fs::read_to_string(c.data_dir(n).with_extension("log")).unwrap_or_default();
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["fields"]["message"] == "blob restriped" {
                bytes += v["fields"]["bytes"].as_u64().unwrap_or(0);
                ms += v["fields"]["ms"].as_u64().unwrap_or(0);
            }
        }
    }
    (bytes, ms)
}

/// `berth cluster status` (the table) through `node`.
fn status_table(c: &Cluster, node: u16) -> Result<String> {
    let out = Command::new(berth_binary()?)
        .args(["cluster", "status", "--url", &c.url(node)])
        .output()?;
    ensure!(
        out.status.success(),
        "cluster status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn run(cluster: &Cluster, body: impl AsyncFnOnce(&Cluster) -> Result<()>) {
    if let Err(e) = body(cluster).await {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

// Proves that blobs written with an outage's smaller profile go back to the full
// profile once every member is up: node 3 of a 2+1 cluster is killed (its data kept)
// and ten blobs of mixed sizes are pushed, each 1+1 (two shard files, on nodes 1 and
// 2); the leader's status counts them as left on another profile. Node 3 restarts;
// within a bounded time the status says none is left, every striped blob has exactly
// three shard files (one per node) of one new upload and its 1+1 files are gone, every
// blob pulls byte-identical through every node, and with any one node killed still
// pulls through the other two (which a 1+1 blob whose two files sat on the killed node
// and one other would not always survive: it is what the restripe restored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_written_during_an_outage_are_restriped_to_the_full_profile() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up_with_env(3, env()).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        c.signal(3, "-9")?;
        c.forget(3)?;
        let mut blobs = Vec::new();
        for (i, size) in SIZES.into_iter().enumerate() {
            let data = random_bytes(size);
            let node = [1, 2][i % 2];
            blobs.push((c.push_blob(node, REPO, &data, RETRY_503_FOR).await?, data));
        }
        let striped: Vec<&String> = blobs
            .iter()
            .filter(|(_, d)| d.len() > INLINE_MAX)
            .map(|(digest, _)| digest)
            .collect();
        let mut outage_uploads = BTreeMap::new();
        for digest in &striped {
            let files = files_by_node(c, digest);
            let uploads: BTreeSet<&String> = files.iter().flatten().map(|(u, _)| u).collect();
            ensure!(
                files[0].len() == 1 && files[1].len() == 1 && files[2].is_empty(),
                "{digest} should be 1+1 on nodes 1 and 2: {files:?}"
            );
            ensure!(
                uploads.len() == 1,
                "{digest}: files of several uploads {files:?}"
            );
            outage_uploads.insert((*digest).clone(), (*uploads.first().unwrap()).clone());
        }

        // While node 3 is down the leader only counts them.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = progress(c).await?;
            if p.left == Some(striped.len() as u64) {
                ensure!(
                    p.blobs == 0,
                    "{} blobs restriped during the outage",
                    p.blobs
                );
                let table = status_table(c, p.leader)?;
                ensure!(
                    table.contains(&format!("{} blobs left on another profile", striped.len())),
                    "{table}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the leader does not count the {} 1+1 blobs: {:?} left",
                striped.len(),
                p.left
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // Restriping may start before `add` has seen node 3 ready.
        let back = Instant::now();
        c.add(3)?;
        let deadline = back + Duration::from_secs(180);
        let mut first = None;
        let (p, done) = loop {
            let p = progress(c).await?;
            if p.blobs > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if p.left == Some(0) && p.blobs >= striped.len() as u64 {
                break (p, Instant::now());
            }
            ensure!(
                Instant::now() < deadline,
                "180 s after node 3 came back: {} restriped, {:?} left",
                p.blobs,
                p.left
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (bytes, ms) = restripe_log(c);
        eprintln!(
            "{} blobs ({} bytes) restriped, all done {:.1} s after node 3 came back \
             ({:.1} s after the first was seen); while restriping {:.1} MB/s",
            p.blobs,
            p.bytes,
            done.duration_since(back).as_secs_f64(),
            done.duration_since(first.unwrap_or(back)).as_secs_f64(),
            bytes as f64 / 1e3 / ms.max(1) as f64
        );
        let leader = p.leader;
        let table = status_table(c, leader)?;
        ensure!(
            table.contains(", 0 blobs left on another profile"),
            "{table}"
        );

        // Exactly the new 2+1 files: one per node, one new upload; the 1+1 files go
        // once their delay (two seconds) has passed.
        let deadline = Instant::now() + Duration::from_secs(30);
        for digest in &striped {
            loop {
                let files = files_by_node(c, digest);
                let uploads: BTreeSet<&String> = files.iter().flatten().map(|(u, _)| u).collect();
                let indices: BTreeSet<&String> = files.iter().flatten().map(|(_, i)| i).collect();
                let restriped = files.iter().all(|f| f.len() == 1)
                    && uploads.len() == 1
                    && indices.len() == 3
                    && !uploads.contains(&outage_uploads[*digest]);
                if restriped {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{digest} should have one 2+1 shard file per node of a new upload: {files:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }

        for node in 1..=3 {
            c.pull_all(node, REPO, &blobs).await?;
        }
        for victim in [3u16, 2, 1] {
            c.signal(victim, "-9")?;
            for survivor in (1..=3).filter(|&n| n != victim) {
                c.pull_all(survivor, REPO, &blobs).await?;
            }
            if victim != 1 {
                c.forget(victim)?;
                c.add(victim)?;
            }
        }
        Ok(())
    })
    .await;
}

/// Staging files under a node's data folder.
fn staging_files(c: &Cluster, node: u16) -> Vec<PathBuf> {
    std::fs::read_dir(c.data_dir(node).join("disk0").join("staging"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

// Proves that a kill -9 of the leader while it restripes loses nothing and leaves
// nothing behind: blobs pushed 1+1 during node 3's outage are restriped slowly (4
// MiB/s) once it is back; after the first swap the leader is killed mid-way through
// the next blob and started again. Whatever the kill cut off (a new upload's staging
// or final files before its swap, a swapped blob's old files before their delay)
// is an orphan: with a 5 s upload TTL the sweeps remove it, the next leader finishes
// the restripe, and in the end every striped blob has exactly its three 2+1 files
// of one new upload, no staging file is left, and every blob pulls byte-identical
// through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_restriping_loses_nothing_and_leaves_no_files() {
    let _heavy = berth_tests::heavy().await;
    let mut env = env();
    env.retain(|(k, _)| k != "BERTH_RESTRIPE_MIB_PER_SEC");
    env.push(("BERTH_RESTRIPE_MIB_PER_SEC".into(), "4".into()));
    env.push(("BERTH_UPLOAD_TTL_SECS".into(), "5".into()));
    let cluster = Cluster::up_with_env(3, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        c.signal(3, "-9")?;
        c.forget(3)?;
        let mut blobs = Vec::new();
        for (i, size) in [6 << 20, (6 << 20) + 1, (6 << 20) + 2, (6 << 20) + 3, 300 << 10]
            .into_iter()
            .enumerate()
        {
            let data = random_bytes(size);
            blobs.push((c.push_blob([1, 2][i % 2], REPO, &data, RETRY_503_FOR).await?, data));
        }
        let mut outage_uploads = BTreeMap::new();
        for (digest, _) in &blobs {
            let files = files_by_node(c, digest);
            ensure!(files.iter().flatten().count() == 2, "{digest} is not 1+1: {files:?}");
            outage_uploads.insert(digest.clone(), files.concat()[0].0.clone());
        }

        c.add(3)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = progress(c).await?;
            if p.blobs >= 1 {
                ensure!(
                    p.blobs < blobs.len() as u64,
                    "every blob was restriped before the kill: the rate limit did not hold"
                );
                break;
            }
            ensure!(Instant::now() < deadline, "no blob restriped 60 s after node 3 came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Half a second into the next blob (1.5 s at 4 MiB/s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = c.leader(&[1, 2, 3]).await?;
        c.signal(leader, "-9")?;
        c.forget(leader)?;
        let via = if leader == 1 { 2 } else { 1 };
        c.add_via(leader, via)?;

        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = progress(c).await?;
            let mut wrong = Vec::new();
            for (digest, _) in &blobs {
                let files = files_by_node(c, digest);
                let uploads: BTreeSet<&String> = files.iter().flatten().map(|(u, _)| u).collect();
                if !(files.iter().all(|f| f.len() == 1)
                    && uploads.len() == 1
                    && !uploads.contains(&outage_uploads[digest]))
                {
                    wrong.push(files);
                }
            }
            let staging: Vec<PathBuf> = (1..=3).flat_map(|n| staging_files(c, n)).collect();
            if p.left == Some(0) && wrong.is_empty() && staging.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "120 s after the kill: {:?} left, blobs not exactly 2+1 {wrong:?}, staging {staging:?}",
                p.left
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for node in 1..=3 {
            c.pull_all(node, REPO, &blobs).await?;
        }
        Ok(())
    })
    .await;
}
