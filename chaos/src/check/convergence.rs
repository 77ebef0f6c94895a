//! Convergence after healing: every node reports the same Raft applied index and, read
//! through each node, the same tag -> digest map. berth exposes no state digest, so the
//! map is the stand-in; reads are linearizable (read-index), so the map mainly proves
//! every node answers and agrees with the leader, while the applied index proves
//! every state machine has applied the same log prefix.

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
    /// Why the node could not be read, if it could not.
    pub error: Option<String>,
}

pub fn check(states: &[NodeState]) -> Verdict {
    let mut v = Verdict::new(
        "convergence",
        "after healing every node has the same applied index and the same tag map",
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
    v
}
