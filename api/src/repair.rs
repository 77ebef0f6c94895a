//! Self-repair of erasure-coded blobs: shards that a write lost, and shards on members
//! that are gone, are rebuilt from the rest of their stripe onto a new home chosen by
//! placement, then the layout is moved through Raft (`MoveShard`), and only then is the
//! old file removed.
//!
//! Two sources of work:
//! - the queue of this node: shards its own uploads committed without (a target failed
//!   mid-upload, the write quorum of `k + 1` held), and shards its reads found missing
//!   or corrupt (`BlobStore::take_damaged`), handled by this node;
//! - the leader's scan: every pass reads the next page of blob layouts and rebuilds
//!   every shard that sits on a node that is no longer a member, or that has been
//!   unreachable for longer than the grace period (so a restart does not set off a
//!   flood of copies), or that is draining (`berth cluster drain`: its shards are read
//!   from it while it is up, else rebuilt from the rest of their stripes). After each
//!   complete round the scan knows how many shards each draining node still holds.
//!
//! A rebuild whose move is refused (the blob was deleted or moved meanwhile) removes
//! the file it wrote. A crash between the rebuild and the move leaves a file no layout
//! names there, which the orphan sweep removes. Bandwidth is bounded by doing one
//! shard at a time per node.
//!
//! After the scan, when the cluster is settled, the leader rebalances
//! (`crate::rebalance`), moving shards through the same [`relocate`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_blobstore::{ClusterMap, Pacer, place_shard};
use berth_consensus::{CommandV1, Outcome, Rejection};
use berth_types::{BlobLayout, Digest, NodeId, ShardPlacement, StripedLayout};
use futures::StreamExt;
use tokio::sync::watch;

use crate::AppState;

/// Blob layouts the leader's scan reads per pass.
const SCAN_PAGE: usize = 256;

/// Blobs the leader's scan rebuilds at once.
const REBUILDS_IN_FLIGHT: usize = 4;

/// How repair runs.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    /// Time between passes.
    pub interval: Duration,
    /// How long a member may be unreachable before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// How the leader restripes blobs to the profile wanted now (`crate::restripe`).
    pub restripe: crate::restripe::RestripeConfig,
    /// Bytes per second that rebalancing's shard moves may copy; 0 turns it off.
    pub rebalance_bytes_per_sec: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            interval: Duration::from_secs(5),
            grace: Duration::from_secs(15 * 60),
            restripe: crate::restripe::RestripeConfig::default(),
            rebalance_bytes_per_sec: 16 << 20,
        }
    }
}

/// The repair state of this node: its queue, what the scan saw, and counters.
#[derive(Default)]
pub struct Repairs {
    queue: Mutex<BTreeMap<Digest, BTreeSet<usize>>>,
    /// Members missing from the cluster map, since when.
    down_since: Mutex<HashMap<NodeId, Instant>>,
    /// Where the leader's scan goes on from.
    cursor: Mutex<Option<Digest>>,
    rebuilt: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    /// Shards known to need a rebuild: this node's queue plus what the scan's last
    /// full round found on lost members.
    backlog: AtomicU64,
    round_backlog: AtomicU64,
    /// Shards taken off the queue by the pass now running and not settled yet, so the
    /// backlog does not read empty while they are rebuilt.
    in_pass: AtomicU64,
    drain: Mutex<DrainProgress>,
    /// Restriping to the wanted profile, run at the end of the leader's pass.
    pub(crate) restripe: crate::restripe::Restripes,
    /// Rebalancing's round and counters.
    pub(crate) rebalance: crate::rebalance::Rebalance,
}

/// What the leader's scan knows of draining nodes.
#[derive(Default)]
struct DrainProgress {
    /// Per node draining since the current round of the scan began: its shards the
    /// round could not move so far.
    round: BTreeMap<NodeId, u64>,
    /// Per node draining throughout the last complete round: its shards that round
    /// could not move (0: the node holds no shard any more).
    last: BTreeMap<NodeId, u64>,
}

/// Counters of repair, for metrics and the status.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RepairStats {
    pub rebuilt_shards: u64,
    pub rebuilt_bytes: u64,
    pub failures: u64,
    pub backlog_shards: u64,
    /// On the leader, per draining node (by id) that a complete round of the scan has
    /// covered: the shards it still holds. A node missing here is not draining, or not
    /// covered by a complete round yet.
    #[serde(default)]
    pub drain_shards_left: BTreeMap<u64, u64>,
    /// Restriping's counters and, on the leader, the blobs left on another profile.
    #[serde(default)]
    pub restripe: crate::restripe::RestripeStats,
    /// Rebalancing's counters and its last complete round (on the leader).
    #[serde(default)]
    pub rebalance: crate::rebalance::RebalanceStats,
}

