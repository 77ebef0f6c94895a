//! Placement: which disks hold the `k + m` shard files of an upload. A pure function of
//! a key (the upload id) and the candidates, so every caller that sees the same
//! candidates computes the same answer, and tests need no I/O. Weighted rendezvous
//! hashing: each disk draws a score from a hash of (key, disk) scaled by its free
//! space, and the best scores win. Adding or removing a disk only moves the shards
//! that it wins or held.
//!
//! [`place`] chooses among the disks of this node. [`place_across`] chooses across a
//! [`ClusterMap`] (every live node of a cluster with its disks and zone): shard `i`
//! goes to the best-scoring disk for `(key, i)` in a zone no earlier shard uses, else
//! on a node no earlier shard uses, else on a disk no earlier shard uses, so losing a
//! zone, a node or a disk loses as few shards of a stripe as the map allows.

use berth_types::{DiskId, EcProfile, NodeId, ShardPlacement};

/// Whether a disk takes new shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Takes new shards and serves reads.
    Active,
    /// Below its free-space reserve: serves reads, takes no new shards.
    Full,
    /// Failed an operation, or cannot report its space: takes no new shards.
    Failed,
}

/// A disk as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub disk: DiskId,
    pub free_bytes: u64,
    pub state: DiskState,
}

/// Not enough usable disks for a stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} usable disks are needed, {available} are available")]
pub struct PlacementError {
    pub needed: usize,
    pub available: usize,
}

/// Chooses `width` distinct active disks for the shards of `key`; entry `i` holds shard
/// `i`. Candidates must have distinct ids.
pub fn place(
    key: &[u8],
    candidates: &[Candidate],
    width: usize,
) -> Result<Vec<DiskId>, PlacementError> {
    let mut scored: Vec<(f64, DiskId)> = candidates
        .iter()
        .filter(|c| c.state == DiskState::Active)
        .map(|c| (score(key, c.disk, c.free_bytes), c.disk))
        .collect();
    if scored.len() < width {
        return Err(PlacementError {
            needed: width,
            available: scored.len(),
        });
    }
    // Highest score first; ties (equal hashes are practically impossible, equal zero
    // weights are not) broken by disk id so the order never depends on input order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(scored.into_iter().take(width).map(|(_, d)| d).collect())
}

/// `-weight / ln(u)` with `u` uniform in (0, 1) from the hash: the weighted rendezvous
/// score, under which a disk wins with probability proportional to its weight.
fn score(key: &[u8], disk: DiskId, free_bytes: u64) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(&disk.0.to_le_bytes());
    weighted(hasher, free_bytes)
}

/// A node of a cluster as placement sees it: its failure zone (nodes without one are
/// each their own zone) and its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCandidates {
    pub node: NodeId,
    pub zone: Option<String>,
    pub disks: Vec<Candidate>,
}

/// The nodes that may take new shards, with their disks. Nodes that are down,
/// draining or unknown are simply not in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMap {
    pub nodes: Vec<NodeCandidates>,
}

impl ClusterMap {
    /// Active disks in the map.
    pub fn active_disks(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| &n.disks)
            .filter(|d| d.state == DiskState::Active)
            .count()
    }
}

/// The default profile of a cluster of `nodes` members: every stripe survives the
/// loss of one node from two on, and of two nodes from five on, at a storage cost of
/// at most 2x (and 1.5x from six nodes).
pub fn cluster_profile(nodes: usize) -> EcProfile {
    let (k, m) = match nodes {
        0 | 1 => (1, 0),
        2 => (1, 1),
        3 | 4 => (2, 1),
        5 => (3, 2),
        _ => (4, 2),
    };
    EcProfile::new(k, m).expect("the default profiles are valid")
}

/// Chooses a placement for each of `width` shards of `key` across the map; entry `i`
/// holds shard `i`. Shards go to distinct zones while unused zones remain, then to
/// distinct nodes, then to distinct disks; full and failed disks are skipped.
/// Candidates (nodes, and disks within a node) must have distinct ids.
pub fn place_across(
    key: &[u8],
    map: &ClusterMap,
    width: usize,
) -> Result<Vec<ShardPlacement>, PlacementError> {
    place_across_favouring(key, map, width, &[])
}

