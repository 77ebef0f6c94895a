//! Node lifecycle against a real berth process: idle uploads expire and their staged
//! bytes are removed, SIGTERM drains in-flight uploads before exiting, blobs are
//! erasure-coded across several disks and survive the loss of `m` of them, and the
//! operational endpoints answer.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::{Oci, Server, ServerOptions, random_bytes, sha256_digest, unique_repo};
use futures::StreamExt;

/// Files below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn start(opts: ServerOptions) -> Server {
    match Server::start(opts).await {
        Ok(s) => s,
        Err(e) => panic!("could not start berth: {e:#}"),
    }
}

// Proves that an upload left idle past the TTL is cancelled (BLOB_UPLOAD_UNKNOWN) and
// its staged shard files are removed, without a restart.
#[tokio::test]
async fn idle_upload_expires_and_its_staged_bytes_are_removed() {
    let server = start(ServerOptions {
        env: vec![("BERTH_UPLOAD_TTL_SECS".into(), "2".into())],
        ..ServerOptions::default()
    })
    .await;
    let oci = Oci::new(&server.url());
    let result: Result<()> = async {
        let repo = unique_repo("ttl");
        let location = oci.start_upload(&repo).await?;
        // Several stripes, so whole stripes reach the staging files on disk.
        let chunk = random_bytes(3 * 1024 * 1024);
        let resp = oci
            .http()
            .patch(oci.resolve(&location))
            .header("Content-Type", "application/octet-stream")
            .body(chunk)
            .send()
            .await?;
        ensure!(resp.status() == 202, "PATCH answered {}", resp.status());
        let staging = server.data_dir().join("disk0").join("staging");
        ensure!(
            !files_under(&staging).is_empty(),
            "no staged bytes after PATCH"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let resp = oci.http().get(oci.resolve(&location)).send().await?;
            if resp.status() == 404 {
                let body: serde_json::Value = resp.json().await?;
                ensure!(body["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", "{body}");
                break;
            }
            ensure!(
                resp.status() == 204,
                "upload status answered {}",
                resp.status()
            );
            if Instant::now() > deadline {
                bail!("upload still open 15 s after a 2 s TTL");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!(
            files_under(&staging).is_empty(),
            "staged files remain after expiry: {:?}",
            files_under(&staging)
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n--- log ---\n{}", server.log_tail());
    }
}

// Proves that SIGTERM lets an upload that is streaming finish with 201, that the
// process then exits by itself, and that the blob is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_inflight_upload_then_exits() {
    let mut server = start(ServerOptions::default()).await;
    let oci = Oci::new(&server.url());
    let repo = unique_repo("drain");
    let data = random_bytes(8 << 20);
    let digest = sha256_digest(&data);
    let location = oci.start_upload(&repo).await.unwrap();
    // A body that trickles out over about two seconds.
    let chunks: Vec<bytes::Bytes> = data
        .chunks(256 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let body = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        Ok::<_, std::io::Error>(c)
    });
    let url = berth_tests::oci::with_query(&oci.resolve(&location), "digest", &digest);
    let put = oci
        .http()
        .put(url)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let put = tokio::spawn(put);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exited = tokio::task::block_in_place(|| server.terminate());
    let resp = put.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201, "in-flight upload was not completed");
    assert!(exited, "berth did not exit after SIGTERM");
    server.restart().await.unwrap();
    let oci = Oci::new(&server.url());
    let got = oci
        .http()
        .get(oci.blob_url(&repo, &digest))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&got), digest);
}