impl Repairs {
    /// Queues shards of a blob to be rebuilt by this node.
    pub fn queue(&self, digest: &Digest, shards: &[usize]) {
        let mut queue = self.queue.lock().expect("repair queue lock poisoned");
        queue
            .entry(digest.clone())
            .or_default()
            .extend(shards.iter().copied());
    }

    pub fn stats(&self) -> RepairStats {
        let queued: usize = self
            .queue
            .lock()
            .expect("repair queue lock poisoned")
            .values()
            .map(BTreeSet::len)
            .sum();
        RepairStats {
            rebuilt_shards: self.rebuilt.load(Ordering::Relaxed),
            rebuilt_bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            backlog_shards: self.backlog.load(Ordering::Relaxed)
                + self.in_pass.load(Ordering::Relaxed)
                + queued as u64,
            drain_shards_left: self
                .drain
                .lock()
                .expect("repair lock poisoned")
                .last
                .iter()
                .map(|(node, left)| (node.0, *left))
                .collect(),
            restripe: self.restripe.stats(),
            rebalance: self.rebalance.stats(),
        }
    }
}

fn repairs(app: &AppState) -> &Repairs {
    &app.uploads.placer.repairs
}

/// Runs repair passes every `cfg.interval` until `shutdown` turns true.
pub async fn run(app: AppState, cfg: RepairConfig, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // A pass runs as its own task, so a panic in it ends that pass only, not
        // repair on this node.
        let each = app.clone();
        if let Err(e) = tokio::spawn(async move { pass(&each, cfg).await }).await {
            tracing::error!(error = %e,
                "a repair pass failed; its shards are found again by reads and the scrubber");
        }
    }
}

/// One pass: this node's queue, then (on the leader) one page of the scan.
pub async fn pass(app: &AppState, cfg: RepairConfig) {
    crate::restripe::delete_due(app).await;
    for damaged in app.store.take_damaged() {
        repairs(app).queue(&damaged.digest, &[damaged.index]);
    }
    let queued = std::mem::take(
        &mut *repairs(app)
            .queue
            .lock()
            .expect("repair queue lock poisoned"),
    );
    // The leader scans only when there is another member whose shards could be
    // lost; the map (which asks every member) is fetched only when there is work.
    let scans = app.meta.status().is_leader && app.meta.membership().nodes.len() > 1;
    if queued.is_empty() && !scans {
        return;
    }
    let map = app.uploads.placer.map().await;
    // Fresher than the map, which may predate a drain mark by its two seconds.
    let draining = match app.meta.read_local(|v| v.draining()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "repair: metadata unavailable");
            BTreeSet::new()
        }
    };
    let taken: usize = queued.values().map(BTreeSet::len).sum();
    repairs(app).in_pass.store(taken as u64, Ordering::Relaxed);
    for (digest, shards) in queued {
        // Settled below: rebuilt, dropped, or queued again.
        let _settled = InPass(app, shards.len() as u64);
        let wanted = digest.clone();
        let record = match app.meta.read(move |v| v.blob(&wanted)).await {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "repair: metadata unavailable; kept queued");
                repairs(app).queue(&digest, &shards.into_iter().collect::<Vec<_>>());
                continue;
            }
        };
        let BlobLayout::Striped(layout) = record.layout else {
            continue;
        };
        let mut failed = Vec::new();
        for index in shards {
            if !rebuild(app, &map, &draining, &digest, record.size, &layout, index).await {
                failed.push(index);
            }
        }
        if !failed.is_empty() {
            repairs(app).queue(&digest, &failed);
        }
    }
    if scans {
        scan(app, cfg, &map, &draining).await;
        let members: BTreeSet<NodeId> = app.meta.membership().nodes.into_keys().collect();
        let backlog = repairs(app).stats().backlog_shards;
        let unsettled = unsettled(&members, &map, &draining, backlog);
        crate::restripe::pass(app, cfg.restripe, cfg.interval, &map, unsettled.as_deref()).await;
        crate::rebalance::pass(app, cfg, &map, unsettled.as_deref()).await;
    }
}