/// [`place_across`] with the scores of the disks of `favoured` nodes raised by
/// [`HOLDER_FAVOUR`].
fn place_across_favouring(
    key: &[u8],
    map: &ClusterMap,
    width: usize,
    favoured: &[NodeId],
) -> Result<Vec<ShardPlacement>, PlacementError> {
    let available = map.active_disks();
    if available < width {
        return Err(PlacementError {
            needed: width,
            available,
        });
    }
    let mut chosen = Vec::with_capacity(width);
    for index in 0..width {
        let placement = place_shard_favouring(key, map, index, &chosen, favoured)?;
        chosen.push(placement);
    }
    Ok(chosen)
}

/// The placement of shard `index` of `key` given where the other shards of its stripe
/// are (`others`, which need not be in the map: a shard on a lost node still counts
/// against its node). What [`place_across`] does for each shard in turn, and what
/// repair asks when one shard needs a new home while the others stay.
pub fn place_shard(
    key: &[u8],
    map: &ClusterMap,
    index: usize,
    others: &[ShardPlacement],
) -> Result<ShardPlacement, PlacementError> {
    place_shard_favouring(key, map, index, others, &[])
}

fn place_shard_favouring(
    key: &[u8],
    map: &ClusterMap,
    index: usize,
    others: &[ShardPlacement],
    favoured: &[NodeId],
) -> Result<ShardPlacement, PlacementError> {
    let used_zones: Vec<ZoneKey> = others.iter().map(|p| zone_of(map, p.node)).collect();
    let slots: Vec<Slot> = map
        .nodes
        .iter()
        .flat_map(|n| {
            n.disks
                .iter()
                .filter(|d| d.state == DiskState::Active)
                .map(move |d| (n, d))
        })
        .map(|(n, d)| {
            let at = ShardPlacement {
                node: n.node,
                disk: d.disk,
            };
            (at, zone_of(map, n.node), d.free_bytes)
        })
        .filter(|(at, _, _)| !others.contains(at))
        .collect();
    let new_zone = |z: &ZoneKey| !used_zones.contains(z);
    let new_node = |at: &ShardPlacement| !others.iter().any(|p| p.node == at.node);
    let tiers: [&dyn Fn(&Slot) -> bool; 3] = [
        &|(at, zone, _)| new_zone(zone) && new_node(at),
        &|(at, _, _)| new_node(at),
        &|_| true,
    ];
    tiers
        .iter()
        .find_map(|tier| {
            slots
                .iter()
                .filter(|s| tier(s))
                .map(|(at, _, free)| {
                    let score = cluster_score(key, index, *at, *free);
                    let favour = if favoured.contains(&at.node) {
                        HOLDER_FAVOUR
                    } else {
                        1.0
                    };
                    (score * favour, *at)
                })
                // Equal scores (equal zero weights) fall to the lowest ids.
                .max_by(|a, b| {
                    a.0.total_cmp(&b.0)
                        .then(b.1.node.cmp(&a.1.node))
                        .then(b.1.disk.cmp(&a.1.disk))
                })
                .map(|(_, at)| at)
        })
        .ok_or(PlacementError {
            needed: 1,
            available: 0,
        })
}

/// A shard that rebalancing moves: shard `index` of a stripe goes to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMove {
    pub index: usize,
    pub to: ShardPlacement,
}

/// How much the scores of the nodes that hold a stripe's shards are raised when
/// rebalancing asks whether the stripe is where placement wants it: another node must
/// outscore a holder as if it had a quarter more free space. Free space changes all
/// the time; without this margin every small change would move the shards whose scores
/// are close, and moving them would change the free space again. (Raising the score is
/// raising the weight: the weighted score is linear in it.)
const HOLDER_FAVOUR: f64 = 1.25;

