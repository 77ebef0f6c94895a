//! Prometheus metrics: requests by route, method and status, latency histograms,
//! blob bytes in and out, the scrubber's counters, and Raft, disk, repair,
//! restripe and rebalancing gauges refreshed at scrape time.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use berth_blobstore::BlobStore;
use berth_consensus::RaftStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::oci::RouteLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    disk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// The registry of every metric this node exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteOnly, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    raft_term: Gauge,
    raft_last_applied: Gauge,
    raft_last_log: Gauge,
    raft_is_leader: Gauge,
    disk_total: Family<DiskLabels, Gauge>,
    disk_free: Family<DiskLabels, Gauge>,
    shard_checksum_failures: Gauge,
    shard_reconstructions: Gauge,
    hedged_reads: Gauge,
    shared_reads: Gauge,
    repair_shards: Gauge,
    repair_bytes: Gauge,
    repair_failures: Gauge,
    repair_backlog: Gauge,
    scrub_shards: Counter,
    scrub_bytes: Counter,
    scrub_damaged: Counter,
    scrub_last_pass: Gauge,
    drain_left: Family<NodeLabels, Gauge>,
    rebalance_shards: Gauge,
    rebalance_bytes: Gauge,
    rebalance_rounds: Gauge,
    rebalance_misplaced: Gauge,
    restripe: RestripeGauges,
}