/// Why the cluster is not settled enough for background work that moves healthy
/// blobs (restriping, rebalancing), if it is not: a member missing from the map
/// (down, or a learner still joining), a draining node, or shards waiting for repair,
/// which always goes first.
pub(crate) fn unsettled(
    members: &BTreeSet<NodeId>,
    map: &ClusterMap,
    draining: &BTreeSet<NodeId>,
    backlog: u64,
) -> Option<String> {
    if let Some(node) = members
        .iter()
        .find(|m| !map.nodes.iter().any(|n| n.node == **m))
    {
        return Some(format!("member {node} is not in the cluster map"));
    }
    if let Some(node) = draining.iter().next() {
        return Some(format!("node {node} is draining"));
    }
    (backlog > 0).then(|| format!("{backlog} shards wait for repair"))
}

/// Takes a blob's shards off the in-pass count when its handling ends, however it ends.
struct InPass<'a>(&'a AppState, u64);

impl Drop for InPass<'_> {
    fn drop(&mut self) {
        let _ = repairs(self.0)
            .in_pass
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(self.1))
            });
    }
}

/// The leader's scan: one page of layouts, rebuilding shards on lost members.
async fn scan(app: &AppState, cfg: RepairConfig, map: &ClusterMap, draining: &BTreeSet<NodeId>) {
    let members = app.meta.membership().nodes;
    let lost: BTreeSet<NodeId> = {
        let mut down = repairs(app)
            .down_since
            .lock()
            .expect("repair lock poisoned");
        let now = Instant::now();
        down.retain(|node, _| members.contains_key(node));
        for node in members.keys() {
            if map.nodes.iter().any(|n| n.node == *node) {
                down.remove(node);
            } else {
                down.entry(*node).or_insert(now);
            }
        }
        down.iter()
            .filter(|(_, since)| since.elapsed() >= cfg.grace)
            .map(|(node, _)| *node)
            .collect()
    };
    let is_lost = |node: NodeId| !members.contains_key(&node) || lost.contains(&node);
    let after = repairs(app)
        .cursor
        .lock()
        .expect("repair lock poisoned")
        .clone();
    {
        let mut drain = repairs(app).drain.lock().expect("repair lock poisoned");
        if after.is_none() {
            drain.round = draining.iter().map(|n| (*n, 0)).collect();
        }
        drain.round.retain(|n, _| draining.contains(n));
    }
    let page = match app
        .meta
        .read(move |v| v.blobs_after(after.as_ref(), SCAN_PAGE))
        .await
    {
        Ok(page) => page,
        Err(e) => {
            tracing::debug!(error = %e, "repair scan: metadata unavailable");
            return;
        }
    };
    let done = page.len() < SCAN_PAGE;
    *repairs(app).cursor.lock().expect("repair lock poisoned") = if done {
        None
    } else {
        page.last().map(|r| r.digest.clone())
    };
    // Blobs are rebuilt several at once (a rebuild waits on peers' disks and the
    // network more than on this node's cores); the shards of one blob one after the
    // other, so two of its shards never pick the same new home unaware of each other.
    let blobs = page.iter().filter_map(|record| match &record.layout {
        BlobLayout::Striped(layout) => Some((record, layout)),
        BlobLayout::Inline(_) => None,
    });
    let is_lost = &is_lost;
    // Collected first: a stream over a borrowing closure is not provably `Send`.
    let rebuilds: Vec<_> = blobs
        .map(|(record, layout)| async move {
            let mut left = Vec::new();
            for (index, at) in layout.shards.iter().enumerate() {
                let drains = draining.contains(&at.node);
                if (is_lost(at.node) || drains)
                    && !rebuild(
                        app,
                        map,
                        draining,
                        &record.digest,
                        record.size,
                        layout,
                        index,
                    )
                    .await
                {
                    left.push(at.node);
                }
            }
            left
        })
        .collect();
    let left: Vec<Vec<NodeId>> = futures::stream::iter(rebuilds)
        .buffer_unordered(REBUILDS_IN_FLIGHT)
        .collect()
        .await;
    let mut found = 0u64;
    for node in left.into_iter().flatten() {
        found += 1;
        if draining.contains(&node) {
            let mut drain = repairs(app).drain.lock().expect("repair lock poisoned");
            if let Some(left) = drain.round.get_mut(&node) {
                *left += 1;
            }
        }
    }
    let round = repairs(app)
        .round_backlog
        .fetch_add(found, Ordering::Relaxed)
        + found;
    if done {
        repairs(app).backlog.store(round, Ordering::Relaxed);
        repairs(app).round_backlog.store(0, Ordering::Relaxed);
        let mut drain = repairs(app).drain.lock().expect("repair lock poisoned");
        drain.last = std::mem::take(&mut drain.round);
    }
}

