//! Recovery point zero: every acknowledged push (blob or manifest) is pullable,
//! byte-identical, through every node in the read-back after healing. A push whose
//! manifest a later delete may have removed is exempt; an acknowledged delete must
//! stay deleted.

use std::collections::{BTreeMap, BTreeSet};

use super::Verdict;
use crate::history::{Event, Op, Phase};

/// Content key: repository and digest.
type Key = (String, String);

fn pushed(op: &Op) -> Option<Key> {
    match op {
        Op::PushBlob { repo, digest }
        | Op::PushManifest { repo, digest, .. }
        | Op::MoveTag { repo, digest, .. } => Some((repo.clone(), digest.clone())),
        _ => None,
    }
}

fn pulled(op: &Op) -> Option<Key> {
    match op {
        Op::PullBlob { repo, digest } | Op::PullManifest { repo, digest } => {
            Some((repo.clone(), digest.clone()))
        }
        _ => None,
    }
}

pub fn check(events: &[Event], nodes: &[u64]) -> Verdict {
    let mut v = Verdict::new(
        "durability",
        "every acknowledged push is pullable byte-identical through every node after the drill",
    );
    let mut acked: BTreeSet<Key> = BTreeSet::new();
    let mut delete_tried: BTreeSet<Key> = BTreeSet::new();
    let mut delete_acked: BTreeSet<Key> = BTreeSet::new();
    for e in events.iter().filter(|e| e.phase == Phase::Workload) {
        if let Some(k) = pushed(&e.op)
            && e.outcome.ok()
        {
            acked.insert(k);
        }
        if let Op::DeleteManifest { repo, digest } = &e.op {
            let k = (repo.clone(), digest.clone());
            if e.outcome.ok() {
                delete_acked.insert(k.clone());
            }
            delete_tried.insert(k);
        }
    }
    // Read-back results per key and node.
    let mut reads: BTreeMap<&Key, BTreeMap<u64, Vec<&Event>>> = BTreeMap::new();
    let keys: Vec<Key> = acked.iter().chain(delete_acked.iter()).cloned().collect();
    let mut by_key: BTreeMap<Key, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.phase == Phase::Verify) {
        if let Some(k) = pulled(&e.op) {
            by_key.entry(k).or_default().push(e);
        }
    }
    for k in &keys {
        let per_node = reads.entry(k).or_default();
        for e in by_key.get(k).into_iter().flatten() {
            per_node.entry(e.node).or_default().push(e);
        }
    }
    for k in &acked {
        if delete_tried.contains(k) {
            continue;
        }
        v.checked += 1;
        let per_node = &reads[k];
        for node in nodes {
            let Some(node_reads) = per_node.get(node) else {
                v.violation(format!(
                    "{}@{}: acknowledged but never read back through node {node}",
                    k.0, k.1
                ));
                continue;
            };
            if !node_reads
                .iter()
                .any(|e| e.outcome.ok() && e.outcome.body_digest.as_deref() == Some(&k.1))
            {
                let last = node_reads.last().map(|e| &e.outcome);
                v.violation(format!(
                    "{}@{}: acknowledged, but node {node} returned {:?} (body {:?}): write lost",
                    k.0,
                    k.1,
                    last.and_then(|o| o.status),
                    last.and_then(|o| o.body_digest.clone())
                ));
            }
        }
    }
    for k in &delete_acked {
        v.checked += 1;
        for e in reads[k].values().flatten() {
            if e.outcome.ok() {
                v.violation(format!(
                    "{}@{}: delete acknowledged, yet node {} still serves it",
                    k.0, k.1, e.node
                ));
            }
        }
    }
    v
}
