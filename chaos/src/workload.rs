//! The drill's workload: concurrent workers pushing blobs and images, repointing a few
//! shared tags over and over, reading tags, pulling blobs and manifests by digest
//! (hashing every body) and deleting manifests, each request to a random node. Every
//! request is recorded with its invoke and completion instants. Bounded by a deadline
//! and by the recorder's event bound.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::Client;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::history::{Op, Outcome, Phase, Recorder};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Repository whose tags are repointed by every worker.
pub const TAGS_REPO: &str = "chaos/tags";
/// Repository whose manifests are deleted.
pub const SCRATCH_REPO: &str = "chaos/scratch";
/// Per-request timeout: above berth's 5 s forwarding deadline plus an RPC timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Worker id of the drill's probes while a fault holds.
pub const PROBE_WORKER: u32 = u32::MAX - 1;
/// Pause after a failed request, so a dead node does not turn a worker into a spin loop.
const BACKOFF_AFTER_ERROR: Duration = Duration::from_millis(100);

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A node the workload talks to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: u64,
    pub url: String,
}

/// The HTTP client every drill request goes through: no proxies, bounded time.
pub fn client() -> Result<Client> {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(8)
        .build()
        .context("building the HTTP client")
}

/// Acknowledged content workers may pull or delete.
#[derive(Default)]
struct Known {
    blobs: Vec<(String, String)>,
    manifests: Vec<(String, String)>,
    scratch: Vec<String>,
}

/// Items kept in `Known` per list; older ones are forgotten (they are still verified).
const KNOWN_MAX: usize = 5_000;

fn remember(list: &mut Vec<(String, String)>, item: (String, String)) {
    if list.len() >= KNOWN_MAX {
        list.swap_remove(0);
    }
    list.push(item);
}

/// The base blobs every tag move in `TAGS_REPO` references.
#[derive(Clone)]
struct Base {
    config: (String, usize),
    layer: (String, usize),
}

pub struct Workload {
    client: Client,
    nodes: Vec<Endpoint>,
    rec: Arc<Recorder>,
    known: Mutex<Known>,
    hot_tags: usize,
    max_blob: usize,
    large_blob_every: u32,
    base: Mutex<Option<Base>>,
}

/// Largest "large" layer blob: above the inline size, so it is erasure-coded into
/// shard files (one stripe).
pub const LARGE_BLOB_BYTES_MAX: usize = 256 * 1024;
/// Smallest large blob: one byte above berth's inline threshold (64 KiB).
pub const LARGE_BLOB_BYTES_MIN: usize = 64 * 1024 + 1;

/// Result of one request: outcome plus the body for reads.
struct Answer {
    outcome: Outcome,
}

fn retry_after(h: &HeaderMap) -> bool {
    h.contains_key("retry-after")
}

impl Workload {
    pub fn new(
        nodes: Vec<Endpoint>,
        rec: Arc<Recorder>,
        hot_tags: usize,
        max_blob: usize,
        large_blob_every: u32,
    ) -> Result<Workload> {
        Ok(Workload {
            client: client()?,
            nodes,
            rec,
            known: Mutex::new(Known::default()),
            hot_tags: hot_tags.max(1),
            max_blob: max_blob.max(64),
            large_blob_every,
            base: Mutex::new(None),
        })
    }

    pub fn hot_tag_names(&self) -> Vec<String> {
        (0..self.hot_tags).map(|i| format!("hot-{i}")).collect()
    }

    fn random_node(&self, rng: &mut StdRng) -> &Endpoint {
        &self.nodes[rng.random_range(0..self.nodes.len())]
    }

    /// The node a worker sends all its requests to. Workers are spread evenly, so a
    /// dead or cut-off node stalls only its own workers while the others keep going;
    /// cross-node traffic comes from pulls of what other workers pushed.
    fn home(&self, worker: u32) -> &Endpoint {
        &self.nodes[worker as usize % self.nodes.len()]
    }

    async fn send(&self, req: reqwest::RequestBuilder, read_body: bool) -> Answer {
        match req.send().await {
            Err(e) => Answer {
                outcome: Outcome::failed(short_error(&e)),
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let mut outcome = Outcome {
                    status: Some(status),
                    retry_after: retry_after(&headers),
                    header_digest: headers
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                    ..Outcome::default()
                };
                match resp.bytes().await {
                    Ok(body) if read_body && (200..300).contains(&status) => {
                        outcome.body_digest = Some(sha256(&body));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The status arrived but the body did not: not a complete answer.
                        outcome.error = Some(format!("body: {}", short_error(&e)));
                        if (200..300).contains(&status) {
                            outcome.status = None;
                        }
                    }
                }
                Answer { outcome }
            }
        }
    }