/// Gauges of restriping (`crate::restripe`).
#[derive(Default)]
struct RestripeGauges {
    blobs: Gauge,
    bytes: Gauge,
    failures: Gauge,
    left: Gauge,
    waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let m = Metrics {
            requests,
            latency,
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            raft_term: Gauge::default(),
            raft_last_applied: Gauge::default(),
            raft_last_log: Gauge::default(),
            raft_is_leader: Gauge::default(),
            disk_total: Family::default(),
            disk_free: Family::default(),
            shard_checksum_failures: Gauge::default(),
            shard_reconstructions: Gauge::default(),
            hedged_reads: Gauge::default(),
            shared_reads: Gauge::default(),
            repair_shards: Gauge::default(),
            repair_bytes: Gauge::default(),
            repair_failures: Gauge::default(),
            repair_backlog: Gauge::default(),
            scrub_shards: Counter::default(),
            scrub_bytes: Counter::default(),
            scrub_damaged: Counter::default(),
            scrub_last_pass: Gauge::default(),
            drain_left: Family::default(),
            restripe: RestripeGauges::default(),
            rebalance_shards: Gauge::default(),
            rebalance_bytes: Gauge::default(),
            rebalance_rounds: Gauge::default(),
            rebalance_misplaced: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register(
            "blob_bytes_received",
            "Blob bytes received from clients",
            m.bytes_in.clone(),
        );
        registry.register(
            "blob_bytes_sent",
            "Blob bytes sent to clients",
            m.bytes_out.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_last_applied_index",
            "Last log index applied to the state machine",
            m.raft_last_applied.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index in the Raft log",
            m.raft_last_log.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this node is the Raft leader",
            m.raft_is_leader.clone(),
        );
        registry.register(
            "disk_total_bytes",
            "Capacity of each data disk",
            m.disk_total.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free space of each data disk",
            m.disk_free.clone(),
        );
        registry.register(
            "shard_checksum_failures",
            "Shard chunks whose checksum did not match on read",
            m.shard_checksum_failures.clone(),
        );
        registry.register(
            "shard_reconstructions",
            "Stripes rebuilt from parity on read",
            m.shard_reconstructions.clone(),
        );
        registry.register(
            "shard_hedged_reads",
            "Stripe reads that went around a slow shard (a chunk later than the read hedge threshold, or from a source already late in that read)",
            m.hedged_reads.clone(),
        );
        registry.register(
            "shard_shared_reads",
            "Chunk reads served from the buffer of a read that held the same chunk, without reading the disk",
            m.shared_reads.clone(),
        );
        registry.register(
            "repair_rebuilt_shards",
            "Shards this node rebuilt onto a new home and moved in the layout",
            m.repair_shards.clone(),
        );
        registry.register(
            "repair_rebuilt_bytes",
            "Shard bytes written by repair on this node",
            m.repair_bytes.clone(),
        );
        registry.register(
            "repair_failures",
            "Shard rebuilds that failed (retried on a later pass)",
            m.repair_failures.clone(),
        );
        registry.register(
            "repair_backlog_shards",
            "Shards known to need a rebuild: this node's queue and, on the leader, the last scan's finds",
            m.repair_backlog.clone(),
        );
        registry.register(
            "scrub_verified_shards",
            "Shard files the scrubber read and checked on this node's disks",
            m.scrub_shards.clone(),
        );
        registry.register(
            "scrub_verified_bytes",
            "Bytes of shard files the scrubber read and checked",
            m.scrub_bytes.clone(),
        );
        registry.register(
            "scrub_damaged_shards",
            "Shard files the scrubber found missing, unreadable or corrupt and queued for repair",
            m.scrub_damaged.clone(),
        );
        registry.register(
            "scrub_last_complete_pass_timestamp_seconds",
            "Unix time of the scrubber's last complete pass on this node (0: none yet)",
            m.scrub_last_pass.clone(),
        );
        registry.register(
            "drain_shards_left",
            "On the leader, per draining node covered by a complete repair scan: the shards it still holds",
            m.drain_left.clone(),
        );
        registry.register(
            "restripe_blobs",
            "Blobs this node restriped to the profile wanted for them",
            m.restripe.blobs.clone(),
        );
        registry.register(
            "restripe_bytes",
            "Bytes of content of the blobs this node restriped",
            m.restripe.bytes.clone(),
        );
        registry.register(
            "restripe_failures",
            "Restripes that failed (retried on the next round)",
            m.restripe.failures.clone(),
        );
        registry.register(
            "restripe_blobs_left",
            "On the leader, blobs its last complete round found on another profile than the wanted one and did not restripe (-1: no complete round yet)",
            m.restripe.left.clone(),
        );
        registry.register(
            "restripe_old_layouts_waiting",
            "Replaced layouts whose shard files wait for their deletion",
            m.restripe.waiting.clone(),
        );
        registry.register(
            "rebalance_moved_shards",
            "Shards this node (as leader) moved to where placement wants them",
            m.rebalance_shards.clone(),
        );
        registry.register(
            "rebalance_moved_bytes",
            "Shard bytes copied by rebalancing on this node",
            m.rebalance_bytes.clone(),
        );
        registry.register(
            "rebalance_rounds",
            "Complete rebalancing rounds (walks over every blob layout) this node made",
            m.rebalance_rounds.clone(),
        );
        registry.register(
            "rebalance_misplaced_shards",
            "Shards the last complete rebalancing round found misplaced and could not move",
            m.rebalance_misplaced.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn blob_bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    pub fn blob_bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }

    /// A shard file the scrubber checked, `bytes` read.
    pub fn scrub_verified(&self, bytes: u64) {
        self.scrub_shards.inc();
        self.scrub_bytes.inc_by(bytes);
    }

    /// A shard file the scrubber found damaged.
    pub fn scrub_damaged(&self) {
        self.scrub_damaged.inc();
    }

    /// A scrub pass completed at `at`.
    pub fn scrub_pass_completed(&self, at: std::time::SystemTime) {
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.scrub_last_pass
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteOnly {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Refreshes the gauges and encodes everything in the OpenMetrics text format.
    pub fn render(
        &self,
        raft: &RaftStatus,
        store: &BlobStore,
        repair: &crate::repair::RepairStats,
    ) -> String {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(as_gauge(raft.term));
        self.raft_last_applied
            .set(as_gauge(raft.last_applied.unwrap_or(0)));
        self.raft_last_log
            .set(as_gauge(raft.last_log_index.unwrap_or(0)));
        self.raft_is_leader.set(i64::from(raft.is_leader));
        for disk in store.disk_stats() {
            let labels = DiskLabels {
                disk: disk.id.to_string(),
            };
            self.disk_total
                .get_or_create(&labels)
                .set(as_gauge(disk.total_bytes));
            self.disk_free
                .get_or_create(&labels)
                .set(as_gauge(disk.free_bytes));
        }
        let counters = store.counters();
        self.shard_checksum_failures
            .set(as_gauge(counters.checksum_failures()));
        self.shard_reconstructions
            .set(as_gauge(counters.reconstructions()));
        self.hedged_reads.set(as_gauge(counters.hedged_reads()));
        self.shared_reads.set(as_gauge(counters.shared_reads()));
        self.repair_shards.set(as_gauge(repair.rebuilt_shards));
        self.repair_bytes.set(as_gauge(repair.rebuilt_bytes));
        self.repair_failures.set(as_gauge(repair.failures));
        self.repair_backlog.set(as_gauge(repair.backlog_shards));
        let rebalance = &repair.rebalance;
        self.rebalance_shards.set(as_gauge(rebalance.moved_shards));
        self.rebalance_bytes.set(as_gauge(rebalance.moved_bytes));
        self.rebalance_rounds.set(as_gauge(rebalance.rounds));
        self.rebalance_misplaced.set(as_gauge(
            rebalance.last_round.as_ref().map_or(0, |r| r.left_shards),
        ));
        self.drain_left.clear();
        for (node, left) in &repair.drain_shards_left {
            self.drain_left
                .get_or_create(&NodeLabels {
                    node: node.to_string(),
                })
                .set(as_gauge(*left));
        }
        let r = &repair.restripe;
        self.restripe.blobs.set(as_gauge(r.restriped_blobs));
        self.restripe.bytes.set(as_gauge(r.restriped_bytes));
        self.restripe.failures.set(as_gauge(r.failures));
        self.restripe.left.set(r.blobs_left.map_or(-1, as_gauge));
        self.restripe.waiting.set(as_gauge(r.old_layouts_waiting));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Middleware that counts and times every request by the route that answered it.
pub async fn track(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let path_route = match req.uri().path() {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/api/v1/cluster/status" => "cluster_status",
        p if p.starts_with("/api/v1/cluster/members") => "cluster_members",
        _ => "other",
    };
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map_or(path_route, |r| r.0);
    app.metrics.record(
        route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
