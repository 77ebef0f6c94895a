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

/// `location` (an absolute URL on some node) as the same path on node `node`.
fn on_node(cluster: &Cluster, location: &str, node: u16) -> String {
    let path = location.find("/v2/").map_or(location, |at| &location[at..]);
    format!("{}{path}", cluster.url(node))
}

/// `PATCH` of `piece` at `offset` to the session at `url`; returns the next location
/// (absolute on the answering node).
async fn patch(oci: &Oci, url: &str, offset: usize, piece: &[u8]) -> Result<String> {
    let end = offset + piece.len() - 1;
    let resp = oci
        .http()
        .patch(url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{offset}-{end}"))
        .body(piece.to_vec())
        .send()
        .await?;
    let range = berth_tests::oci::header(resp.headers(), "range");
    let next = berth_tests::oci::upload_location(
        oci,
        resp,
        reqwest::StatusCode::ACCEPTED,
        &format!("PATCH {offset}-{end} via {}", oci.base()),
    )
    .await?;
    ensure!(
        range == format!("0-{end}"),
        "Range {range:?} after PATCH to {end}"
    );
    Ok(next)
}

// Proves that an upload session works through every node (requests for it that reach
// another node are passed on to the node that owns it), and that a session dies with
// its owner: BLOB_UPLOAD_UNKNOWN, never a 5xx or a false success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_session_is_served_through_every_node() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(NODES).unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let repo = "team/proxied";
        let nodes: Vec<Oci> = (1..=NODES).map(|i| Oci::new(&cluster.url(i))).collect();
        let data = random_bytes(5 * 1024 * 1024 + 3);
        let digest = sha256_digest(&data);
        let (first, second) = data.split_at(3 * 1024 * 1024);
        // Created on node 1, filled through nodes 2 and 3, closed through node 2.
        let location = nodes[0].start_upload(repo).await?;
        let location = patch(&nodes[1], &on_node(&cluster, &location, 2), 0, first).await?;
        let location = patch(
            &nodes[2],
            &on_node(&cluster, &location, 3),
            first.len(),
            second,
        )
        .await?;
        let status = nodes[1]
            .http()
            .get(on_node(&cluster, &location, 2))
            .send()
            .await?;
        ensure!(
            status.status() == 204,
            "upload status via node 2: {}",
            status.status()
        );
        let range = berth_tests::oci::header(status.headers(), "range");
        ensure!(
            range == format!("0-{}", data.len() - 1),
            "status Range {range:?}"
        );
        let closed = nodes[1]
            .http()
            .put(berth_tests::oci::with_query(
                &on_node(&cluster, &location, 2),
                "digest",
                &digest,
            ))
            .header("Content-Length", "0")
            .send()
            .await?;
        berth_tests::oci::expect_created(closed, "closing PUT via node 2").await?;
        for oci in &nodes {
            ensure!(
                pull(oci, repo, &digest).await? == data,
                "proxied upload differs via {}",
                oci.base()
            );
        }

        // Cancelled through another node than its owner.
        let doomed = nodes[2].start_upload(repo).await?;
        let cancel = nodes[0]
            .http()
            .delete(on_node(&cluster, &doomed, 1))
            .send()
            .await?;
        ensure!(
            cancel.status() == 204,
            "cancel via node 1: {}",
            cancel.status()
        );
        berth_tests::oci::expect_error_for(
            "PATCH of a cancelled session via its owner",
            nodes[2]
                .http()
                .patch(on_node(&cluster, &doomed, 3))
                .header("Content-Range", "0-0")
                .body(vec![1u8]),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await?;

        // The owner dies: its sessions are gone, and other nodes say so.
        let orphan = nodes[2].start_upload(repo).await?;
        let orphan = patch(&nodes[0], &on_node(&cluster, &orphan, 1), 0, b"abc").await?;
        Command::new("kill")
            .args(["-9", &cluster.pid(3)?.to_string()])
            .status()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        berth_tests::oci::expect_error_for(
            "PATCH of a session whose owner died",
            nodes[0]
                .http()
                .patch(on_node(&cluster, &orphan, 1))
                .header("Content-Range", "3-5")
                .body(b"def".to_vec()),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await?;
        // The survivors still take new uploads.
        let after = random_bytes(100_000);
        let after_digest = nodes[1].push_blob(repo, &after).await?;
        ensure!(pull(&nodes[0], repo, &after_digest).await? == after);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

// Proves that a node whose data folder belongs to another cluster is refused when it
// asks to join, and that the cluster it asked is unchanged. (Its node id even equals
// a member's: without the cluster id check it would pass as that member.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_cannot_join() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(NODES).unwrap_or_else(|e| panic!("{e:#}"));
    let other = Cluster::up(1).unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let ours = status_cluster_id(&cluster.url(1)).await?;
        let theirs = status_cluster_id(&other.url(1)).await?;
        ensure!(ours != theirs, "two clusters share the id {ours}");
        for n in 2..=NODES {
            ensure!(
                status_cluster_id(&cluster.url(n)).await? == ours,
                "node {n} names another cluster"
            );
        }
        other.signal(1, "-9")?;
        other.forget(1)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let http = berth_tests::server::free_port()?;
        let grpc = berth_tests::server::free_port()?;
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::process::Command::new(berth_binary()?)
                .args(["serve", "--node-id", "1", "--log-format", "text"])
                .arg("--listen")
                .arg(format!("127.0.0.1:{http}"))
                .arg("--grpc-listen")
                .arg(format!("127.0.0.1:{grpc}"))
                .arg("--join")
                .arg(cluster.url(1))
                .arg("--data")
                .arg(other.data_dir(1))
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(!out.status.success(), "the stranger started: {text}");
        ensure!(
            text.contains("belongs to cluster"),
            "the refusal does not say why: {text}"
        );
        ensure!(cluster.voters(1).await? == vec![1, 2, 3]);
        let data = random_bytes(400);
        let digest = Oci::new(&cluster.url(1))
            .push_blob("team/still", &data)
            .await?;
        ensure!(pull(&Oci::new(&cluster.url(2)), "team/still", &digest).await? == data);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

async fn status_cluster_id(url: &str) -> Result<String> {
    let status: serde_json::Value = reqwest::get(format!("{url}/api/v1/cluster/status"))
        .await?
        .json()
        .await?;
    status["cluster_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no cluster_id in {status}"))
}

/// Manifests the snapshot catch-up test loads (about 30 s through one debug node).
const SNAPSHOT_TEST_MANIFESTS: usize = 100_000;

/// `/api/v1/cluster/status` of `url`.
async fn status(url: &str) -> Result<serde_json::Value> {
    Ok(reqwest::get(format!("{url}/api/v1/cluster/status"))
        .await?
        .json()
        .await?)
}

/// The files of `dir` (recursively) whose name starts with `prefix`, with sizes.
fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, prefix));
        } else if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push((path, entry.metadata().map_or(0, |m| m.len())));
        }
    }
    found
}

/// Peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for {pid}"))
}

// Proves that a node joining a cluster that holds 100,000 manifests catches up through a snapshot streamed from disk to disk: the founder's log is
// purged below its snapshot, the newcomer installs that snapshot rather than replaying
// the log, both end with the same state digest, and the newcomer serves the manifests.
// Prints the load and catch-up times, the snapshot's size and the newcomer's peak
// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_on_many_manifests_through_a_streamed_snapshot() {
    use futures::{StreamExt, TryStreamExt};

    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up(1).unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let count = SNAPSHOT_TEST_MANIFESTS;
        let repo = "bulk/app";
        let oci = Oci::new(&cluster.url(1));
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = random_bytes(256);
        oci.push_blob(repo, config).await?;
        oci.push_blob(repo, &layer).await?;
        let manifest = |i: usize| {
            berth_tests::oci::manifest_bytes(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": berth_tests::oci::descriptor("application/vnd.oci.image.config.v1+json", config),
                "layers": [berth_tests::oci::descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
                "annotations": { "org.example.build": i.to_string() },
            }))
        };
        let loading = Instant::now();
        let digests: Vec<String> = futures::stream::iter(0..count)
            .map(|i| {
                let oci = &oci;
                let body = manifest(i);
                async move {
                    let digest = sha256_digest(&body);
                    oci.push_manifest(repo, &digest, "application/vnd.oci.image.manifest.v1+json", &body)
                        .await
                }
            })
            .buffered(32)
            .try_collect()
            .await?;
        eprintln!("loaded {count} manifests in {:.1?}", loading.elapsed());

        // The founder snapshots and purges its log as it goes.
        let founder = status(&cluster.url(1)).await?;
        let purged = founder["purged"].as_u64().unwrap_or(0);
        ensure!(
            purged > 1000,
            "the founder's log was not purged after {count} writes: {founder}"
        );

        let joining = Instant::now();
        cluster.add(2)?;
        let target = founder["state"]["applied"].as_u64().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        let newcomer = loop {
            let s = status(&cluster.url(2)).await?;
            let f = status(&cluster.url(1)).await?;
            let caught_up = s["state"]["applied"].as_u64().unwrap_or(0) >= target
                && s["state"]["applied"] == f["state"]["applied"];
            if caught_up && s["state"]["digest"] == f["state"]["digest"] {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "node 2 did not catch up: node 2 {s}, founder {f}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("node 2 caught up in {:.1?}", joining.elapsed());
        let installed = newcomer["snapshot"].as_u64().unwrap_or(0);
        ensure!(
            installed >= purged,
            "node 2 did not catch up through a snapshot (its snapshot covers {installed}, the founder purged up to {purged}): {newcomer}"
        );

        for node in [1, 2] {
            let dir = cluster.data_dir(node);
            let snapshots = files_named(&dir, "snap-");
            ensure!(
                snapshots.len() == 1,
                "node {node} keeps {} snapshot files: {snapshots:?}",
                snapshots.len()
            );
            ensure!(files_named(&dir, "staged-").is_empty(), "node {node} left a staged snapshot");
            eprintln!("node {node}: snapshot file of {} bytes", snapshots[0].1);
        }
        eprintln!(
            "node 2 peak RSS {} MiB",
            peak_rss_kib(cluster.pid(2)?)? / 1024
        );

        let node2 = Oci::new(&cluster.url(2));
        for (i, digest) in digests.iter().enumerate().step_by(997) {
            let resp = node2.get_manifest(repo, digest).await?;
            ensure!(resp.status() == 200, "manifest {i} through node 2: {}", resp.status());
            ensure!(resp.bytes().await?.to_vec() == manifest(i), "manifest {i} differs through node 2");
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}
