//! Erasure coding across the nodes of a cluster, with real `berth` processes on
//! loopback: a 3-node cluster stripes every blob 2+1 over its three nodes and every
//! blob pulls byte-identical through the survivors of any one node's loss; a node that
//! is killed and removed for good has its shards rebuilt onto the others by repair,
//! after which the cluster survives the loss of one more node; damaged shard files are
//! read around and rewritten by repair; a 5-node cluster striping 3+2 serves every
//! blob through the survivors of any two nodes' loss; the scrubber finds rotten
//! parity and a missing shard file that no read meets, and repair restores them; a
//! drained node's shards move to the others before it is removed; a project's own
//! profile decides how its new blobs are striped; a pull goes around a stopped
//! (SIGSTOP) node after the read hedge threshold instead of waiting for it. Short by default;
//! `BERTH_TEST_LONG=1` pushes 200 blobs of up to 64 MiB.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::cluster::{Cluster, ShardFile};
use berth_tests::{Oci, long_mode, random_bytes, sha256_digest};

const REPO: &str = "erasure/app";

/// Sizes of the pushed blobs: one inline, the others striped over one or several
/// stripes (2+1 with 1 MiB shards is 2 MiB of content per stripe).
fn sizes() -> Vec<usize> {
    if long_mode() {
        (0..200)
            .map(|i| match i % 5 {
                0 => 1024,
                1 => 100 * 1024 + i,
                2 => (1 << 20) + 3 * i,
                3 => (9 << 20) + i,
                _ => (64 << 20) - i,
            })
            .collect()
    } else {
        vec![
            1024,
            70 * 1024,
            300 * 1024 + 7,
            (1 << 20) + 1,
            (2 << 20) + 5,
            (5 << 20) + 3,
            (8 << 20) + 11,
            200 * 1024,
        ]
    }
}

/// The environment of nodes that stripe blobs 2+1 across the cluster, plus `more`.
fn across(more: &[(&str, &str)]) -> Vec<(String, String)> {
    across_as("2+1", more)
}

/// The environment of nodes that stripe blobs `profile` across the cluster, plus `more`.
fn across_as(profile: &str, more: &[(&str, &str)]) -> Vec<(String, String)> {
    [("BERTH_CLUSTER_PROFILE", profile)]
        .iter()
        .chain(more)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pushes one blob of each size, rotating over `nodes`; returns (digest, bytes).
async fn push_all(c: &Cluster, nodes: &[u16]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut pushed = Vec::new();
    for (i, size) in sizes().into_iter().enumerate() {
        let data = random_bytes(size);
        let node = nodes[i % nodes.len()];
        pushed.push((c.push_blob(node, REPO, &data, Duration::ZERO).await?, data));
    }
    Ok(pushed)
}

/// Pulls every blob through `node` (retrying 503s, an election, for a bounded time)
/// and compares digests.
async fn pull_all(c: &Cluster, node: u16, blobs: &[(String, Vec<u8>)]) -> Result<()> {
    c.pull_all(node, REPO, blobs).await
}

/// Shard files under `node`'s data folder.
fn shard_files(c: &Cluster, node: u16) -> usize {
    c.shard_files(node).len()
}

/// Shard files of the blob with digest `digest` under `node`'s data folder.
fn shard_files_of(c: &Cluster, node: u16, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    c.shard_files(node).iter().filter(|f| f.blob == hex).count()
}

/// A gauge of `node`'s /metrics.
async fn metric(c: &Cluster, node: u16, name: &str) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", c.url(node)))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in node {node}'s metrics"))
}

async fn run(cluster: &Cluster, body: impl AsyncFnOnce(&Cluster) -> Result<()>) {
    if let Err(e) = body(cluster).await {
        panic!("{e:#}\n{}", cluster.logs());
    }
}

