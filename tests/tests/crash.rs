//! Crash and memory tests against a real berth process: a kill -9 loop over concurrent
//! pushes (acknowledged means durable, never a partial blob), and a large blob pushed
//! and pulled while the server's peak RSS stays bounded. Always spawns berth (a foreign
//! registry from `BERTH_TEST_REGISTRY` cannot be killed). `BERTH_TEST_LONG=1` runs the
//! long versions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::data::ByteStream;
use berth_tests::oci::{
    OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, header, manifest_bytes, upload_location, with_query,
};
use berth_tests::{
    Oci, Server, ServerOptions, StopSignal, heavy, long_mode, sha256_digest, unique_repo,
};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Concurrent pushers per iteration.
const WORKERS: usize = 4;
/// Images one worker pushes at most per iteration (the kill normally comes first).
const IMAGES_PER_WORKER_MAX: usize = 40;
/// Smallest and largest layer.
const LAYER_BYTES_MIN: u64 = 100 * 1024;
const LAYER_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Chunk size of chunked uploads and of generated bodies.
const CHUNK_BYTES: usize = 1024 * 1024;
/// How long workers may take to notice the kill and stop.
const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Peak RSS the server may reach while moving a large blob.
const SERVER_RSS_MAX_KIB: u64 = 256 * 1024;

/// One push attempt and whether the registry acknowledged it (201) before the kill.
#[derive(Clone, Debug)]
struct BlobRecord {
    repo: String,
    digest: String,
    len: u64,
    acked: bool,
    iteration: usize,
}

#[derive(Clone, Debug)]
struct ManifestRecord {
    repo: String,
    tag: String,
    digest: String,
    body: Vec<u8>,
    acked: bool,
    iteration: usize,
}

#[derive(Default)]
struct Ledger {
    blobs: Vec<BlobRecord>,
    manifests: Vec<ManifestRecord>,
}

type Shared = Arc<Mutex<Ledger>>;

fn record_blob(ledger: &Shared, rec: BlobRecord) -> usize {
    let mut l = ledger.lock().expect("ledger lock");
    l.blobs.push(rec);
    l.blobs.len() - 1
}

fn ack_blob(ledger: &Shared, index: usize) {
    ledger.lock().expect("ledger lock").blobs[index].acked = true;
}

/// How a layer is uploaded.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// POST, then PUT ?digest= with the whole body streamed.
    Monolithic,
    /// POST, PATCHes with Content-Range, empty PUT ?digest=.
    Chunked,
    /// POST, one PATCH with the whole body and no Content-Range (Docker), empty PUT.
    Streamed,
}

/// Uploads `len` bytes from `seed` to `repo`; Ok(true) when acknowledged with 201.
async fn upload(
    oci: &Oci,
    repo: &str,
    seed: u64,
    len: u64,
    digest: &str,
    mode: Mode,
) -> Result<bool> {
    let location = oci.start_upload(repo).await?;
    let close_url = match mode {
        Mode::Monolithic => {
            let resp = oci
                .http()
                .put(with_query(&location, "digest", digest))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len.to_string())
                .body(ByteStream::new(seed, len, CHUNK_BYTES).into_body())
                .send()
                .await?;
            return Ok(resp.status() == StatusCode::CREATED);
        }
        Mode::Chunked => {
            let mut location = location;
            let mut stream = ByteStream::new(seed, len, CHUNK_BYTES);
            let mut offset = 0u64;
            while let Some(chunk) = stream.next_chunk() {
                let end = offset + chunk.len() as u64 - 1;
                let resp = oci
                    .http()
                    .patch(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", format!("{offset}-{end}"))
                    .body(chunk)
                    .send()
                    .await?;
                location = upload_location(oci, resp, StatusCode::ACCEPTED, "PATCH").await?;
                offset = end + 1;
            }
            location
        }
        Mode::Streamed => {
            let resp = oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(ByteStream::new(seed, len, CHUNK_BYTES).into_body())
                .send()
                .await?;
            upload_location(oci, resp, StatusCode::ACCEPTED, "streamed PATCH").await?
        }
    };
    let resp = oci
        .http()
        .put(with_query(&close_url, "digest", digest))
        .header(CONTENT_LENGTH, "0")
        .send()
        .await?;
    Ok(resp.status() == StatusCode::CREATED)
}

/// A log-uniform layer size between the bounds, so small and large layers both occur.
fn layer_size() -> u64 {
    let (lo, hi) = ((LAYER_BYTES_MIN as f64).ln(), (LAYER_BYTES_MAX as f64).ln());
    rand::rng().random_range(lo..hi).exp() as u64
}

