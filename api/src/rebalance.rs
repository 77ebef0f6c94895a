//! Background rebalancing: on the Raft leader, once the cluster is settled (every
//! member in the cluster map, none draining, no repair backlog: repair always goes
//! first), each repair pass walks on through the blob layouts (its own cursor, a few
//! pages per pass) and moves the shards that placement no longer wants where they are
//! onto nodes that hold none of the blob's shards: shards a node that joined clearly
//! outscores, shards doubled up on one node (written while members were down) when
//! another node is free, shards on a node whose disks are full. Which shards move is
//! `berth_blobstore::rebalance_moves`, a pure function of the layout and the map that
//! moves as few shards as it can.
//!
//! A move is repair's: the shard is copied from its holder (decoded from the rest of
//! its stripe only where the holder cannot serve it) to the new home, staged, made
//! durable and renamed, then `MoveShard` (applied only while the layout still holds
//! the old place) switches the layout, and only then is the old file deleted. A kill
//! at any step leaves the layout naming a complete file: before the switch the old
//! one, after it the new one; the file the other step left is one no layout places
//! there, which the orphan sweep removes. The bytes copied go through a token bucket
//! (`--rebalance-mib-per-sec`, 0 turns rebalancing off), one move at a time.
//!
//! Progress: shards and bytes moved, and per complete round (a walk over every layout
//! while the cluster stays settled with one set of nodes in the map and one leader's
//! term; a change of either, or an unsettled pass, starts a new round) the nodes it
//! placed over, the shards it found misplaced and the shards it left so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_blobstore::{ClusterMap, Pacer, ShardMove, rebalance_moves};
use berth_consensus::BlobRecord;
use berth_types::{BlobLayout, Digest, NodeId, StripedLayout};

use crate::AppState;
use crate::repair::{Relocated, RepairConfig, relocate};

/// Blob layouts read at a time.
const PAGE: usize = 256;
/// Pages one pass reads at most, so a settled cluster's leader does not re-read every
/// layout on every pass.
const PAGES_PER_PASS_MAX: usize = 4;
/// Passes, in units of the repair interval, that one pass may spend moving shards
/// before it lets the next repair pass run; at most [`PASS_MAX`].
const PASS_INTERVALS: u32 = 4;
const PASS_MAX: Duration = Duration::from_secs(60);

/// Rebalancing's state on this node (it runs only while the node leads).
#[derive(Default)]
pub struct Rebalance {
    /// The round in progress and the token bucket; held by the pass that runs.
    round: tokio::sync::Mutex<Round>,
    moved_shards: AtomicU64,
    moved_bytes: AtomicU64,
    rounds: AtomicU64,
    last: std::sync::Mutex<Option<RebalanceRound>>,
}

/// The round in progress.
#[derive(Default)]
struct Round {
    /// Where the walk goes on from (`None`: at the start).
    cursor: Option<Digest>,
    /// The nodes of the map this round places over (empty: no round begun).
    nodes: Vec<NodeId>,
    /// The Raft term this node led in when the round began: a round interrupted by
    /// another leader's term starts over.
    term: u64,
    found: u64,
    left: u64,
    /// The token bucket of moved bytes, with the rate it was made for.
    pacer: Option<(u64, Pacer)>,
}

/// What a complete round of rebalancing found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RebalanceRound {
    /// The nodes the round placed over.
    pub nodes: Vec<u64>,
    /// Shards it found away from where placement wants them.
    pub misplaced_shards: u64,
    /// Of those, shards it could not move (a failed copy, a refused move); they are
    /// met again by the next round.
    pub left_shards: u64,
}

/// Rebalancing's counters, for metrics and the status.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RebalanceStats {
    /// Shards this node moved (as leader) since it started, and their bytes.
    pub moved_shards: u64,
    pub moved_bytes: u64,
    /// Complete rounds this node made.
    pub rounds: u64,
    /// The last complete round, if any.
    pub last_round: Option<RebalanceRound>,
}

impl Rebalance {
    pub fn stats(&self) -> RebalanceStats {
        RebalanceStats {
            moved_shards: self.moved_shards.load(Ordering::Relaxed),
            moved_bytes: self.moved_bytes.load(Ordering::Relaxed),
            rounds: self.rounds.load(Ordering::Relaxed),
            last_round: self.last.lock().expect("rebalance lock poisoned").clone(),
        }
    }
}

fn rebalance(app: &AppState) -> &Rebalance {
    &app.uploads.placer.repairs.rebalance
}

