//! Convergence after healing: every node reports the same Raft applied index, the same
//! leader, the same tag -> digest map read through it, and, once the applied indices
//! agree, the same state digest. The digest (`state` of `/api/v1/cluster/status`: the
//! applied index and a SHA-256 over every state table, read in one local transaction)
//! is what proves the state machines hold the same state; tag reads are linearizable
//! (read-index), so the map mainly proves every node answers and agrees with the leader.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Verdict;

/// What one node reported after the drill.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeState {
    pub node: u64,
    pub last_applied: Option<u64>,
    pub leader: Option<u64>,
    /// `repo:tag` -> digest, as read through this node.
    pub tags: BTreeMap<String, String>,
    /// The applied index the state digest reflects (read with it, locally).
    pub state_applied: Option<u64>,
    /// SHA-256 of the node's applied state, hex.
    pub state_digest: Option<String>,
    /// Why the node could not be read, if it could not.
    pub error: Option<String>,
}

pub fn check(states: &[NodeState]) -> Verdict {
    let mut v = Verdict::new(
        "convergence",
        "after healing every node has the same applied index, tag map and state digest",
    );
    let Some(first) = states.first() else {
        v.violation("no node states were collected".into());
        return v;
    };
    for s in states {
        v.checked += 1;
        if let Some(err) = &s.error {
            v.violation(format!("node {} could not be read: {err}", s.node));
            continue;
        }
        if s.last_applied.is_none() || s.last_applied != first.last_applied {
            v.violation(format!(
                "node {} applied {:?}, node {} applied {:?}",
                s.node, s.last_applied, first.node, first.last_applied
            ));
        }
        if s.leader.is_none() || s.leader != first.leader {
            v.violation(format!(
                "node {} sees leader {:?}, node {} sees {:?}",
                s.node, s.leader, first.node, first.leader
            ));
        }
        if s.tags != first.tags {
            let differing: Vec<&String> = s
                .tags
                .iter()
                .filter(|(k, d)| first.tags.get(*k) != Some(d))
                .map(|(k, _)| k)
                .chain(first.tags.keys().filter(|k| !s.tags.contains_key(*k)))
                .take(5)
                .collect();
            v.violation(format!(
                "node {} and node {} disagree on tags {differing:?}",
                s.node, first.node
            ));
        }
    }
    check_digests(states, &mut v);
    v
}

/// Nodes that report the same `state.applied` must report the same `state.digest`.
/// Two nodes at different indices are not compared (the applied-index check above
/// already flags them); a node that reports no digest is a violation.
fn check_digests(states: &[NodeState], v: &mut Verdict) {
    let mut by_applied: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
    for s in states.iter().filter(|s| s.error.is_none()) {
        let (Some(applied), Some(digest)) = (s.state_applied, s.state_digest.as_deref()) else {
            v.violation(format!("node {} reports no state digest", s.node));
            continue;
        };
        match by_applied.get(&applied) {
            None => {
                by_applied.insert(applied, (s.node, digest));
            }
            Some((other, d)) if *d != digest => v.violation(format!(
                "state diverged: at applied index {applied} node {} has digest {} and node {other} has {}",
                s.node,
                short(digest),
                short(d)
            )),
            Some(_) => {}
        }
    }
}

fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}