/// Rebuilds shard `index` of a blob onto the home placement picks for it (never a
/// draining node) and moves the layout there. Returns whether the shard is where the
/// layout says and whole.
async fn rebuild(
    app: &AppState,
    map: &ClusterMap,
    draining: &BTreeSet<NodeId>,
    digest: &Digest,
    size: u64,
    layout: &StripedLayout,
    index: usize,
) -> bool {
    let Some(&from) = layout.shards.get(index) else {
        return true;
    };
    let others: Vec<ShardPlacement> = layout
        .shards
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, p)| *p)
        .collect();
    let key = layout.upload.to_string();
    let to = match place_shard(key.as_bytes(), map, index, &others) {
        Ok(to) if draining.contains(&to.node) => {
            tracing::debug!(%digest, shard = index, node = %to.node,
                "repair: placement picked a draining node (a map older than the mark); retried later");
            return false;
        }
        Ok(to) => to,
        Err(e) => {
            tracing::warn!(%digest, shard = index, error = %e, "repair: no home for the shard");
            repairs(app).failures.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    match relocate(
        app,
        digest,
        size,
        layout,
        index,
        to,
        &mut Pacer::new(u64::MAX),
    )
    .await
    {
        Relocated::Moved { bytes } => {
            repairs(app).rebuilt.fetch_add(1, Ordering::Relaxed);
            repairs(app).bytes.fetch_add(bytes, Ordering::Relaxed);
            tracing::info!(%digest, shard = index, from = %from.node, to = %to.node, bytes, "shard rebuilt");
            true
        }
        Relocated::Refused => true,
        Relocated::Failed => {
            repairs(app).failures.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// How a [`relocate`] ended.
pub(crate) enum Relocated {
    /// The shard was written at its new home and the layout moved there; `bytes` were
    /// written.
    Moved { bytes: u64 },
    /// The layout changed meanwhile (the blob was deleted, or the shard moved by
    /// another): the move was refused and the file written removed unless the layout
    /// now uses it.
    Refused,
    /// The copy or the move failed (logged); nothing changed.
    Failed,
}

/// Writes shard `index` of a blob anew at `to` (read from its holder where good,
/// decoded from the rest of the stripe where not; each chunk when `pacer` allows),
/// then proposes `MoveShard` from where `layout` has it, and once that is applied
/// deletes the old file (best effort: the orphan sweep removes what is left).
pub(crate) async fn relocate(
    app: &AppState,
    digest: &Digest,
    size: u64,
    layout: &StripedLayout,
    index: usize,
    to: ShardPlacement,
    pacer: &mut Pacer,
) -> Relocated {
    let Some(&from) = layout.shards.get(index) else {
        return Relocated::Failed;
    };
    let bytes = match app
        .store
        .rebuild_shard_paced(layout, digest, size, index, to, pacer)
        .await
    {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(%digest, shard = index, to = %to.node, error = %e, "shard copy failed");
            return Relocated::Failed;
        }
    };
    let moved = app
        .meta
        .propose(CommandV1::MoveShard {
            digest: digest.clone(),
            upload: layout.upload,
            index: index as u8,
            from,
            to,
        })
        .await;
    match moved {
        Ok(Outcome::ShardMoved) => {
            if to != from
                && let Err(e) = app.store.delete_shard(layout, digest, index, from).await
            {
                tracing::debug!(%digest, shard = index, error = %e,
                    "old shard file not removed; the orphan sweep will");
            }
            Relocated::Moved { bytes }
        }
        Ok(Outcome::Rejected(Rejection::LayoutChanged)) => {
            // Another repairer (the leader's scan and a node's queue can both pick a
            // shard) may have moved the shard to this very place, from where this
            // rebuild rewrote it with the same bytes: the file is removed only if the
            // layout now in force does not place it there. When in doubt it stays for
            // the orphan sweep, which judges by placement.
            let wanted = digest.clone();
            let current = app.meta.read(move |v| v.blob(&wanted)).await;
            let unused = match &current {
                Ok(record) => rebuilt_file_unused(record.as_ref(), layout.upload, index, to),
                Err(_) => false,
            };
            if unused && let Err(e) = app.store.delete_shard(layout, digest, index, to).await {
                tracing::debug!(%digest, shard = index, error = %e,
                    "unused rebuilt file not removed; the orphan sweep will");
            }
            Relocated::Refused
        }
        Ok(other) => {
            tracing::warn!(%digest, ?other, "unexpected outcome of a shard move");
            Relocated::Failed
        }
        Err(e) => {
            tracing::warn!(%digest, shard = index, error = %e, "the shard move was not committed");
            Relocated::Failed
        }
    }
}

/// Whether the file a refused move wrote for shard `index` of `upload` at `to` is
/// unused by the blob's current record: no record, another upload's files, or shard
/// `index` placed elsewhere.
fn rebuilt_file_unused(
    record: Option<&berth_consensus::BlobRecord>,
    upload: berth_types::UploadId,
    index: usize,
    to: ShardPlacement,
) -> bool {
    match record.map(|r| &r.layout) {
        Some(BlobLayout::Striped(l)) if l.upload == upload => l.shards.get(index) != Some(&to),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use berth_blobstore::{Candidate, DiskState, NodeCandidates};
    use berth_consensus::BlobRecord;
    use berth_types::{CodecId, DiskId, EcProfile, UploadId};

    use super::*;

    fn map(nodes: &[u64]) -> ClusterMap {
        ClusterMap {
            nodes: nodes
                .iter()
                .map(|&n| NodeCandidates {
                    node: NodeId(n),
                    zone: None,
                    disks: vec![Candidate {
                        disk: DiskId(0),
                        free_bytes: 1 << 30,
                        state: DiskState::Active,
                    }],
                })
                .collect(),
        }
    }

    /// Restriping and rebalancing wait for a member that is down or still a learner (missing from
    /// the map), for a draining node and for repair's backlog; otherwise it runs.
    #[test]
    fn moving_healthy_blobs_waits_until_the_cluster_is_settled() {
        let members: BTreeSet<NodeId> = [1, 2, 3, 4].map(NodeId).into();
        let none = BTreeSet::new();
        assert_eq!(unsettled(&members, &map(&[1, 2, 3, 4]), &none, 0), None);
        let why = unsettled(&members, &map(&[1, 2, 3]), &none, 0).unwrap();
        assert!(why.contains("member 4"), "{why}");
        let draining: BTreeSet<NodeId> = [NodeId(2)].into();
        let why = unsettled(&members, &map(&[1, 2, 3, 4]), &draining, 0).unwrap();
        assert!(why.contains("node 2 is draining"), "{why}");
        let why = unsettled(&members, &map(&[1, 2, 3, 4]), &none, 3).unwrap();
        assert!(why.contains("3 shards"), "{why}");
    }

    fn at(node: u64, disk: u32) -> ShardPlacement {
        ShardPlacement {
            node: NodeId(node),
            disk: DiskId(disk),
        }
    }

    fn record(upload: UploadId, shards: Vec<ShardPlacement>) -> BlobRecord {
        BlobRecord {
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            size: 10,
            layout: BlobLayout::Striped(StripedLayout {
                codec: CodecId::ReedSolomonV1,
                profile: EcProfile::new(2, 1).unwrap(),
                shard_bytes: 1024,
                upload,
                shards,
            }),
            created_at_ms: 1,
        }
    }

    /// Two repairers rebuilt shard 1 onto node 4; the first one's move won. The
    /// second one's move is refused, and the file it wrote is the one now in force:
    /// it must stay. Files of a deleted blob, of another upload, or at a place the
    /// layout does not use go.
    #[test]
    fn a_refused_move_keeps_the_file_when_the_layout_now_uses_it() {
        let upload = UploadId::new(NodeId(1), 7);
        let moved = record(upload, vec![at(1, 0), at(4, 0), at(3, 0)]);
        assert!(!rebuilt_file_unused(Some(&moved), upload, 1, at(4, 0)));
        assert!(rebuilt_file_unused(Some(&moved), upload, 1, at(5, 0)));
        assert!(rebuilt_file_unused(Some(&moved), upload, 0, at(4, 0)));
        assert!(rebuilt_file_unused(None, upload, 1, at(4, 0)));
        let other = UploadId::new(NodeId(2), 9);
        assert!(rebuilt_file_unused(Some(&moved), other, 1, at(4, 0)));
    }
}