// Proves that blobs are striped across the nodes (each node holds shard files, one of
// the three of every striped blob) and that every blob pulls byte-identical through
// both survivors whichever node is down: node 3 and node 2 are killed and restarted
// in turn, node 1 (through which restarted nodes join) is killed last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blob_survives_the_loss_of_any_one_of_three_nodes() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up_with_env(3, across(&[])).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let blobs = push_all(c, &[1, 2, 3]).await?;
        let striped = sizes().iter().filter(|&&s| s > 64 * 1024).count();
        let files: Vec<usize> = (1..=3).map(|n| shard_files(c, n)).collect();
        ensure!(
            files.iter().all(|&f| f == striped),
            "every node holds one shard of each of the {striped} striped blobs: {files:?}"
        );
        for victim in [3u16, 2, 1] {
            c.signal(victim, "-9")?;
            for survivor in (1..=3).filter(|&n| n != victim) {
                pull_all(c, survivor, &blobs).await?;
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

// Proves that a 5-node cluster striping 3+2 loses no blob to the loss of any two
// nodes: every node holds one shard of every striped blob; nodes 4 and 5 are killed
// (SIGKILL) and every blob pulls byte-identical through each of nodes 1-3; they are
// restarted, then the Raft leader and one more node are killed and every blob pulls
// through each of the three others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blob_survives_the_loss_of_any_two_of_five_nodes() {
    let _heavy = berth_tests::heavy().await;
    let cluster =
        Cluster::up_with_env(5, across_as("3+2", &[])).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let all = [1u16, 2, 3, 4, 5];
        let blobs = push_all(c, &all).await?;
        let striped = sizes().iter().filter(|&&s| s > 64 * 1024).count();
        let files: Vec<usize> = all.iter().map(|&n| shard_files(c, n)).collect();
        ensure!(
            files.iter().all(|&f| f == striped),
            "every node holds one shard of each of the {striped} striped blobs: {files:?}"
        );

        for victim in [4, 5] {
            c.signal(victim, "-9")?;
        }
        for survivor in [1, 2, 3] {
            pull_all(c, survivor, &blobs).await?;
        }
        for victim in [4, 5] {
            c.forget(victim)?;
            c.add(victim)?;
        }
        for n in [4, 5] {
            pull_all(c, n, &blobs).await?;
        }

        let leader = c.leader(&all).await?;
        let other = *all.iter().find(|&&n| n != leader).expect("five nodes");
        eprintln!("killing the leader, node {leader}, and node {other}");
        for victim in [leader, other] {
            c.signal(victim, "-9")?;
        }
        for survivor in all.into_iter().filter(|&n| n != leader && n != other) {
            pull_all(c, survivor, &blobs).await?;
        }
        Ok(())
    })
    .await;
}