/// Pushes images until a request fails (the kill) or the bound is reached, recording
/// every attempt before it is sent and every acknowledgement after it arrives.
async fn worker(oci: Oci, repo: String, worker: usize, iteration: usize, ledger: Shared) {
    for n in 0..IMAGES_PER_WORKER_MAX {
        if push_one_image(&oci, &repo, worker, iteration, n, &ledger)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn push_one_image(
    oci: &Oci,
    repo: &str,
    worker: usize,
    iteration: usize,
    n: usize,
    ledger: &Shared,
) -> Result<()> {
    let layer_count = rand::rng().random_range(1..=2);
    let mut layers = Vec::new();
    for _ in 0..layer_count {
        let seed: u64 = rand::random();
        let len = layer_size();
        let digest = ByteStream::new(seed, len, CHUNK_BYTES).sha256();
        let mode = match rand::rng().random_range(0..3) {
            0 => Mode::Monolithic,
            1 => Mode::Chunked,
            _ => Mode::Streamed,
        };
        let index = record_blob(
            ledger,
            BlobRecord {
                repo: repo.to_string(),
                digest: digest.clone(),
                len,
                acked: false,
                iteration,
            },
        );
        if !upload(oci, repo, seed, len, &digest, mode).await? {
            bail!("upload not acknowledged");
        }
        ack_blob(ledger, index);
        layers.push(json!({ "mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len }));
    }
    let config = serde_json::to_vec(
        &json!({ "architecture": "amd64", "os": "linux", "worker": worker, "iteration": iteration, "n": n, "nonce": rand::random::<u64>() }),
    )?;
    let config_digest = sha256_digest(&config);
    let index = record_blob(
        ledger,
        BlobRecord {
            repo: repo.to_string(),
            digest: config_digest.clone(),
            len: config.len() as u64,
            acked: false,
            iteration,
        },
    );
    let location = oci.start_upload(repo).await?;
    let resp = oci
        .http()
        .put(with_query(&location, "digest", &config_digest))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(config.clone())
        .send()
        .await?;
    if resp.status() != StatusCode::CREATED {
        bail!("config not acknowledged");
    }
    ack_blob(ledger, index);
    let body = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers,
    }));
    let tag = format!("w{worker}-i{iteration}-n{n}");
    let digest = sha256_digest(&body);
    let index = {
        let mut l = ledger.lock().expect("ledger lock");
        l.manifests.push(ManifestRecord {
            repo: repo.to_string(),
            tag: tag.clone(),
            digest,
            body: body.clone(),
            acked: false,
            iteration,
        });
        l.manifests.len() - 1
    };
    let resp = oci.put_manifest(repo, &tag, OCI_MANIFEST, &body).await?;
    if resp.status() != StatusCode::CREATED {
        bail!("manifest not acknowledged");
    }
    ledger.lock().expect("ledger lock").manifests[index].acked = true;
    Ok(())
}

/// Streams a blob: None on 404, else (length, sha256). An interrupted body is an error.
async fn read_blob(oci: &Oci, repo: &str, digest: &str) -> Result<Option<(u64, String)>> {
    let mut resp = oci.get_blob(repo, digest).await?;
    match resp.status() {
        StatusCode::NOT_FOUND => return Ok(None),
        StatusCode::OK => {}
        other => bail!("GET /v2/{repo}/blobs/{digest}: {other}"),
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading /v2/{repo}/blobs/{digest}"))?
    {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Some((
        len,
        format!("sha256:{}", hex::encode(hasher.finalize())),
    )))
}

/// Checks every record: acknowledged ones read back exactly (fully for `full_from`
/// iteration on, HEAD for older ones); unacknowledged ones are absent or exact.
async fn check_ledger(oci: &Oci, ledger: &Shared, full_from: usize) -> Result<(usize, usize)> {
    let (blobs, manifests) = {
        let l = ledger.lock().expect("ledger lock");
        (l.blobs.clone(), l.manifests.clone())
    };
    let mut acked = 0;
    for b in &blobs {
        if b.acked && b.iteration < full_from {
            let resp = oci
                .request(reqwest::Method::HEAD, &oci.blob_url(&b.repo, &b.digest))
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "acknowledged blob {} (iteration {}) lost: HEAD {}",
                b.digest,
                b.iteration,
                resp.status()
            );
            ensure!(
                header(resp.headers(), "content-length") == b.len.to_string(),
                "acknowledged blob {}: HEAD Content-Length {:?}, expected {}",
                b.digest,
                header(resp.headers(), "content-length"),
                b.len
            );
            acked += 1;
            continue;
        }
        match read_blob(oci, &b.repo, &b.digest).await? {
            Some((len, digest)) => ensure!(
                len == b.len && digest == b.digest,
                "blob {} (acknowledged: {}) reads back as {len} bytes with digest {digest}, expected {} bytes",
                b.digest,
                b.acked,
                b.len
            ),
            None => ensure!(
                !b.acked,
                "acknowledged blob {} ({} bytes, iteration {}) lost after kill -9",
                b.digest,
                b.len,
                b.iteration
            ),
        }
        acked += usize::from(b.acked);
    }
    for m in &manifests {
        for reference in [m.digest.as_str(), m.tag.as_str()] {
            let resp = oci.get_manifest(&m.repo, reference).await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            match status {
                StatusCode::OK => ensure!(
                    body.as_ref() == m.body.as_slice(),
                    "manifest {}:{reference} reads back different bytes",
                    m.repo
                ),
                StatusCode::NOT_FOUND => ensure!(
                    !m.acked,
                    "acknowledged manifest {}:{reference} (iteration {}) lost after kill -9",
                    m.repo,
                    m.iteration
                ),
                other => bail!("GET manifest {}:{reference}: {other}", m.repo),
            }
        }
        acked += usize::from(m.acked);
    }
    Ok((acked, blobs.len() + manifests.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_push_loses_nothing_acknowledged_and_exposes_no_partial_blob() {
    // Proves: with concurrent monolithic, chunked and streamed pushes in flight, SIGKILL at
    // a random moment and a restart on the same data dir lose no acknowledged blob,
    // manifest or tag, never serve a partial or wrong blob, and the server comes back
    // healthy every time.
    let _heavy = heavy().await;
    let iterations = if long_mode() { 40 } else { 8 };
    let mut server = Server::start(ServerOptions {
        stop: StopSignal::Kill,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("could not start berth: {e:#}"));
    let oci = Oci::new(&server.url());
    let ledger: Shared = Arc::default();
    let result: Result<()> = async {
        for iteration in 0..iterations {
            let session = open_session(&oci).await.with_context(|| format!("opening the session of iteration {iteration}"))?;
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..WORKERS {
                let repo = unique_repo(&format!("crash/w{w}"));
                tasks.spawn(worker(oci.clone(), repo, w, iteration, ledger.clone()));
            }
            let delay = Duration::from_millis(rand::rng().random_range(100..2500));
            tokio::time::sleep(delay).await;
            ensure!(!server.has_exited(), "berth exited by itself during iteration {iteration}");
            server.kill9();
            let stopped = tokio::time::timeout(WORKER_STOP_TIMEOUT, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            ensure!(stopped.is_ok(), "pushers did not stop within {WORKER_STOP_TIMEOUT:?} after kill -9");
            let restarted = Instant::now();
            server.restart().await.with_context(|| format!("restart after kill -9 in iteration {iteration}"))?;
            let (acked, total) = check_ledger(&oci, &ledger, iteration).await.with_context(|| format!("after kill -9 at {delay:?} in iteration {iteration}"))?;
            let resumed = check_session(&oci, &session).await.with_context(|| format!("upload session open across kill -9 in iteration {iteration}"))?;
            eprintln!(
                "iteration {iteration}: killed after {delay:?}, back in {:?}, {acked}/{total} pushes acknowledged and intact, open upload session {}",
                restarted.elapsed(),
                if resumed { "resumed" } else { "BLOB_UPLOAD_UNKNOWN" }
            );
        }
        let (acked, _) = check_ledger(&oci, &ledger, 0).await.context("final full check")?;
        ensure!(acked > 0, "no push was ever acknowledged; the kill loop proved nothing");
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("---- berth log tail ----\n{}\n----", server.log_tail());
        panic!("{e:#}");
    }
}

/// An upload session with one acknowledged chunk, left open across the kill.
struct OpenSession {
    repo: String,
    location: String,
    seed: u64,
}

/// Bytes in the acknowledged chunk of an [`OpenSession`], and in the whole blob.
const SESSION_CHUNK_BYTES: u64 = 1024 * 1024;
const SESSION_BLOB_BYTES: u64 = SESSION_CHUNK_BYTES + 512 * 1024;

async fn open_session(oci: &Oci) -> Result<OpenSession> {
    let repo = unique_repo("crash/session");
    let seed: u64 = rand::random();
    let location = oci.start_upload(&repo).await?;
    let first = ByteStream::new(seed, SESSION_BLOB_BYTES, SESSION_CHUNK_BYTES as usize)
        .next_chunk()
        .context("empty stream")?;
    let resp = oci
        .http()
        .patch(&location)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("Content-Range", format!("0-{}", SESSION_CHUNK_BYTES - 1))
        .body(first)
        .send()
        .await?;
    let location =
        upload_location(oci, resp, StatusCode::ACCEPTED, "PATCH of the open session").await?;
    Ok(OpenSession {
        repo,
        location,
        seed,
    })
}

/// After the restart, a session that had an acknowledged chunk either is gone (404
/// BLOB_UPLOAD_UNKNOWN, the client restarts the upload) or resumes exactly where the
/// acknowledged bytes end and completes into the right blob. Returns whether it resumed.
async fn check_session(oci: &Oci, s: &OpenSession) -> Result<bool> {
    let resp = oci.http().get(&s.location).send().await?;
    if resp.status() == StatusCode::NOT_FOUND {
        berth_tests::oci::expect_error(
            "GET of the open session after restart",
            resp,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await?;
        return Ok(false);
    }
    let range = header(resp.headers(), "range");
    let status = resp.status();
    let expected = format!("0-{}", SESSION_CHUNK_BYTES - 1);
    ensure!(
        status == StatusCode::NO_CONTENT && range == expected,
        "GET of the open session after restart: expected 204 with Range {expected} or 404, got {status} with Range {range:?}"
    );
    let mut stream = ByteStream::new(s.seed, SESSION_BLOB_BYTES, SESSION_CHUNK_BYTES as usize);
    stream.next_chunk();
    let rest = stream.next_chunk().context("stream ended early")?;
    let location = header(resp.headers(), "location");
    ensure!(
        !location.is_empty(),
        "GET of the resumable session: 204 without Location"
    );
    let location = oci.resolve(&location);
    let resp = oci
        .http()
        .patch(&location)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(
            "Content-Range",
            format!("{SESSION_CHUNK_BYTES}-{}", SESSION_BLOB_BYTES - 1),
        )
        .body(rest)
        .send()
        .await?;
    let location = upload_location(
        oci,
        resp,
        StatusCode::ACCEPTED,
        "PATCH resuming the session",
    )
    .await?;
    let digest = ByteStream::new(s.seed, SESSION_BLOB_BYTES, SESSION_CHUNK_BYTES as usize).sha256();
    let resp = oci
        .http()
        .put(with_query(&location, "digest", &digest))
        .header(CONTENT_LENGTH, "0")
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::CREATED,
        "closing the resumed session: {}",
        resp.status()
    );
    let got = read_blob(oci, &s.repo, &digest).await?;
    ensure!(
        got == Some((SESSION_BLOB_BYTES, digest.clone())),
        "resumed blob reads back as {got:?}"
    );
    Ok(true)
}

/// Peak resident set size of `pid` in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    line.split_whitespace()
        .nth(1)
        .context("empty VmHWM")?
        .parse()
        .context("VmHWM is not a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_streams_through_with_bounded_server_memory() {
    // Proves: a 512 MiB blob (4 GiB with BERTH_TEST_LONG=1) pushed as one streamed PATCH
    // and pulled back whole and by range keeps its digest, while the server's peak RSS
    // stays under 256 MiB: bytes are streamed, never buffered. The test never holds the
    // blob in memory either.
    let _heavy = heavy().await;
    let len: u64 = if long_mode() { 4 << 30 } else { 512 << 20 };
    let server = Server::start(ServerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("could not start berth: {e:#}"));
    let oci = Oci::new(&server.url());
    let pid = server.pid().expect("server runs");
    let result: Result<()> = async {
        let seed: u64 = rand::random();
        let digest = ByteStream::new(seed, len, CHUNK_BYTES).sha256();
        let repo = unique_repo("crash/large");
        let started = Instant::now();
        ensure!(upload(&oci, &repo, seed, len, &digest, Mode::Streamed).await?, "push of {len} bytes not acknowledged");
        let pushed = started.elapsed();
        let after_push = peak_rss_kib(pid)?;
        let (got_len, got_digest) = read_blob(&oci, &repo, &digest).await?.context("large blob not found after push")?;
        ensure!(got_len == len && got_digest == digest, "pulled {got_len} bytes with {got_digest}, expected {len} bytes with {digest}");
        let start = len - 1_000_000;
        let resp = oci.http().get(oci.blob_url(&repo, &digest)).header("Range", format!("bytes={start}-")).send().await?;
        ensure!(resp.status() == StatusCode::PARTIAL_CONTENT, "ranged GET of the tail: {}", resp.status());
        let tail = resp.bytes().await?;
        let mut expected = ByteStream::new(seed, len, CHUNK_BYTES);
        let mut offset = 0u64;
        let mut want = Vec::with_capacity(1_000_000);
        while let Some(chunk) = expected.next_chunk() {
            let end = offset + chunk.len() as u64;
            if end > start {
                let from = start.saturating_sub(offset) as usize;
                want.extend_from_slice(&chunk[from..]);
            }
            offset = end;
        }
        ensure!(tail.as_ref() == want.as_slice(), "ranged tail bytes differ ({} bytes)", tail.len());
        let peak = peak_rss_kib(pid)?;
        eprintln!("{len} bytes: pushed in {pushed:?}, server VmHWM {after_push} KiB after push, {peak} KiB after pull");
        ensure!(peak < SERVER_RSS_MAX_KIB, "server peak RSS {peak} KiB exceeds {SERVER_RSS_MAX_KIB} KiB while moving {len} bytes");
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("---- berth log tail ----\n{}\n----", server.log_tail());
        panic!("{e:#}");
    }
}

/// Blobs pushed for the scrub test: more than one scrub page, each above the inline
/// size so it is stored as a shard file.
const SCRUB_BLOBS: usize = 300;
const SCRUB_BLOB_BYTES: usize = 70 * 1024;

/// The bytes read by the first pass that `log` (berth's JSON log lines) reports
/// complete.
fn scrubbed_bytes(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "scrub pass complete")?["fields"]["bytes"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_pass_cut_by_kill9_goes_on_where_it_stopped() {
    // Proves: a scrub pass records how far it has come in `<data>/scrub.json`, and a
    // node killed mid-pass goes on from there when it starts again, at once, instead of
    // waiting for its next pass or starting over: the pass it completes after the
    // restart reads a part of the shards, not all of them. At 1 MiB/s over ~21 MB a
    // pass takes ~20 s and records its progress every 10 s.
    let _heavy = heavy().await;
    let mut server = Server::start(ServerOptions {
        args: ["--scrub-interval-secs", "20", "--scrub-mib-per-sec", "1"]
            .map(String::from)
            .to_vec(),
        stop: StopSignal::Kill,
        ..ServerOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("could not start berth: {e:#}"));
    let oci = Oci::new(&server.url());
    let record = server.data_dir().join("scrub.json");
    let result: Result<()> = async {
        let repo = unique_repo("crash/scrub");
        let mut rng = rand::rng();
        for _ in 0..SCRUB_BLOBS {
            let mut data = vec![0u8; SCRUB_BLOB_BYTES];
            rng.fill(&mut data[..]);
            oci.push_blob(&repo, &data).await?;
        }
        let total = (SCRUB_BLOBS * SCRUB_BLOB_BYTES) as u64;

        let deadline = Instant::now() + Duration::from_secs(90);
        let mark = loop {
            let text = std::fs::read_to_string(&record).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(mark) = json.get("resume_after").and_then(|m| m.as_str()) {
                ensure!(
                    json.get("last_pass").is_none_or(|p| p.is_null()),
                    "a pass completed before any progress was recorded: {text}"
                );
                break mark.to_owned();
            }
            ensure!(
                Instant::now() < deadline,
                "no scrub progress recorded in 90 s: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        server.kill9();
        let log_before = std::fs::metadata(server.log_path())?.len() as usize;
        server.restart().await?;

        let deadline = Instant::now() + Duration::from_secs(90);
        let resumed = loop {
            let log = std::fs::read_to_string(server.log_path())?;
            if let Some(bytes) = scrubbed_bytes(&log[log_before..]) {
                ensure!(
                    log[log_before..].contains("going on with the pass a restart interrupted"),
                    "the pass after the restart did not resume"
                );
                break bytes;
            }
            ensure!(
                Instant::now() < deadline,
                "no scrub pass completed within 90 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("progress mark {mark}; the resumed pass read {resumed} of {total} bytes");
        ensure!(resumed > 0, "the resumed pass read nothing");
        ensure!(
            resumed < total * 9 / 10,
            "the resumed pass read {resumed} of {total} bytes: it started over"
        );
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record)?)?;
        ensure!(
            json.get("resume_after").is_none(),
            "a completed pass leaves its progress mark: {json}"
        );
        ensure!(
            json.get("last_pass").and_then(|p| p.as_u64()).is_some(),
            "the completed pass is not recorded: {json}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("---- berth log tail ----\n{}\n----", server.log_tail());
        panic!("{e:#}");
    }
}