/// The node ids of a map, sorted.
fn nodes_of(map: &ClusterMap) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = map.nodes.iter().map(|n| n.node).collect();
    nodes.sort();
    nodes
}

/// One pass of rebalancing on the leader, after repair's own work: nothing unless the
/// cluster is settled; otherwise up to [`PAGES_PER_PASS_MAX`] pages of layouts, moving
/// what needs moving for at most [`PASS_INTERVALS`] repair intervals.
pub(crate) async fn pass(
    app: &AppState,
    cfg: RepairConfig,
    map: &ClusterMap,
    unsettled: Option<&str>,
) {
    if cfg.rebalance_bytes_per_sec == 0 {
        return;
    }
    let mut round = rebalance(app).round.lock().await;
    if let Some(why) = unsettled {
        tracing::debug!(%why, "rebalancing waits");
        // A round covers one settled stretch: the next starts over.
        round.nodes.clear();
        return;
    }
    let nodes = nodes_of(map);
    let term = app.meta.status().term;
    if round.nodes != nodes || round.term != term {
        if !round.nodes.is_empty() {
            tracing::info!(
                ?nodes,
                term,
                "the cluster map or the leader's term changed: rebalancing starts a new round"
            );
        }
        *round = Round {
            nodes,
            term,
            pacer: round.pacer.take(),
            ..Round::default()
        };
    }
    let rate = cfg.rebalance_bytes_per_sec;
    if round.pacer.as_ref().is_none_or(|(r, _)| *r != rate) {
        round.pacer = Some((rate, Pacer::new(rate)));
    }
    let deadline = Instant::now() + (cfg.interval * PASS_INTERVALS).min(PASS_MAX);
    for _ in 0..PAGES_PER_PASS_MAX {
        let after = round.cursor.clone();
        let page = match app
            .meta
            .read(move |v| v.blobs_after(after.as_ref(), PAGE))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "rebalancing: metadata unavailable");
                return;
            }
        };
        for record in &page {
            if Instant::now() >= deadline {
                return;
            }
            // The map of this blob's moves: the one the pass began with unless it
            // changed meanwhile, in which case the next pass starts a new round.
            let now = app.uploads.placer.map().await;
            if nodes_of(&now) != round.nodes {
                return;
            }
            if let BlobLayout::Striped(layout) = &record.layout {
                let moves =
                    rebalance_moves(layout.upload.to_string().as_bytes(), &now, &layout.shards);
                let (_, pacer) = round.pacer.as_mut().expect("set above");
                let moved = move_shards(app, record, layout, &moves, pacer).await;
                round.found += moves.len() as u64;
                round.left += (moves.len() - moved) as u64;
            }
            round.cursor = Some(record.digest.clone());
        }
        if page.len() < PAGE {
            let done = RebalanceRound {
                nodes: round.nodes.iter().map(|n| n.0).collect(),
                misplaced_shards: round.found,
                left_shards: round.left,
            };
            if done.misplaced_shards > 0 {
                tracing::info!(misplaced = done.misplaced_shards, left = done.left_shards,
                    nodes = ?done.nodes, "rebalancing round complete");
            }
            *rebalance(app).last.lock().expect("rebalance lock poisoned") = Some(done);
            rebalance(app).rounds.fetch_add(1, Ordering::Relaxed);
            round.cursor = None;
            round.found = 0;
            round.left = 0;
            return;
        }
    }
}

/// Makes `moves` of one blob in order, stopping at the first that fails (the later
/// ones assumed it done). Returns how many were made.
async fn move_shards(
    app: &AppState,
    record: &BlobRecord,
    layout: &StripedLayout,
    moves: &[ShardMove],
    pacer: &mut Pacer,
) -> usize {
    let mut layout = layout.clone();
    for (made, m) in moves.iter().enumerate() {
        let from = layout.shards[m.index];
        match relocate(
            app,
            &record.digest,
            record.size,
            &layout,
            m.index,
            m.to,
            pacer,
        )
        .await
        {
            Relocated::Moved { bytes } => {
                rebalance(app).moved_shards.fetch_add(1, Ordering::Relaxed);
                rebalance(app)
                    .moved_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                tracing::info!(digest = %record.digest, shard = m.index, from = %from.node,
                    to = %m.to.node, bytes, "shard moved by rebalancing");
                layout.shards[m.index] = m.to;
            }
            Relocated::Refused | Relocated::Failed => return made,
        }
    }
    moves.len()
}