/// The shard moves that bring a committed stripe (`shards`, entry `i` holding shard
/// `i`) to where the map wants it, as few as possible, each to a node that holds no
/// shard of the stripe (so any order of the moves is safe).
///
/// The stripe is misplaced when [`place_across`] over the map, with the nodes that
/// hold its shards favoured by [`HOLDER_FAVOUR`], picks another set of nodes (counted
/// with repeats): a node new to the map clearly outscores a holder, two shards share a
/// node (or zone) while another node (or zone) is free, or a holder's disks are full.
/// Then the target is the set [`place_across`] picks without favour (where a new
/// stripe would go), and only the shards on nodes beyond that set move, onto the
/// set's nodes that hold none of the stripe's shards, to the disk placement picks
/// there. Adding one node thus moves at most one shard per stripe, onto the new node;
/// a stripe placed over the same map needs no move; and a moved stripe is on the
/// target set, which the favoured placement picks again, so it moves no more until
/// the map changes: moves cannot go round in circles. A stripe with a shard on a node
/// missing from the map is left to repair (no moves).
pub fn rebalance_moves(key: &[u8], map: &ClusterMap, shards: &[ShardPlacement]) -> Vec<ShardMove> {
    if shards
        .iter()
        .any(|p| !map.nodes.iter().any(|n| n.node == p.node))
    {
        return Vec::new();
    }
    let width = shards.len();
    let holders: Vec<NodeId> = shards.iter().map(|p| p.node).collect();
    let Ok(favoured) = place_across_favouring(key, map, width, &holders) else {
        return Vec::new();
    };
    if same_nodes(&favoured, shards) {
        return Vec::new();
    }
    let Ok(wanted) = place_across(key, map, width) else {
        return Vec::new();
    };
    // Each wanted place keeps a shard already on its node, the shard of its own index
    // first; the shards left over move to the wanted places left over.
    let mut kept = vec![false; width];
    let mut filled = vec![false; width];
    for i in 0..width {
        if shards[i].node == wanted[i].node {
            (kept[i], filled[i]) = (true, true);
        }
    }
    for j in 0..width {
        if filled[j] {
            continue;
        }
        if let Some(i) = (0..width).find(|&i| !kept[i] && shards[i].node == wanted[j].node) {
            (kept[i], filled[j]) = (true, true);
        }
    }
    let mut movers: Vec<usize> = (0..width).filter(|&i| !kept[i]).collect();
    let mut free: Vec<usize> = (0..width).filter(|&j| !filled[j]).collect();
    let mut pairs: Vec<(usize, ShardPlacement)> = Vec::new();
    // A mover whose own index's wanted place is free takes it; the others pair up in
    // order.
    movers.retain(|&i| match free.iter().position(|&j| j == i) {
        Some(k) => {
            pairs.push((i, wanted[free.remove(k)]));
            false
        }
        None => true,
    });
    pairs.extend(movers.into_iter().zip(free.into_iter().map(|j| wanted[j])));
    let mut now = shards.to_vec();
    let mut moves = Vec::new();
    for (index, to) in pairs {
        if now.iter().all(|p| p.node != to.node) {
            moves.push(ShardMove { index, to });
            now[index] = to;
        }
    }
    moves
}

/// Whether two placements use the same nodes, counted with repeats.
fn same_nodes(a: &[ShardPlacement], b: &[ShardPlacement]) -> bool {
    let nodes = |p: &[ShardPlacement]| {
        let mut n: Vec<NodeId> = p.iter().map(|p| p.node).collect();
        n.sort();
        n
    };
    nodes(a) == nodes(b)
}

/// The failure zone of `node` in `map` (a node without one, or missing from the map,
/// is its own).
fn zone_of(map: &ClusterMap, node: NodeId) -> ZoneKey<'_> {
    map.nodes
        .iter()
        .find(|n| n.node == node)
        .and_then(|n| n.zone.as_deref())
        .map_or(ZoneKey::Node(node), ZoneKey::Named)
}

/// A disk that may take a shard: where it is, its zone and its free bytes.
type Slot<'a> = (ShardPlacement, ZoneKey<'a>, u64);

/// A failure zone: a named one, or the node itself for nodes without a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneKey<'a> {
    Named(&'a str),
    Node(NodeId),
}

/// The rendezvous score of a disk of a node for shard `index` of `key`.
fn cluster_score(key: &[u8], index: usize, at: ShardPlacement, free_bytes: u64) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(&(index as u32).to_le_bytes());
    hasher.update(&at.node.0.to_le_bytes());
    hasher.update(&at.disk.0.to_le_bytes());
    weighted(hasher, free_bytes)
}