// Proves self-repair after a permanent loss: in a 4-node cluster (2+1, each blob on
// three of the four nodes) node 4 is killed and removed (refused, naming its shards,
// until forced); repair rebuilds every shard it held onto the remaining nodes; then
// node 1 is killed as well and every blob still pulls through nodes 2 and 3. Without
// the repair, blobs that had shards on both node 4 and node 1 would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_of_a_removed_node_are_rebuilt_and_survive_one_more_loss() {
    let _heavy = berth_tests::heavy().await;
    let env = across(&[
        ("BERTH_REPAIR_INTERVAL_SECS", "1"),
        ("BERTH_REPAIR_GRACE_SECS", "2"),
    ]);
    let cluster = Cluster::up_with_env(4, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let mut blobs = push_all(c, &[1, 2, 3, 4]).await?;
        blobs.extend(push_all(c, &[2, 3]).await?);
        let on_4 = shard_files(c, 4);
        let on_1_and_4 = blobs.len();
        ensure!(on_4 > 0, "node 4 holds no shard: nothing to test");
        eprintln!("node 4 holds {on_4} shard files of {on_1_and_4} blobs");

        c.signal(4, "-9")?;
        c.forget(4)?;
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = http
                .delete(format!("{}/api/v1/cluster/members/4", c.url(1)))
                .send()
                .await?;
            // Node 4 still holds shards: removing it without force is refused.
            let status = resp.status();
            let body = resp.text().await?;
            if status == reqwest::StatusCode::CONFLICT {
                ensure!(
                    body.contains(&format!("still holds {on_4} shards")),
                    "refusal does not count node 4's {on_4} shards: {body}"
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("removing node 4 without force: {status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        loop {
            let resp = http
                .delete(format!("{}/api/v1/cluster/members/4?force=true", c.url(1)))
                .send()
                .await?;
            if resp.status().is_success() {
                break;
            }
            if Instant::now() > deadline {
                bail!("removing node 4: {}", resp.status());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        loop {
            let mut rebuilt = 0;
            let mut bytes = 0;
            for n in 1..=3 {
                rebuilt += metric(c, n, "berth_repair_rebuilt_shards").await?;
                bytes += metric(c, n, "berth_repair_rebuilt_bytes").await?;
            }
            if rebuilt >= on_4 as u64 {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "{rebuilt} shards ({bytes} bytes) rebuilt in {secs:.1} s: {:.1} MB/s",
                    bytes as f64 / 1e6 / secs
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("only {rebuilt} of {on_4} shards rebuilt after the removal");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let files: usize = (1..=3).map(|n| shard_files(c, n)).sum();
        let striped = blobs.iter().filter(|(_, d)| d.len() > 64 * 1024).count();
        ensure!(
            files >= 3 * striped,
            "{files} shard files on nodes 1-3 for {striped} striped blobs"
        );

        c.signal(1, "-9")?;
        for n in [2, 3] {
            pull_all(c, n, &blobs).await?;
        }
        Ok(())
    })
    .await;
}

/// Damages the files of data shards (index below `k`) on `node`: every striped blob
/// has content in each of its data shards, so a full read meets the damage. Flips a
/// byte in the middle of every other one and deletes the rest. Returns how many were
/// damaged.
fn damage_data_shards(c: &Cluster, node: u16, k: usize) -> usize {
    let mut damaged = 0;
    for ShardFile { path, index, .. } in c.shard_files(node) {
        if index >= k {
            continue;
        }
        if damaged % 2 == 0 {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&path, bytes).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        damaged += 1;
    }
    damaged
}

// Proves that damaged shard files are read around and repaired while the cluster
// runs: on node 3 of a 3-node cluster (2+1) every data shard file (index 0 or 1; node 3
// holds one of the three shards of each blob, a data shard for about two blobs in
// three) is corrupted or deleted; every blob still pulls byte-identical through nodes 1
// and 2, which count the damage and queue it (a node holding a blob's parity reads one
// data shard fewer and decodes it; between them nodes 1 and 2 read every data shard
// node 3 holds); repair rewrites the damaged shards; then node 2 is killed and
// every blob pulls through nodes 1 and 3, which needs the rewritten shards. (Damage in
// a shard that holds only padding or parity is not met by reads; the scrubber finds
// it: see the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_shards_are_read_around_then_rebuilt() {
    let _heavy = berth_tests::heavy().await;
    let env = across(&[("BERTH_REPAIR_INTERVAL_SECS", "1")]);
    let cluster = Cluster::up_with_env(3, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let blobs = push_all(c, &[1, 2, 3]).await?;
        let damaged = damage_data_shards(c, 3, 2);
        ensure!(damaged > 0, "node 3 holds no data shard: nothing to test");
        for n in [1, 2] {
            pull_all(c, n, &blobs).await?;
        }
        let mut failures = 0;
        for n in 1..=3 {
            failures += metric(c, n, "berth_shard_checksum_failures").await?;
        }
        ensure!(
            failures > 0,
            "no checksum failure counted for {damaged} damaged shards"
        );

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut rebuilt = 0;
            for n in 1..=3 {
                rebuilt += metric(c, n, "berth_repair_rebuilt_shards").await?;
            }
            if rebuilt >= damaged as u64 {
                eprintln!("{rebuilt} of {damaged} damaged shards rebuilt");
                break;
            }
            if Instant::now() > deadline {
                bail!("only {rebuilt} of {damaged} damaged shards rebuilt");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        c.signal(2, "-9")?;
        for n in [1, 3] {
            pull_all(c, n, &blobs).await?;
        }
        Ok(())
    })
    .await;
}

/// Sum of a metric over `nodes`.
async fn metric_sum(c: &Cluster, nodes: &[u16], name: &str) -> Result<u64> {
    let mut sum = 0;
    for &n in nodes {
        sum += metric(c, n, name).await?;
    }
    Ok(sum)
}

// Proves that the scrubber finds damage no read meets and that repair then restores
// full redundancy: in a 3-node cluster (2+1) bytes are flipped in a PARITY shard file
// on one node and another blob's shard file is deleted on a second node; nothing is
// pulled. The scrubbers (a pass every 3 s
// here) find both, count them in `berth_scrub_damaged_shards_total`, and repair
// rewrites both files byte-identical to what they were. Then the third node, whose
// shards were all healthy, is killed: every blob must pull through the two damaged
// nodes, which needs the rewritten parity and the restored file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_rotten_parity_and_a_lost_shard_and_repair_restores_them() {
    let _heavy = berth_tests::heavy().await;
    let env = across(&[
        ("BERTH_REPAIR_INTERVAL_SECS", "1"),
        ("BERTH_SCRUB_INTERVAL_SECS", "3"),
    ]);
    let cluster = Cluster::up_with_env(3, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let blobs = push_all(c, &[1, 2, 3]).await?;
        let files: Vec<Vec<ShardFile>> = (1..=3).map(|n| c.shard_files(n)).collect();
        // The parity shard (index 2) with the most bytes, on whichever node holds it.
        let (rotten_node, parity) = (1..=3u16)
            .flat_map(|n| {
                files[usize::from(n) - 1]
                    .iter()
                    .filter(|f| f.index == 2)
                    .map(move |f| (n, f))
            })
            .max_by_key(|(_, f)| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
            .context("no parity shard file on any node")?;
        // A shard of another blob, on another node.
        let (lost_node, lost) = (1..=3u16)
            .filter(|&n| n != rotten_node)
            .find_map(|n| {
                files[usize::from(n) - 1]
                    .iter()
                    .find(|f| f.blob != parity.blob)
                    .map(|f| (n, f.path.clone()))
            })
            .context("no shard file of another blob on another node")?;
        let parity = parity.path.clone();
        let healthy = (1..=3u16)
            .find(|&n| n != rotten_node && n != lost_node)
            .expect("three nodes");
        let parity_bytes = std::fs::read(&parity)?;
        let lost_bytes = std::fs::read(&lost)?;
        let mut rotten = parity_bytes.clone();
        let (middle, last) = (rotten.len() / 2, rotten.len() - 1);
        rotten[middle] ^= 0x5a;
        rotten[last] ^= 0xa5;
        std::fs::write(&parity, &rotten)?;
        std::fs::remove_file(&lost)?;
        eprintln!(
            "flipped bytes in parity {} on node {rotten_node}, deleted {} on node {lost_node}",
            parity.display(),
            lost.display()
        );

        let all = [1, 2, 3];
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        loop {
            let found = metric_sum(c, &all, "berth_scrub_damaged_shards_total").await?;
            let rebuilt = metric_sum(c, &all, "berth_repair_rebuilt_shards").await?;
            let restored = std::fs::read(&parity).is_ok_and(|b| b == parity_bytes)
                && std::fs::read(&lost).is_ok_and(|b| b == lost_bytes);
            let mut passed = 0;
            for n in all {
                if metric(c, n, "berth_scrub_last_complete_pass_timestamp_seconds").await? > 0 {
                    passed += 1;
                }
            }
            if found >= 2 && rebuilt >= 2 && restored && passed == all.len() {
                eprintln!(
                    "scrub found {found} damaged shards, repair rebuilt {rebuilt}, in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "after {:?}: scrub found {found} damaged shards, repair rebuilt {rebuilt}, files restored: {restored}, nodes with a complete scrub pass: {passed}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(
            metric(c, rotten_node, "berth_scrub_damaged_shards_total").await? >= 1
                && metric(c, lost_node, "berth_scrub_damaged_shards_total").await? >= 1,
            "each damaged node's own scrubber must find its damage"
        );
        // A pass verifies every shard file or counts it damaged: once each node has
        // passed, the two together cover all three shards of every striped blob
        // (verified alone does after a second pass, which a quick repair need not
        // wait for).
        let verified = metric_sum(c, &all, "berth_scrub_verified_shards_total").await?;
        let verified_bytes = metric_sum(c, &all, "berth_scrub_verified_bytes_total").await?;
        let damaged = metric_sum(c, &all, "berth_scrub_damaged_shards_total").await?;
        let striped = sizes().iter().filter(|&&s| s > 64 * 1024).count() as u64;
        ensure!(
            verified + damaged >= 3 * striped && verified_bytes > 0,
            "{verified} shards ({verified_bytes} bytes) verified and {damaged} found damaged; \
             every pass covers {}",
            3 * striped
        );

        c.signal(healthy, "-9")?;
        for n in [rotten_node, lost_node] {
            pull_all(c, n, &blobs).await?;
        }
        Ok(())
    })
    .await;
}

/// Runs `berth cluster ARGS` and returns its standard output.
fn cluster_cli(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(berth_tests::server::berth_binary()?)
        .arg("cluster")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "berth cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// Proves that draining a node moves its shards before it goes: in a 4-node cluster
// (2+1, each blob on three of the four nodes) `berth cluster drain 4` marks node 4;
// repair moves every shard it holds onto nodes 1-3 (reading them from node 4) and
// deletes its files, `berth cluster status` counts down to 0 shards left, and new
// blobs are placed on nodes 1-3 only. Node 4 is then removed and stopped, node 1 is
// killed too, and every blob, old and new, pulls byte-identical through nodes 2 and 3:
// no blob lost redundancy with node 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_holds_no_shard_and_its_removal_loses_no_redundancy() {
    let _heavy = berth_tests::heavy().await;
    let env = across(&[("BERTH_REPAIR_INTERVAL_SECS", "1")]);
    let cluster = Cluster::up_with_env(4, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let mut blobs = push_all(c, &[1, 2, 3, 4]).await?;
        let on_4 = shard_files(c, 4);
        ensure!(on_4 > 0, "node 4 holds no shard: nothing to drain");

        let started = Instant::now();
        let said = cluster_cli(&["drain", "4", "--url", &c.url(2)])?;
        ensure!(said.contains("node 4 draining"), "drain answered {said:?}");
        let deadline = started + Duration::from_secs(120);
        loop {
            let status = cluster_cli(&["status", "--url", &c.url(1)])?;
            let files = shard_files(c, 4);
            if files == 0 && status.contains("node 4 draining: 0 shards left") {
                eprintln!(
                    "{on_4} shards drained off node 4 in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("node 4 still holds {files} shard files; status:\n{status}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rebuilt = metric_sum(c, &[1, 2, 3, 4], "berth_repair_rebuilt_shards").await?;
        ensure!(
            rebuilt >= on_4 as u64,
            "{rebuilt} shards moved for {on_4} on node 4"
        );

        // New blobs go around the draining node.
        blobs.extend(push_all(c, &[1, 4]).await?);
        ensure!(
            shard_files(c, 4) == 0,
            "a new blob was placed on the draining node"
        );

        let http = reqwest::Client::new();
        let resp = http
            .delete(format!("{}/api/v1/cluster/members/4", c.url(1)))
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "removing node 4: {}",
            resp.status()
        );
        c.signal(4, "-TERM")?;
        c.signal(1, "-9")?;
        for n in [2, 3] {
            pull_all(c, n, &blobs).await?;
        }
        Ok(())
    })
    .await;
}

// Proves per-project profiles: in a 3-node cluster striping 2+1 by default, project
// `mirror` is set to 1+1. Its new blobs get two shard files, on two nodes, while
// another project's blob gets three; each survives the loss of the node holding one
// of its shards. A profile the cluster cannot hold (9+3 on three one-disk nodes), a
// malformed one and a missing project are refused with 400, 400 and 404; null returns
// the project to the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_profile_decides_the_striping_of_its_new_blobs() {
    let _heavy = berth_tests::heavy().await;
    let cluster = Cluster::up_with_env(3, across(&[])).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let http = reqwest::Client::new();
        let profile_url = |p: &str| format!("{}/api/v1/projects/{p}/profile", c.url(2));
        let created = http
            .post(format!("{}/api/v1/projects", c.url(1)))
            .json(&serde_json::json!({ "name": "mirror" }))
            .send()
            .await?;
        ensure!(
            created.status() == 201,
            "create project: {}",
            created.status()
        );
        for (project, body, want) in [
            ("mirror", serde_json::json!({ "profile": "9+3" }), 400),
            ("mirror", serde_json::json!({ "profile": "2-1" }), 400),
            ("mirror", serde_json::json!({ "profile": "0+1" }), 400),
            ("nosuch", serde_json::json!({ "profile": "1+1" }), 404),
            ("mirror", serde_json::json!({ "profile": "1+1" }), 200),
        ] {
            let resp = http.put(profile_url(project)).json(&body).send().await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            ensure!(status == want, "PUT {project} {body}: {status} {text}");
            if want == 400 {
                ensure!(text.contains("\"error\""), "no error message: {text}");
            }
        }
        let shown: serde_json::Value = http.get(profile_url("mirror")).send().await?.json().await?;
        ensure!(shown["profile"] == "1+1", "GET shows {shown}");

        let mirrored = random_bytes(3 << 20);
        let striped = random_bytes(3 << 20);
        let mirrored_digest = Oci::new(&c.url(1))
            .push_blob("mirror/app", &mirrored)
            .await?;
        let striped_digest = Oci::new(&c.url(1)).push_blob(REPO, &striped).await?;
        let files = |digest: &str| -> Vec<usize> {
            (1..=3).map(|n| shard_files_of(c, n, digest)).collect()
        };
        let on_nodes = files(&mirrored_digest);
        ensure!(
            on_nodes.iter().sum::<usize>() == 2 && on_nodes.iter().all(|n| *n <= 1),
            "a 1+1 blob should have one shard file on each of two nodes: {on_nodes:?}"
        );
        let default_files = files(&striped_digest);
        ensure!(
            default_files == vec![1, 1, 1],
            "a 2+1 blob should have one shard file per node: {default_files:?}"
        );

        // The node holding the mirrored blob's first shard goes down; the other holds a
        // full copy.
        let victim = (1..=3u16)
            .find(|n| on_nodes[usize::from(*n) - 1] == 1)
            .expect("a node holds a shard");
        c.signal(victim, "-9")?;
        for survivor in (1..=3u16).filter(|n| *n != victim) {
            let oci = Oci::new(&c.url(survivor));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match oci.fetch_blob("mirror/app", &mirrored_digest).await {
                    Ok(got) => {
                        ensure!(got == mirrored, "mirrored blob differs through {survivor}");
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("retrying through node {survivor}: {e:#}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(e.context(format!("through node {survivor}"))),
                }
            }
        }

        let survivor = (1..=3u16).find(|n| *n != victim).expect("two survive");
        let url = format!("{}/api/v1/projects/mirror/profile", c.url(survivor));
        let deadline = Instant::now() + Duration::from_secs(30);
        let reset = loop {
            let resp = http
                .put(&url)
                .json(&serde_json::json!({ "profile": null }))
                .send()
                .await?;
            if resp.status() != 503 || Instant::now() > deadline {
                break resp;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        ensure!(reset.status() == 200, "reset: {}", reset.status());
        let shown: serde_json::Value = reset.json().await?;
        ensure!(shown["profile"].is_null(), "reset shows {shown}");
        Ok(())
    })
    .await;
}

/// Sends SIGCONT to a node stopped with SIGSTOP when dropped, so a failing test leaves
/// no process stopped (and `cluster.sh down` can end it).
struct Stopped<'a> {
    cluster: &'a Cluster,
    node: u16,
}

impl<'a> Stopped<'a> {
    fn stop(cluster: &'a Cluster, node: u16) -> Result<Stopped<'a>> {
        cluster.signal(node, "-STOP")?;
        Ok(Stopped { cluster, node })
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.signal(self.node, "-CONT") {
            eprintln!("could not continue node {}: {e:#}", self.node);
        }
    }
}

/// The follower (not `leader`) of a 3-node cluster that holds the most data shards
/// (index below `k` = 2) of `blobs` that a pull through `leader` reads, and how many.
/// Parity is on one node per blob, so the two followers together hold a data shard of
/// every blob that the leader reads.
fn follower_with_most_data_shards(
    c: &Cluster,
    leader: u16,
    blobs: &[(String, Vec<u8>)],
) -> (u16, usize) {
    // A leader holding a blob's parity reads it in place of data shard 1 and decodes
    // that one, so only data shard 0 of such a blob is read from a follower.
    let parity_here: Vec<String> = c
        .shard_files(leader)
        .into_iter()
        .filter(|f| f.index == 2)
        .map(|f| f.blob)
        .collect();
    (1..=3u16)
        .filter(|&n| n != leader)
        .map(|n| {
            let held = c
                .shard_files(n)
                .into_iter()
                .filter(|f| {
                    (f.index == 0 || (f.index == 1 && !parity_here.contains(&f.blob)))
                        && blobs
                            .iter()
                            .any(|(digest, _)| f.blob == digest.trim_start_matches("sha256:"))
                })
                .count();
            (n, held)
        })
        .max_by_key(|&(_, held)| held)
        .expect("two followers")
}

/// How long a pull of one of the blobs below may take while a node holding one of its
/// data shards is stopped: the hedge threshold (300 ms) and the transfer, with room for
/// a loaded machine. Without hedging the read waits for the stopped node until the
/// connection's keepalive gives up on it, at least 5 s (ping timeout) after the stop.
const PULL_AROUND_A_STOPPED_NODE_MAX: Duration = Duration::from_secs(4);

/// Pulls `digest` through `node` once, checks it and returns how long it took.
async fn timed_pull(c: &Cluster, node: u16, digest: &str, data: &[u8]) -> Result<Duration> {
    let started = Instant::now();
    let got = Oci::new(&c.url(node))
        .fetch_blob(REPO, digest)
        .await
        .with_context(|| format!("pulling {digest} through node {node}"))?;
    let took = started.elapsed();
    ensure!(
        got.len() == data.len() && sha256_digest(&got) == digest,
        "{digest} through node {node}: {} bytes, wrong content",
        got.len()
    );
    Ok(took)
}

// Proves that a pull does not wait for a hung node (issue 4: a slow shard is hedged
// after a latency threshold): in a 3-node 2+1 cluster, the follower holding the most
// data shards is stopped with SIGSTOP (its process keeps its connections but answers
// nothing), and every blob pulls byte-identical through the leader, each within
// `PULL_AROUND_A_STOPPED_NODE_MAX`; `berth_shard_hedged_reads` rises. In a second
// cluster with `--read-hedge-ms 0` the same kind of pull (a blob with a data shard on
// the stopped follower) takes longer than that bound and hedges nothing, so the bound
// is what hedging buys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_goes_around_a_stopped_node_within_the_hedge_threshold() {
    let _heavy = berth_tests::heavy().await;
    let sizes = [
        (3 << 20) + 5,
        300 * 1024 + 7,
        (5 << 20) + 3,
        (1 << 20) + 1,
        (2 << 20) + 11,
        700 * 1024,
    ];
    let cluster = Cluster::up_with_env(3, across(&[])).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let mut blobs = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let data = random_bytes(size);
            let node = 1 + (i % 3) as u16;
            let digest = Oci::new(&c.url(node)).push_blob(REPO, &data).await?;
            blobs.push((digest, data));
        }
        let leader = c.leader(&[1, 2, 3]).await?;
        let (victim, data_shards) = follower_with_most_data_shards(c, leader, &blobs);
        ensure!(data_shards > 0, "no follower holds a data shard");
        let before = metric(c, leader, "berth_shard_hedged_reads").await?;

        let stopped = Stopped::stop(c, victim)?;
        let started = Instant::now();
        for (digest, data) in &blobs {
            let took = timed_pull(c, leader, digest, data).await?;
            eprintln!(
                "{} bytes through node {leader}, node {victim} stopped: {took:?}",
                data.len()
            );
            ensure!(
                took < PULL_AROUND_A_STOPPED_NODE_MAX,
                "pulling {} bytes with node {victim} stopped took {took:?}",
                data.len()
            );
        }
        let all = started.elapsed();
        let hedged = metric(c, leader, "berth_shard_hedged_reads").await? - before;
        eprintln!(
            "every blob ({data_shards} with a data shard on node {victim}) in {all:?}; \
             {hedged} hedged stripe reads"
        );
        ensure!(hedged > 0, "no stripe read was hedged");
        drop(stopped);
        Ok(())
    })
    .await;
    drop(cluster);

    let env = across(&[("BERTH_READ_HEDGE_MS", "0")]);
    let cluster = Cluster::up_with_env(3, env).unwrap_or_else(|e| panic!("{e:#}"));
    run(&cluster, async |c| {
        let data = random_bytes(sizes[0]);
        let digest = Oci::new(&c.url(1)).push_blob(REPO, &data).await?;
        let blobs = [(digest.clone(), data.clone())];
        let leader = c.leader(&[1, 2, 3]).await?;
        let (victim, data_shards) = follower_with_most_data_shards(c, leader, &blobs);
        ensure!(data_shards > 0, "no follower holds a data shard");
        let stopped = Stopped::stop(c, victim)?;
        let took = timed_pull(c, leader, &digest, &data).await?;
        eprintln!("with hedging off, node {victim} stopped: {took:?}");
        ensure!(
            took > PULL_AROUND_A_STOPPED_NODE_MAX,
            "without hedging the pull took only {took:?}"
        );
        let hedged = metric(c, leader, "berth_shard_hedged_reads").await?;
        ensure!(hedged == 0, "{hedged} stripe reads hedged with hedging off");
        drop(stopped);
        Ok(())
    })
    .await;
}