    /// Runs `op` against `node`, records it, returns its outcome.
    async fn run(
        &self,
        worker: u32,
        phase: Phase,
        node: &Endpoint,
        op: Op,
        req: reqwest::RequestBuilder,
    ) -> Outcome {
        let read = matches!(
            op,
            Op::ReadTag { .. } | Op::PullBlob { .. } | Op::PullManifest { .. }
        );
        let invoke = self.rec.now_ms();
        let a = self.send(req, read).await;
        self.rec
            .record(worker, node.id, phase, invoke, op, a.outcome.clone());
        a.outcome
    }

    pub async fn push_blob(
        &self,
        worker: u32,
        node: &Endpoint,
        repo: &str,
        data: Vec<u8>,
    ) -> Outcome {
        let digest = sha256(&data);
        let req = self
            .client
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={digest}",
                node.url
            ))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        let op = Op::PushBlob {
            repo: repo.into(),
            digest: digest.clone(),
        };
        let out = self.run(worker, Phase::Workload, node, op, req).await;
        if out.ok() {
            remember(&mut self.known.lock().unwrap().blobs, (repo.into(), digest));
        }
        out
    }

    async fn put_manifest(
        &self,
        worker: u32,
        node: &Endpoint,
        repo: &str,
        tag: &str,
        body: Vec<u8>,
        moving: bool,
    ) -> (Outcome, String) {
        let digest = sha256(&body);
        let req = self
            .client
            .put(format!("{}/v2/{repo}/manifests/{tag}", node.url))
            .header(CONTENT_TYPE, MANIFEST_TYPE)
            .body(body);
        let op = if moving {
            Op::MoveTag {
                repo: repo.into(),
                tag: tag.into(),
                digest: digest.clone(),
            }
        } else {
            Op::PushManifest {
                repo: repo.into(),
                tag: tag.into(),
                digest: digest.clone(),
            }
        };
        let out = self.run(worker, Phase::Workload, node, op, req).await;
        if out.ok() {
            remember(
                &mut self.known.lock().unwrap().manifests,
                (repo.into(), digest.clone()),
            );
        }
        (out, digest)
    }

    /// Layer and config blobs, then a manifest under a tag of its own.
    async fn push_image(
        &self,
        worker: u32,
        seq: u64,
        rng: &mut StdRng,
        repo: &str,
    ) -> Option<String> {
        let large = self.large_blob_every > 0 && rng.random_ratio(1, self.large_blob_every);
        let size = if large {
            rng.random_range(LARGE_BLOB_BYTES_MIN..=LARGE_BLOB_BYTES_MAX)
        } else {
            rng.random_range(64..=self.max_blob)
        };
        let mut layer = vec![0u8; size];
        rng.fill_bytes(&mut layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
            "config": {"Labels": {"berth.chaos": format!("w{worker}-{seq}")}},
        }))
        .ok()?;
        let layer_desc = (sha256(&layer), layer.len());
        let config_desc = (sha256(&config), config.len());
        if !self
            .push_blob(worker, self.home(worker), repo, layer)
            .await
            .ok()
        {
            return None;
        }
        if !self
            .push_blob(worker, self.home(worker), repo, config)
            .await
            .ok()
        {
            return None;
        }
        let body = manifest(&config_desc, &layer_desc, &format!("w{worker}-{seq}"));
        let tag = format!("w{worker}-{seq}");
        let node = self.home(worker).clone();
        let (out, digest) = self
            .put_manifest(worker, &node, repo, &tag, body, false)
            .await;
        out.ok().then_some(digest)
    }

    /// Pushes the base blobs of the tag repository; retried, bounded.
    pub async fn setup(&self, rng: &mut StdRng) -> Result<()> {
        let layer = b"berth chaos base layer".to_vec();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
        }))?;
        let base = Base {
            config: (sha256(&config), config.len()),
            layer: (sha256(&layer), layer.len()),
        };
        for data in [layer, config] {
            let mut done = false;
            for _ in 0..20 {
                let node = self.random_node(rng).clone();
                if self
                    .push_blob(u32::MAX, &node, TAGS_REPO, data.clone())
                    .await
                    .ok()
                {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::ensure!(done, "the base blobs could not be pushed in 20 tries");
        }
        *self.base.lock().unwrap() = Some(base);
        Ok(())
    }

    async fn move_tag(&self, worker: u32, seq: u64, rng: &mut StdRng) -> Outcome {
        let base = self.base.lock().unwrap().clone().expect("setup ran");
        let tag = format!("hot-{}", rng.random_range(0..self.hot_tags));
        let body = manifest(&base.config, &base.layer, &format!("move w{worker}-{seq}"));
        let node = self.home(worker).clone();
        self.put_manifest(worker, &node, TAGS_REPO, &tag, body, true)
            .await
            .0
    }

    /// One tag move sent to `node` on behalf of no worker: the drill's open-loop
    /// probes while a fault holds.
    pub async fn probe_write(&self, node: &Endpoint, seq: u64) -> Outcome {
        let base = self.base.lock().unwrap().clone().expect("setup ran");
        let body = manifest(&base.config, &base.layer, &format!("probe {seq}"));
        self.put_manifest(PROBE_WORKER, node, TAGS_REPO, "hot-0", body, true)
            .await
            .0
    }

    /// `GET` of a tag's manifest, recorded as a tag read.
    pub async fn read_tag(
        &self,
        worker: u32,
        phase: Phase,
        node: &Endpoint,
        repo: &str,
        tag: &str,
    ) -> Outcome {
        let req = self
            .client
            .get(format!("{}/v2/{repo}/manifests/{tag}", node.url))
            .header(ACCEPT, MANIFEST_TYPE);
        let op = Op::ReadTag {
            repo: repo.into(),
            tag: tag.into(),
        };
        self.run(worker, phase, node, op, req).await
    }

    /// `GET` of a blob or manifest by digest.
    pub async fn pull(
        &self,
        worker: u32,
        phase: Phase,
        node: &Endpoint,
        repo: &str,
        digest: &str,
        blob: bool,
    ) -> Outcome {
        let (kind, op) = if blob {
            (
                "blobs",
                Op::PullBlob {
                    repo: repo.into(),
                    digest: digest.into(),
                },
            )
        } else {
            (
                "manifests",
                Op::PullManifest {
                    repo: repo.into(),
                    digest: digest.into(),
                },
            )
        };
        let req = self
            .client
            .get(format!("{}/v2/{repo}/{kind}/{digest}", node.url))
            .header(ACCEPT, MANIFEST_TYPE);
        self.run(worker, phase, node, op, req).await
    }

    async fn delete_manifest(&self, worker: u32, digest: String) -> Outcome {
        let node = self.home(worker).clone();
        let req = self
            .client
            .delete(format!("{}/v2/{SCRATCH_REPO}/manifests/{digest}", node.url));
        let op = Op::DeleteManifest {
            repo: SCRATCH_REPO.into(),
            digest,
        };
        self.run(worker, Phase::Workload, &node, op, req).await
    }

    /// One worker: random operations until the deadline (ms since the drill started),
    /// the stop flag, or the recorder's bound.
    pub async fn worker(
        self: Arc<Self>,
        worker: u32,
        seed: u64,
        deadline_ms: u64,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(worker) << 32));
        let mut seq = 0u64;
        while self.rec.now_ms() < deadline_ms
            && !self.rec.full()
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            seq += 1;
            let roll = rng.random_range(0..100);
            let ok = match roll {
                0..25 => {
                    let repo = format!("chaos/w{}", worker % 4);
                    self.push_image(worker, seq, &mut rng, &repo)
                        .await
                        .is_some()
                }
                25..50 => self.move_tag(worker, seq, &mut rng).await.ok(),
                50..70 => {
                    let tag = format!("hot-{}", rng.random_range(0..self.hot_tags));
                    let node = self.home(worker).clone();
                    let out = self
                        .read_tag(worker, Phase::Workload, &node, TAGS_REPO, &tag)
                        .await;
                    out.ok() || out.status == Some(404)
                }
                70..90 => {
                    let blob = roll < 80;
                    let pick = {
                        let known = self.known.lock().unwrap();
                        let list = if blob { &known.blobs } else { &known.manifests };
                        (!list.is_empty()).then(|| list[rng.random_range(0..list.len())].clone())
                    };
                    match pick {
                        Some((repo, digest)) => {
                            let node = self.home(worker).clone();
                            let out = self
                                .pull(worker, Phase::Workload, &node, &repo, &digest, blob)
                                .await;
                            out.ok() || out.status == Some(404)
                        }
                        None => true,
                    }
                }
                _ => {
                    let victim = {
                        let mut known = self.known.lock().unwrap();
                        let n = known.scratch.len();
                        (n > 0 && rng.random_bool(0.5))
                            .then(|| known.scratch.swap_remove(rng.random_range(0..n)))
                    };
                    match victim {
                        Some(digest) => {
                            let out = self.delete_manifest(worker, digest).await;
                            out.ok() || out.status == Some(404)
                        }
                        None => match self.push_image(worker, seq, &mut rng, SCRATCH_REPO).await {
                            Some(digest) => {
                                let mut known = self.known.lock().unwrap();
                                if known.scratch.len() < KNOWN_MAX {
                                    known.scratch.push(digest);
                                }
                                true
                            }
                            None => false,
                        },
                    }
                }
            };
            if !ok {
                tokio::time::sleep(BACKOFF_AFTER_ERROR).await;
            }
        }
    }
}

fn manifest(config: &(String, usize), layer: &(String, usize), note: &str) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config.0, "size": config.1},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer.0, "size": layer.1}],
        "annotations": {"berth.chaos.write": note},
    });
    serde_json::to_vec(&m).expect("a Value always serializes")
}

fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s.chars().take(160).collect()
    }
}