fn weighted(hasher: blake3::Hasher, free_bytes: u64) -> f64 {
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let bits = u64::from_le_bytes(first) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    // Free space in MiB keeps the weight well inside f64 precision.
    let weight = (free_bytes >> 20) as f64 + 1.0;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn disks(free: &[u64]) -> Vec<Candidate> {
        free.iter()
            .enumerate()
            .map(|(i, &f)| Candidate {
                disk: DiskId(i as u32),
                free_bytes: f << 30,
                state: DiskState::Active,
            })
            .collect()
    }

    proptest! {
        /// Same input, same answer, whatever the order of candidates; all disks distinct.
        #[test]
        fn placement_is_stable_and_distinct(key in any::<[u8; 16]>(), n in 1usize..12, width in 1usize..12) {
            let cands = disks(&vec![100; n]);
            let mut reversed = cands.clone();
            reversed.reverse();
            match place(&key, &cands, width) {
                Ok(chosen) => {
                    prop_assert_eq!(chosen.len(), width);
                    let mut sorted = chosen.clone();
                    sorted.sort();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), width);
                    prop_assert_eq!(place(&key, &reversed, width).unwrap(), chosen);
                }
                Err(e) => prop_assert_eq!(e, PlacementError { needed: width, available: n }),
            }
        }

        /// Removing a disk that was not chosen changes nothing (rendezvous property).
        #[test]
        fn removing_an_unchosen_disk_moves_nothing(key in any::<[u8; 16]>(), drop in 0usize..8) {
            let cands = disks(&[100, 200, 300, 400, 500, 600, 700, 800]);
            let chosen = place(&key, &cands, 3).unwrap();
            if !chosen.contains(&DiskId(drop as u32)) {
                let fewer: Vec<_> = cands.iter().copied().filter(|c| c.disk != DiskId(drop as u32)).collect();
                prop_assert_eq!(place(&key, &fewer, 3).unwrap(), chosen);
            }
        }
    }

    #[test]
    fn full_and_failed_disks_are_skipped() {
        let mut cands = disks(&[100, 100, 100]);
        cands[0].state = DiskState::Full;
        cands[2].state = DiskState::Failed;
        for key in 0u32..50 {
            assert_eq!(
                place(&key.to_le_bytes(), &cands, 1).unwrap(),
                vec![DiskId(1)]
            );
        }
        assert_eq!(
            place(b"k", &cands, 2),
            Err(PlacementError {
                needed: 2,
                available: 1
            })
        );
    }

    #[test]
    fn disks_with_more_free_space_win_more_often() {
        let cands = disks(&[100, 900]);
        let big_wins = (0u32..2000)
            .filter(|k| place(&k.to_le_bytes(), &cands, 1).unwrap() == vec![DiskId(1)])
            .count();
        // Expected 90%; the bound leaves room for hash noise over 2000 keys.
        assert!((1700..1900).contains(&big_wins), "{big_wins}");
    }

    fn cluster(nodes: u64, disks_per_node: u32, zones: Option<u64>) -> ClusterMap {
        ClusterMap {
            nodes: (1..=nodes)
                .map(|n| NodeCandidates {
                    node: NodeId(n),
                    zone: zones.map(|z| format!("zone-{}", n % z)),
                    disks: (0..disks_per_node)
                        .map(|d| Candidate {
                            disk: DiskId(d),
                            free_bytes: 100 << 30,
                            state: DiskState::Active,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn distinct_nodes(p: &[ShardPlacement]) -> usize {
        let mut nodes: Vec<NodeId> = p.iter().map(|p| p.node).collect();
        nodes.sort();
        nodes.dedup();
        nodes.len()
    }

    proptest! {
        /// Deterministic, distinct placements, on as many distinct nodes as the map
        /// allows, whatever the order of the map's entries.
        #[test]
        fn cluster_placement_is_deterministic_and_diverse(
            key in any::<[u8; 16]>(), nodes in 1u64..9, disks in 1u32..4, width in 1usize..8,
        ) {
            let map = cluster(nodes, disks, None);
            let mut reversed = map.clone();
            reversed.nodes.reverse();
            for n in &mut reversed.nodes {
                n.disks.reverse();
            }
            match place_across(&key, &map, width) {
                Ok(chosen) => {
                    prop_assert_eq!(chosen.len(), width);
                    let mut all = chosen.clone();
                    all.sort_by_key(|p| (p.node, p.disk));
                    all.dedup();
                    prop_assert_eq!(all.len(), width);
                    prop_assert_eq!(distinct_nodes(&chosen), width.min(nodes as usize));
                    prop_assert_eq!(place_across(&key, &reversed, width).unwrap(), chosen);
                }
                Err(e) => {
                    prop_assert!(width > (nodes as usize) * (disks as usize));
                    prop_assert_eq!(e.needed, width);
                }
            }
        }

        /// With zones, a stripe spreads over as many zones as there are before it
        /// doubles up in one.
        #[test]
        fn zones_come_before_nodes(key in any::<[u8; 16]>(), width in 1usize..7) {
            let map = cluster(9, 2, Some(3));
            let chosen = place_across(&key, &map, width).unwrap();
            let mut zones: Vec<u64> = chosen.iter().map(|p| p.node.0 % 3).collect();
            zones.sort();
            zones.dedup();
            prop_assert_eq!(zones.len(), width.min(3));
            prop_assert_eq!(distinct_nodes(&chosen), width);
        }

        /// A repaired shard never lands where another shard of its stripe is, and
        /// prefers a node the stripe does not use yet.
        #[test]
        fn a_repaired_shard_goes_to_a_fresh_node(key in any::<[u8; 16]>(), lost in 0usize..5) {
            let map = cluster(6, 2, None);
            let chosen = place_across(&key, &map, 5).unwrap();
            let mut others = chosen.clone();
            others.remove(lost);
            let smaller = ClusterMap {
                nodes: map.nodes.iter().filter(|n| n.node != chosen[lost].node).cloned().collect(),
            };
            let again = place_shard(&key, &smaller, lost, &others).unwrap();
            prop_assert!(!others.contains(&again));
            prop_assert!(others.iter().all(|p| p.node != again.node));
            prop_assert!(again.node != chosen[lost].node);
        }
    }

    /// Adding a node moves few shards: about `width / nodes` of them, the share the
    /// new node should win, and never the bulk of the placements.
    #[test]
    fn adding_a_node_moves_little() {
        for (nodes, width) in [(3u64, 3usize), (5, 5), (8, 6)] {
            let before = cluster(nodes, 2, None);
            let after = cluster(nodes + 1, 2, None);
            let keys = 2000u32;
            let mut moved = 0usize;
            for key in 0..keys {
                let a = place_across(&key.to_le_bytes(), &before, width).unwrap();
                let b = place_across(&key.to_le_bytes(), &after, width).unwrap();
                moved += a.iter().zip(&b).filter(|(x, y)| x != y).count();
            }
            let share = moved as f64 / (keys as usize * width) as f64;
            let ideal = 1.0 / (nodes + 1) as f64;
            assert!(
                share < ideal * 2.0,
                "{nodes}->{} nodes, width {width}: {share:.3} of shards moved, ideal {ideal:.3}",
                nodes + 1
            );
        }
    }

    /// Equal nodes get equal shares of shards, within a few percent over many keys.
    #[test]
    fn shards_are_balanced_over_nodes_and_disks() {
        let map = cluster(6, 2, None);
        let mut per_node = [0usize; 6];
        let mut per_disk = [0usize; 12];
        let keys = 3000u32;
        for key in 0..keys {
            for p in place_across(&key.to_le_bytes(), &map, 4).unwrap() {
                per_node[(p.node.0 - 1) as usize] += 1;
                per_disk[((p.node.0 - 1) * 2 + u64::from(p.disk.0)) as usize] += 1;
            }
        }
        let mean = (keys * 4) as f64 / 6.0;
        for n in per_node {
            assert!((n as f64 - mean).abs() < mean * 0.08, "{per_node:?}");
        }
        for d in per_disk {
            assert!(
                (d as f64 - mean / 2.0).abs() < mean / 2.0 * 0.12,
                "{per_disk:?}"
            );
        }
    }

    /// Free space weighs: a node whose disks have twice the space takes more shards,
    /// and a full or failed disk takes none.
    #[test]
    fn cluster_placement_follows_free_space_and_state() {
        let mut map = cluster(4, 1, None);
        map.nodes[0].disks[0].free_bytes = 400 << 30;
        map.nodes[3].disks[0].state = DiskState::Full;
        let mut first = 0;
        for key in 0..2000u32 {
            let chosen = place_across(&key.to_le_bytes(), &map, 2).unwrap();
            assert!(chosen.iter().all(|p| p.node != NodeId(4)));
            first += chosen.iter().filter(|p| p.node == NodeId(1)).count();
        }
        // Node 1 holds 4/6 of the weight; with two shards per stripe on distinct
        // nodes it cannot exceed one per stripe, but it must clearly lead.
        assert!(first > 2000 * 80 / 100, "{first}");
        assert_eq!(
            place_across(b"k", &map, 4),
            Err(PlacementError {
                needed: 4,
                available: 3
            })
        );
    }

    /// Applies `moves` to `shards` in order, checking that each one is valid when made:
    /// it moves a shard to another node, an active disk of the map, on a node that holds
    /// no shard of the stripe at that moment.
    fn apply_moves(
        map: &ClusterMap,
        shards: &[ShardPlacement],
        moves: &[ShardMove],
    ) -> Vec<ShardPlacement> {
        let mut now = shards.to_vec();
        for m in moves {
            assert_ne!(now[m.index].node, m.to.node, "{moves:?}");
            assert!(
                now.iter().all(|p| p.node != m.to.node),
                "a move onto a node that holds a shard: {now:?} {m:?}"
            );
            let active = map
                .nodes
                .iter()
                .filter(|n| n.node == m.to.node)
                .flat_map(|n| &n.disks)
                .any(|d| d.disk == m.to.disk && d.state == DiskState::Active);
            assert!(active, "a move onto a disk that takes no shards: {m:?}");
            now[m.index] = m.to;
        }
        now
    }

    proptest! {
        /// A stripe placed over a map needs no move while the map stays as it was.
        #[test]
        fn a_placed_stripe_needs_no_rebalancing(
            key in any::<[u8; 16]>(), nodes in 1u64..9, disks in 1u32..4, width in 1usize..8,
        ) {
            let map = cluster(nodes, disks, None);
            if let Ok(placed) = place_across(&key, &map, width) {
                prop_assert_eq!(rebalance_moves(&key, &map, &placed), vec![]);
            }
        }
    }

    /// Adding one node to `n` moves about `width / (n + 1)` shards per stripe (the
    /// share the new node should hold), never more than one per stripe, all onto the new
    /// node, and the moved stripes need no further move. Measured over 1,000 stripes
    /// for several cluster sizes and widths.
    #[test]
    fn adding_a_node_rebalances_about_its_share() {
        for (nodes, width) in [(3u64, 3usize), (4, 3), (5, 5), (8, 6)] {
            let before = cluster(nodes, 2, None);
            let after = cluster(nodes + 1, 2, None);
            let keys = 1000u32;
            let mut moved = 0usize;
            for key in 0..keys {
                let key = key.to_le_bytes();
                let placed = place_across(&key, &before, width).unwrap();
                let moves = rebalance_moves(&key, &after, &placed);
                assert!(moves.len() <= 1, "{moves:?}");
                assert!(moves.iter().all(|m| m.to.node == NodeId(nodes + 1)));
                let now = apply_moves(&after, &placed, &moves);
                assert_eq!(distinct_nodes(&now), width);
                assert_eq!(rebalance_moves(&key, &after, &now), vec![]);
                moved += moves.len();
            }
            let per_stripe = moved as f64 / f64::from(keys);
            let ideal = width as f64 / (nodes + 1) as f64;
            eprintln!(
                "{nodes}->{} nodes, width {width}: {per_stripe:.3} shards moved per stripe, ideal {ideal:.3}",
                nodes + 1
            );
            assert!(
                per_stripe < ideal * 2.0 && per_stripe > ideal / 2.0,
                "{nodes}->{} nodes, width {width}: {per_stripe:.3} shards moved per stripe, ideal {ideal:.3}",
                nodes + 1
            );
        }
    }

    /// Stripes written while nodes were down, with two shards on distinct disks of one
    /// node, are spread over distinct nodes once the nodes are back, each move to a
    /// node that held no shard of the stripe; with as many nodes as shards, exactly the
    /// doubled shards move.
    #[test]
    fn doubled_up_stripes_spread_when_nodes_return() {
        for (up, all, width) in [(2u64, 3u64, 3usize), (3, 5, 5), (2, 4, 3), (4, 6, 6)] {
            let down = cluster(up, 2, None);
            let back = cluster(all, 2, None);
            for key in 0..300u32 {
                let key = key.to_le_bytes();
                let placed = place_across(&key, &down, width).unwrap();
                let doubled = width - distinct_nodes(&placed);
                assert!(doubled > 0, "{placed:?}");
                let moves = rebalance_moves(&key, &back, &placed);
                let now = apply_moves(&back, &placed, &moves);
                assert_eq!(distinct_nodes(&now), width, "{placed:?} -> {now:?}");
                // With exactly as many nodes as shards only the doubled shards move;
                // with more, a returning node may also win a shard it clearly scores
                // better for.
                if all as usize == width {
                    assert_eq!(moves.len(), doubled, "{placed:?}: {moves:?}");
                } else {
                    assert!(moves.len() >= doubled, "{placed:?}: {moves:?}");
                }
                assert_eq!(rebalance_moves(&key, &back, &now), vec![]);
            }
        }
    }

    /// With zones, a stripe written while a zone was missing spreads into it again.
    #[test]
    fn stripes_spread_into_a_zone_that_returns() {
        let all = cluster(6, 1, Some(3));
        let without_zone_0 = ClusterMap {
            nodes: all
                .nodes
                .iter()
                .filter(|n| n.node.0 % 3 != 0)
                .cloned()
                .collect(),
        };
        for key in 0..300u32 {
            let key = key.to_le_bytes();
            let placed = place_across(&key, &without_zone_0, 3).unwrap();
            let now = apply_moves(&all, &placed, &rebalance_moves(&key, &all, &placed));
            let mut zones: Vec<u64> = now.iter().map(|p| p.node.0 % 3).collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "{now:?}");
        }
    }

    /// Shards leave a node whose disks are full when another node can take them; a
    /// stripe with a shard on a node the map lacks (down or removed) is repair's, not
    /// rebalancing's.
    #[test]
    fn full_nodes_are_left_and_missing_nodes_wait_for_repair() {
        let map = cluster(4, 1, None);
        let mut full = map.clone();
        full.nodes[0].disks[0].state = DiskState::Full;
        let without_4 = ClusterMap {
            nodes: map.nodes[..3].to_vec(),
        };
        let mut left_node_1 = 0;
        for key in 0..300u32 {
            let key = key.to_le_bytes();
            let placed = place_across(&key, &map, 3).unwrap();
            let now = apply_moves(&full, &placed, &rebalance_moves(&key, &full, &placed));
            assert!(now.iter().all(|p| p.node != NodeId(1)), "{now:?}");
            left_node_1 += usize::from(placed.iter().any(|p| p.node == NodeId(1)));
            if placed.iter().any(|p| p.node == NodeId(4)) {
                assert_eq!(rebalance_moves(&key, &without_4, &placed), vec![]);
            }
        }
        assert!(left_node_1 > 100, "{left_node_1}");
    }

    /// Free space that drifts by less than the holders' favour moves (almost) no
    /// shard, while a node whose free space grew threefold wins shards from the others.
    /// Small drift can still reorder the holders among themselves (scores are per shard
    /// index) and so, rarely, let another node in: 1.2 % of the stripes here, for
    /// +10 %, -10 % and +5 % on three of five nodes; the bound is 2 %.
    #[test]
    fn free_space_drift_within_the_margin_moves_next_to_nothing() {
        let before = cluster(5, 1, None);
        let free = before.nodes[0].disks[0].free_bytes;
        let mut drifted = before.clone();
        drifted.nodes[0].disks[0].free_bytes = free / 10 * 11;
        drifted.nodes[1].disks[0].free_bytes = free / 10 * 9;
        drifted.nodes[2].disks[0].free_bytes = free / 20 * 21;
        let mut grown = before.clone();
        grown.nodes[4].disks[0].free_bytes = free * 3;
        let (mut drift_moves, mut growth_moves, mut onto_grown) = (0usize, 0usize, 0usize);
        let keys = 1000u32;
        for key in 0..keys {
            let key = key.to_le_bytes();
            let placed = place_across(&key, &before, 3).unwrap();
            drift_moves += rebalance_moves(&key, &drifted, &placed).len();
            let moves = rebalance_moves(&key, &grown, &placed);
            growth_moves += moves.len();
            onto_grown += moves.iter().filter(|m| m.to.node == NodeId(5)).count();
        }
        eprintln!(
            "drift: {drift_moves} moves; growth: {growth_moves} moves, {onto_grown} onto the grown node, over {keys} stripes"
        );
        assert!(drift_moves * 50 < keys as usize, "{drift_moves}");
        assert!(onto_grown * 10 > keys as usize, "{onto_grown}");
        // Most moves go onto the grown node; the rest follow from the holders'
        // reordering (per-index scores), each onto a node placement now prefers.
        assert!(
            onto_grown * 4 > growth_moves * 3,
            "{onto_grown} of {growth_moves}"
        );
    }
}