// Proves that with four disks and profile 2+2 a blob is spread over all four, and
// still reads back byte-identical after the shard files on two disks are destroyed
// (one deleted, one corrupted), with the repair counted in /metrics.
#[tokio::test]
async fn blobs_survive_losing_m_of_k_plus_m_disks() {
    let server = start(ServerOptions {
        disks: 4,
        profile: Some("2+2".into()),
        ..ServerOptions::default()
    })
    .await;
    let oci = Oci::new(&server.url());
    let result: Result<()> = async {
        let repo = unique_repo("ec");
        let data = random_bytes(5 * 1024 * 1024 + 123);
        let digest = oci.push_blob(&repo, &data).await?;
        let hex = digest.trim_start_matches("sha256:");
        let mut shard_files = Vec::new();
        for disk in server.disk_dirs() {
            let files: Vec<_> = files_under(&disk.join("blobs"))
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(hex))
                .collect();
            ensure!(
                files.len() == 1,
                "disk {} holds {} shard files",
                disk.display(),
                files.len()
            );
            shard_files.push(files[0].clone());
        }
        // Destroy the two data shards (file names end in the shard index), so every
        // read must be rebuilt from parity.
        let by_index = |i: usize| {
            shard_files
                .iter()
                .find(|p| p.extension().is_some_and(|e| e == i.to_string().as_str()))
                .cloned()
                .with_context(|| format!("no shard file with index {i}: {shard_files:?}"))
        };
        std::fs::remove_file(by_index(0)?).context("deleting a shard file")?;
        let corrupt_path = by_index(1)?;
        let mut corrupt = std::fs::read(&corrupt_path)?;
        let mid = corrupt.len() / 2;
        for b in &mut corrupt[mid..mid + 64] {
            *b ^= 0xff;
        }
        std::fs::write(&corrupt_path, corrupt)?;
        let got = oci.http().get(oci.blob_url(&repo, &digest)).send().await?;
        ensure!(got.status() == 200, "GET answered {}", got.status());
        let got = got.bytes().await?;
        ensure!(
            got.len() == data.len() && got[..] == data[..],
            "bytes differ after losing two shards"
        );
        let ranged = oci
            .http()
            .get(oci.blob_url(&repo, &digest))
            .header("Range", "bytes=3000000-3000099")
            .send()
            .await?;
        ensure!(ranged.status() == 206);
        ensure!(ranged.bytes().await?[..] == data[3_000_000..3_000_100]);
        let metrics = oci
            .http()
            .get(oci.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let reconstructions = metrics
            .lines()
            .find(|l| l.starts_with("berth_shard_reconstructions "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .context("no berth_shard_reconstructions in /metrics")?;
        ensure!(
            reconstructions >= 1.0,
            "reconstructions = {reconstructions}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n--- log ---\n{}", server.log_tail());
    }
}

// Proves the operational endpoints answer and /metrics counts requests by route.
#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = start(ServerOptions::default()).await;
    let oci = Oci::new(&server.url());
    for path in ["/healthz", "/readyz"] {
        let resp = oci.http().get(oci.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = oci.http().get(oci.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = oci
        .http()
        .get(oci.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "berth_http_requests_total{route=\"base\",method=\"GET\",status=\"200\"}",
        "berth_http_request_duration_seconds_bucket",
        "berth_raft_is_leader 1",
        "berth_disk_free_bytes",
        "berth_blob_bytes_received_total",
    ] {
        assert!(text.contains(family), "/metrics lacks {family}:\n{text}");
    }
}

// Proves that a blob deleted from the only repository that linked it is collected in
// the background: its shard files disappear from disk, and it stays unknown.
#[tokio::test]
async fn deleted_blob_is_collected_from_disk() {
    let server = start(ServerOptions {
        env: vec![("BERTH_UPLOAD_TTL_SECS".into(), "4".into())],
        ..ServerOptions::default()
    })
    .await;
    let oci = Oci::new(&server.url());
    let result: Result<()> = async {
        let repo = unique_repo("gc");
        let keep = random_bytes(2 * 1024 * 1024);
        let keep_digest = oci.push_blob(&repo, &keep).await?;
        let data = random_bytes(3 * 1024 * 1024);
        let digest = oci.push_blob(&repo, &data).await?;
        let blobs = server.data_dir().join("disk0").join("blobs");
        let hex = digest.trim_start_matches("sha256:").to_owned();
        let shard_files = |hex: &str| -> Vec<std::path::PathBuf> {
            files_under(&blobs)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(hex))
                .collect()
        };
        ensure!(!shard_files(&hex).is_empty(), "no shard files after push");
        let resp = oci
            .http()
            .delete(oci.blob_url(&repo, &digest))
            .send()
            .await?;
        ensure!(resp.status() == 202, "DELETE answered {}", resp.status());
        let deadline = Instant::now() + Duration::from_secs(15);
        while !shard_files(&hex).is_empty() {
            if Instant::now() > deadline {
                bail!("shard files of a deleted blob remain after 15 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let resp = oci.http().get(oci.blob_url(&repo, &digest)).send().await?;
        ensure!(
            resp.status() == 404,
            "deleted blob answered {}",
            resp.status()
        );
        let kept = oci
            .http()
            .get(oci.blob_url(&repo, &keep_digest))
            .send()
            .await?
            .bytes()
            .await?;
        ensure!(
            kept[..] == keep[..],
            "a linked blob was damaged by collection"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n--- log ---\n{}", server.log_tail());
    }
}

/// The value of an unlabelled metric in a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// Proves that upkeep passes on an idle node write nothing to the Raft log (no
// periodic proposals), and that the received-bytes counter counts exactly the blob
// bytes clients sent, whichever way they were uploaded.
#[tokio::test]
async fn idle_upkeep_writes_no_log_entries_and_bytes_in_are_exact() {
    // A 4 s TTL runs upkeep every second.
    let server = start(ServerOptions {
        env: vec![("BERTH_UPLOAD_TTL_SECS".into(), "4".into())],
        ..ServerOptions::default()
    })
    .await;
    let oci = Oci::new(&server.url());
    let result: Result<()> = async {
        let repo = unique_repo("idle");
        let a = random_bytes(100_000);
        let b = random_bytes(300_000);
        oci.push_blob(&repo, &a).await?;
        oci.push_blob_chunked(&repo, &b, 64 * 1024).await?;
        let scrape = async || -> Result<String> {
            Ok(oci
                .http()
                .get(oci.url("/metrics"))
                .send()
                .await?
                .text()
                .await?)
        };
        let text = scrape().await?;
        let received =
            metric(&text, "berth_blob_bytes_received_total").context("no bytes counter")?;
        ensure!(
            received == (a.len() + b.len()) as f64,
            "bytes received {received}"
        );
        let before = metric(&text, "berth_raft_last_log_index").context("no log index")?;
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let after =
            metric(&scrape().await?, "berth_raft_last_log_index").context("no log index")?;
        ensure!(
            after == before,
            "an idle node grew its log from {before} to {after}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n--- log ---\n{}", server.log_tail());
    }
}
