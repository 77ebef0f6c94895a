//! Committed entries are never lost: every proposal the cluster acknowledged is, after
//! the faults healed, in every node's Raft log at the same position with the same
//! content, at or below what that node applied (unless compaction removed that part of
//! the log, after a snapshot covered it), and its effect is in every node's registry
//! state; and the state machines converged to identical state.

use std::collections::BTreeSet;

use openraft::EntryPayload;

use super::history::{Ack, NodeFinal, upload_of};

/// Checks the acknowledged proposals of one run against every node's final state.
pub(super) fn check(acks: &[Ack], finals: &[NodeFinal]) -> Result<(), String> {
    let Some(first) = finals.first() else {
        return Err("no node's final state to check".to_owned());
    };
    for f in finals {
        if f.applied_index() != first.applied_index() || f.state_digest != first.state_digest {
            return Err(format!(
                "state machines differ after healing: node {} applied {:?} (state {}), node {} \
                 applied {:?} (state {})",
                first.node,
                first.last_applied,
                short(&first.state_digest),
                f.node,
                f.last_applied,
                short(&f.state_digest)
            ));
        }
    }
    for ack in acks {
        // Proposals carry a request id; the command is what must survive.
        let wanted = &ack.cmd;
        let shown = crate::model::VersionedCommand::from(ack.cmd.clone());
        // Where each node's log holds the command, at or below what it applied.
        let found: Vec<(&NodeFinal, BTreeSet<u64>)> = finals
            .iter()
            .map(|f| {
                let applied = f.applied_index().unwrap_or(0);
                let at = f
                    .log
                    .iter()
                    .filter(|(index, e)| {
                        **index <= applied
                            && matches!(&e.payload, EntryPayload::Normal(c) if c.clone().into_current() == *wanted)
                    })
                    .map(|(index, _)| *index)
                    .collect();
                (f, at)
            })
            .collect();
        for (f, at) in &found {
            // Absent from a log is fine only where compaction removed the entry: the
            // node purged past an index where another node still holds it, or every
            // node purged it.
            let compacted = f.last_purged.is_some_and(|purged| {
                found.iter().all(|(_, other)| other.is_empty())
                    || found
                        .iter()
                        .any(|(_, other)| other.first().is_some_and(|i| *i <= purged))
            });
            if at.is_empty() && !compacted {
                return Err(format!(
                    "`{shown}` acknowledged at {} ms through node {} is not in node {}'s log \
                     up to its applied index {:?}: a committed entry was lost",
                    ack.at_ms,
                    ack.via,
                    f.node,
                    f.applied_index()
                ));
            }
            if let Some(record) = upload_of(&ack.cmd)
                && !f.uploads.contains(&record)
            {
                return Err(format!(
                    "`{shown}` acknowledged at {} ms is committed but its upload is not in \
                     node {}'s state",
                    ack.at_ms, f.node
                ));
            }
        }
        for (i, (a, at_a)) in found.iter().enumerate() {
            for (b, at_b) in &found[i + 1..] {
                // Compare only the part of the log both nodes still hold.
                let kept = a.last_purged.max(b.last_purged);
                let kept_a: BTreeSet<u64> =
                    at_a.iter().filter(|i| Some(**i) > kept).copied().collect();
                let kept_b: BTreeSet<u64> =
                    at_b.iter().filter(|i| Some(**i) > kept).copied().collect();
                if kept_a != kept_b {
                    return Err(format!(
                        "`{shown}` is at log index {kept_a:?} on node {} but at {kept_b:?} on \
                         node {}",
                        a.node, b.node
                    ));
                }
            }
        }
    }
    Ok(())
}

fn short(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ack, final_state, log_id};
    use super::*;
    use crate::type_config::Entry;
    use openraft::entry::RaftEntry;

    #[test]
    fn a_lost_committed_entry_is_caught() {
        let a = ack(1);
        let b = ack(2);
        let with_both = final_state(
            1,
            vec![
                Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), b.cmd.clone().into()),
            ],
            &[&a, &b],
        );
        check(
            &[a.clone(), b.clone()],
            &[with_both.clone(), with_both.clone()],
        )
        .unwrap();

        // Node 2 has the same applied index and state, but entry 2 was replaced by
        // another leader's: the acknowledged `b` is gone from its log.
        let mut lost = with_both.clone();
        lost.node = 2;
        lost.log.insert(2, Entry::new_blank(log_id(2, 2, 2)));
        let err = check(&[a.clone(), b.clone()], &[with_both.clone(), lost]).unwrap_err();
        assert!(err.contains("is not in node 2's log"), "{err}");

        // Node 2 holds `b` in its log but never applied it.
        let mut unapplied = final_state(
            2,
            vec![
                Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), b.cmd.clone().into()),
            ],
            &[&a],
        );
        unapplied.last_applied = Some(log_id(1, 1, 1));
        let err = check(&[a.clone(), b.clone()], &[with_both.clone(), unapplied]).unwrap_err();
        assert!(err.contains("state machines differ"), "{err}");

        // Same log on both, but node 2's state lacks the upload `b` created.
        let mut no_effect = final_state(
            2,
            vec![
                Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), b.cmd.clone().into()),
            ],
            &[&a],
        );
        no_effect.state_digest = with_both.state_digest;
        let err = check(&[a, b], &[with_both, no_effect]).unwrap_err();
        assert!(err.contains("its upload is not in node 2's state"), "{err}");
    }

    #[test]
    fn an_entry_compacted_away_counts_only_with_its_effect_in_the_state() {
        let a = ack(1);
        let b = ack(2);
        let entries = || {
            vec![
                Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), b.cmd.clone().into()),
            ]
        };
        let full = final_state(1, entries(), &[&a, &b]);
        // Node 2 took a snapshot covering index 1 and purged it from its log.
        let mut compacted = final_state(2, entries(), &[&a, &b]);
        compacted.log.remove(&1);
        compacted.last_purged = Some(1);
        check(&[a.clone(), b.clone()], &[full.clone(), compacted.clone()]).unwrap();

        // The same, but its snapshot lacks the upload `a` created.
        compacted
            .uploads
            .retain(|u| Some(u) != upload_of(&a.cmd).as_ref());
        compacted.state_digest = full.state_digest;
        let err = check(&[a, b], &[full, compacted]).unwrap_err();
        assert!(err.contains("its upload is not in node 2's state"), "{err}");
    }

    #[test]
    fn an_entry_at_different_positions_is_caught() {
        let a = ack(1);
        let b = ack(2);
        let one = final_state(
            1,
            vec![
                Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), b.cmd.clone().into()),
            ],
            &[&a, &b],
        );
        let mut two = final_state(
            2,
            vec![
                Entry::new_normal(log_id(1, 1, 1), b.cmd.clone().into()),
                Entry::new_normal(log_id(1, 1, 2), a.cmd.clone().into()),
            ],
            &[&a, &b],
        );
        two.state_digest = one.state_digest;
        let err = check(&[a], &[one, two]).unwrap_err();
        assert!(err.contains("at log index"), "{err}");
    }
}
