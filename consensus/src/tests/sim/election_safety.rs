//! Election safety, in the form that holds for berth's Raft.
//!
//! berth runs openraft with its default leader ids, `(term, node)` ordered
//! lexicographically: two nodes may both be elected in one term (the later, greater id
//! wins), so "one leader per term" is not the invariant. What Raft's election safety
//! becomes is: **each leader id is elected at most once**. A node elected twice in the
//! same term, for example after a restart that forgot its vote, could append two
//! different entries under one log id and break log matching.
//!
//! One repeat is by design: a leader that restarts finds its own committed vote and
//! resumes leading under the same leader id at once (openraft's leader restore, on by
//! default). That is safe because berth's log store only lets replication read entries
//! that are already durable. It is accepted only in exactly that shape: the first
//! status of a new incarnation, in the term the node had when it went down.
//!
//! And what all of it rests on: **a node's term never goes back**, not even across a
//! crash and restart (its vote is durable).

use std::collections::BTreeMap;

use super::history::Observation;

/// Checks the observations of one run, in the order they were made.
pub(super) fn check(observations: &[Observation]) -> Result<(), String> {
    // The last observation of each node.
    let mut last: BTreeMap<u64, &Observation> = BTreeMap::new();
    // Each leadership that started: (term, node) -> its first observation.
    let mut elected: BTreeMap<(u64, u64), &Observation> = BTreeMap::new();
    for o in observations {
        let previous = last.insert(o.node, o);
        if let Some(p) = previous
            && o.term < p.term
        {
            return Err(format!(
                "node {} went back from term {} (incarnation {}, at {} ms) to term {} \
                 (incarnation {}, at {} ms): its vote was not durable",
                o.node, p.term, p.incarnation, p.at_ms, o.term, o.incarnation, o.at_ms
            ));
        }
        if !o.is_leader {
            continue;
        }
        let continues = previous
            .is_some_and(|p| p.is_leader && p.term == o.term && p.incarnation == o.incarnation);
        let restored = previous.is_some_and(|p| p.term == o.term && p.incarnation < o.incarnation);
        if continues || restored {
            continue;
        }
        if let Some(first) = elected.insert((o.term, o.node), o) {
            return Err(format!(
                "node {} was elected twice in term {}: at {} ms (incarnation {}) and again at \
                 {} ms (incarnation {})",
                o.node, o.term, first.at_ms, first.incarnation, o.at_ms, o.incarnation
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, node: u64, incarnation: u32, term: u64, is_leader: bool) -> Observation {
        Observation {
            at_ms,
            node,
            incarnation,
            term,
            is_leader,
        }
    }

    #[test]
    fn a_leader_elected_twice_in_one_term_is_caught() {
        // Node 1 leads term 3, crashes, restarts without its vote and leads term 3 again.
        let history = [
            obs(10, 1, 0, 3, true),
            obs(10, 2, 0, 3, false),
            obs(500, 1, 1, 3, false),
            obs(900, 1, 1, 3, true),
        ];
        let err = check(&history).unwrap_err();
        assert!(err.contains("node 1 was elected twice in term 3"), "{err}");

        // The same within one incarnation: leader, follower, leader again in term 3.
        let history = [
            obs(10, 2, 0, 3, true),
            obs(20, 2, 0, 3, false),
            obs(30, 2, 0, 3, true),
        ];
        let err = check(&history).unwrap_err();
        assert!(err.contains("node 2 was elected twice in term 3"), "{err}");
    }

    #[test]
    fn a_leader_that_resumes_its_leadership_on_restart_passes() {
        let history = [
            obs(10, 1, 0, 3, true),
            obs(10, 2, 0, 3, false),
            obs(600, 1, 1, 3, true),
            obs(700, 1, 1, 3, false),
            obs(800, 1, 1, 4, false),
        ];
        check(&history).unwrap();
    }

    #[test]
    fn a_term_that_goes_back_after_a_restart_is_caught() {
        let history = [obs(10, 3, 0, 5, false), obs(700, 3, 1, 4, false)];
        let err = check(&history).unwrap_err();
        assert!(err.contains("went back from term 5"), "{err}");
    }

    #[test]
    fn successive_leaders_and_greater_leader_ids_in_one_term_pass() {
        // Node 1 leads term 2; node 2 is elected in term 2 as well, with the greater
        // leader id (2, 2), which openraft's default leader ids allow; node 1 keeps
        // believing in its stale leadership until it hears of term 4, led by node 3.
        let history = [
            obs(5, 1, 0, 2, true),
            obs(7, 2, 0, 2, true),
            obs(50, 3, 0, 4, true),
            obs(60, 1, 0, 4, false),
            obs(61, 2, 0, 4, false),
            obs(900, 2, 1, 4, false),
            obs(990, 2, 1, 6, true),
        ];
        check(&history).unwrap();
    }
}
