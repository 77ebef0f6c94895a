//! Log matching: two nodes' logs never disagree about a committed position. Every
//! index both nodes applied holds the identical entry (same log id, same payload) on
//! both, and wherever two logs hold entries with the same log id, those entries are
//! identical (one leader id writes one entry per index).

use super::history::NodeFinal;

/// Checks every pair of nodes' final logs.
pub(super) fn check(finals: &[NodeFinal]) -> Result<(), String> {
    for (i, a) in finals.iter().enumerate() {
        for b in &finals[i + 1..] {
            let both_applied = a.applied_index().min(b.applied_index());
            for (index, ea) in &a.log {
                let Some(eb) = b.log.get(index) else {
                    continue;
                };
                let committed = Some(*index) <= both_applied;
                if (committed || ea.log_id == eb.log_id) && ea != eb {
                    return Err(format!(
                        "nodes {} and {} disagree at log index {index}{}: {ea:?} vs {eb:?}",
                        a.node,
                        b.node,
                        if committed {
                            ", which both applied"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ack, final_state, log_id};
    use super::*;
    use crate::type_config::Entry;
    use openraft::entry::RaftEntry;

    #[test]
    fn logs_that_disagree_at_an_applied_index_are_caught() {
        let a = ack(1);
        let b = ack(2);
        let one = final_state(
            1,
            vec![Entry::new_normal(log_id(1, 1, 1), a.cmd.clone().into())],
            &[&a],
        );
        let two = final_state(
            2,
            vec![Entry::new_normal(log_id(1, 2, 1), b.cmd.clone().into())],
            &[&b],
        );
        check(&[one.clone(), one.clone()]).unwrap();
        let err = check(&[one.clone(), two]).unwrap_err();
        assert!(
            err.contains("disagree at log index 1, which both applied"),
            "{err}"
        );

        // Not applied by node 3, but the same log id with another payload.
        let mut three = final_state(
            3,
            vec![Entry::new_normal(log_id(1, 1, 1), b.cmd.clone().into())],
            &[],
        );
        three.last_applied = None;
        let err = check(&[one, three]).unwrap_err();
        assert!(err.contains("disagree at log index 1:"), "{err}");
    }
}
