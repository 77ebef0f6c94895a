//! The checkers catch what they must: a planted lost write, a planted stale read, a
//! bad digest, a false success on an isolated node, a stray 500; and a correct history
//! passes every one of them.

use std::collections::BTreeMap;

use super::convergence::NodeState;
use super::*;
use crate::history::{Event, FaultRecord, Op, Outcome, Phase};

const NODES: [u64; 3] = [1, 2, 3];

struct H {
    events: Vec<Event>,
}

impl H {
    fn new() -> H {
        H { events: Vec::new() }
    }

    fn add(&mut self, node: u64, phase: Phase, at: (u64, u64), op: Op, outcome: Outcome) {
        self.events.push(Event {
            id: self.events.len() as u64,
            worker: 0,
            node,
            phase,
            invoke_ms: at.0,
            complete_ms: at.1,
            op,
            outcome,
        });
    }

    fn move_tag(&mut self, at: (u64, u64), digest: &str, status: Option<u16>) {
        let outcome = match status {
            Some(s) => Outcome::status(s),
            None => Outcome::failed("timed out"),
        };
        self.add(
            1,
            Phase::Workload,
            at,
            Op::MoveTag {
                repo: "r".into(),
                tag: "t".into(),
                digest: digest.into(),
            },
            outcome,
        );
    }

    fn read_tag(&mut self, node: u64, at: (u64, u64), digest: Option<&str>) {
        let outcome = match digest {
            Some(d) => Outcome {
                status: Some(200),
                body_digest: Some(d.into()),
                header_digest: Some(d.into()),
                ..Outcome::default()
            },
            None => Outcome::status(404),
        };
        self.add(
            node,
            Phase::Workload,
            at,
            Op::ReadTag {
                repo: "r".into(),
                tag: "t".into(),
            },
            outcome,
        );
    }

    fn pull(&mut self, node: u64, phase: Phase, digest: &str, got: Option<&str>) {
        let outcome = match got {
            Some(d) => Outcome {
                status: Some(200),
                body_digest: Some(d.into()),
                header_digest: Some(digest.into()),
                ..Outcome::default()
            },
            None => Outcome::status(404),
        };
        self.add(
            node,
            phase,
            (10_000, 10_001),
            Op::PullManifest {
                repo: "r".into(),
                digest: digest.into(),
            },
            outcome,
        );
    }

    /// Read-back of every digest through every node, all intact.
    fn verify_all(&mut self, digests: &[&str]) {
        for d in digests {
            for n in NODES {
                self.pull(n, Phase::Verify, d, Some(d));
            }
        }
    }
}

/// A correct history: tag moved a -> b -> c, reads see a value at least as new as
/// the last acknowledged before them (or one concurrent with them), an unacknowledged
/// write shows up later, everything reads back.
fn correct() -> H {
    let mut h = H::new();
    h.move_tag((0, 10), "a", Some(201));
    h.read_tag(2, (12, 14), Some("a"));
    h.move_tag((20, 30), "b", Some(201));
    // Concurrent with the write of b: either value is fine.
    h.read_tag(3, (25, 28), Some("a"));
    h.read_tag(1, (31, 33), Some("b"));
    // Timed out, yet applied: may become visible any time after it was invoked.
    h.move_tag((40, 5_000), "c", None);
    h.read_tag(2, (6_000, 6_001), Some("c"));
    h.verify_all(&["a", "b"]);
    h
}

fn all(h: &H) -> Vec<Verdict> {
    vec![
        durability::check(&h.events, &NODES),
        digests::check(&h.events),
        tags::check(&h.events),
        statuses::check(&h.events, &[], 1_000, 10_000),
        minority::check(&h.events, &[]),
    ]
}

#[test]
fn a_correct_history_passes_every_checker() {
    for v in all(&correct()) {
        assert!(
            v.passed(),
            "{} failed on a correct history: {:?}",
            v.name,
            v.examples
        );
        assert!(
            v.checked > 0 || v.name == "minority",
            "{} checked nothing",
            v.name
        );
    }
}

#[test]
fn a_lost_write_is_caught() {
    let mut h = correct();
    h.move_tag((7_000, 7_010), "d", Some(201));
    // Node 2 no longer has it after the drill.
    h.pull(1, Phase::Verify, "d", Some("d"));
    h.pull(2, Phase::Verify, "d", None);
    h.pull(3, Phase::Verify, "d", Some("d"));
    let v = durability::check(&h.events, &NODES);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("write lost"), "{:?}", v.examples);
}

#[test]
fn an_acknowledged_write_never_read_back_is_caught() {
    let mut h = correct();
    h.move_tag((7_000, 7_010), "d", Some(201));
    let v = durability::check(&h.events, &NODES);
    assert_eq!(v.violations, 3, "{:?}", v.examples);
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = correct();
    // b was acknowledged at 30 ms; a read starting at 35 ms returns a.
    h.read_tag(3, (35, 37), Some("a"));
    let v = tags::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("stale read"), "{:?}", v.examples);
}

#[test]
fn an_old_value_rewritten_by_a_write_of_unknown_outcome_may_come_back() {
    let mut h = H::new();
    h.move_tag((0, 10), "a", Some(201));
    // Another client writes a again but gets a 503: it may still take effect later.
    h.move_tag((15, 5_000), "a", Some(503));
    h.move_tag((20, 30), "b", Some(201));
    h.read_tag(3, (6_000, 6_010), Some("a"));
    assert_eq!(tags::check(&h.events).violations, 0);
    // Without that write, the same read is stale.
    let mut strict = H::new();
    strict.move_tag((0, 10), "a", Some(201));
    strict.move_tag((20, 30), "b", Some(201));
    strict.read_tag(3, (6_000, 6_010), Some("a"));
    assert_eq!(tags::check(&strict.events).violations, 1);
}

#[test]
fn a_read_going_back_after_another_read_saw_a_newer_value_is_caught() {
    let mut h = H::new();
    h.move_tag((0, 10), "a", Some(201));
    h.move_tag((20, 100), "b", Some(201));
    // b is not acknowledged yet, but a read already saw it; a later read returning a
    // goes back in time.
    h.read_tag(1, (30, 40), Some("b"));
    h.read_tag(2, (50, 60), Some("a"));
    let v = tags::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("earlier read"), "{:?}", v.examples);
}

#[test]
fn a_read_of_nothing_after_an_acknowledged_write_is_caught() {
    let mut h = correct();
    h.read_tag(2, (50, 52), None);
    let v = tags::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
}

#[test]
fn a_read_of_a_value_never_written_is_caught() {
    let mut h = correct();
    h.read_tag(2, (50, 52), Some("zzz"));
    assert_eq!(tags::check(&h.events).violations, 1);
}

#[test]
fn bytes_not_matching_their_digest_are_caught() {
    let mut h = correct();
    h.pull(2, Phase::Workload, "a", Some("corrupt"));
    let v = digests::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
}

#[test]
fn a_500_and_a_503_outside_faults_are_caught() {
    let mut h = correct();
    let fault = FaultRecord {
        kind: "kill-leader".into(),
        targets: vec![1],
        minority: vec![],
        inject_ms: 100,
        in_place_ms: 100,
        heal_ms: Some(200),
        converged_ms: Some(300),
        redundant_ms: None,
        backlog_peak: None,
        note: String::new(),
    };
    let busy = Outcome {
        status: Some(503),
        retry_after: true,
        ..Outcome::default()
    };
    let op = || Op::PushBlob {
        repo: "r".into(),
        digest: "x".into(),
    };
    h.add(2, Phase::Workload, (150, 160), op(), busy.clone());
    assert!(statuses::check(&h.events, std::slice::from_ref(&fault), 50, 10_000).passed());
    h.add(2, Phase::Workload, (900, 910), op(), busy);
    h.add(2, Phase::Workload, (150, 160), op(), Outcome::status(500));
    h.add(2, Phase::Workload, (150, 160), op(), Outcome::status(503));
    let v = statuses::check(&h.events, &[fault], 50, 10_000);
    assert_eq!(v.violations, 3, "{:?}", v.examples);
}

/// A 507 is the clear answer of the node whose disk a disk-full fault filled, while
/// it holds; from another node, or after the fault, it is a violation.
#[test]
fn a_507_counts_only_from_the_full_disk_while_it_is_full() {
    let mut h = correct();
    let fault = FaultRecord {
        kind: "disk-full".into(),
        targets: vec![2],
        minority: vec![],
        inject_ms: 100,
        in_place_ms: 120,
        heal_ms: Some(200),
        converged_ms: Some(300),
        redundant_ms: None,
        backlog_peak: None,
        note: String::new(),
    };
    let op = || Op::PushBlob {
        repo: "r".into(),
        digest: "x".into(),
    };
    h.add(2, Phase::Workload, (150, 160), op(), Outcome::status(507));
    assert!(statuses::check(&h.events, std::slice::from_ref(&fault), 50, 10_000).passed());
    h.add(1, Phase::Workload, (150, 160), op(), Outcome::status(507));
    h.add(2, Phase::Workload, (900, 910), op(), Outcome::status(507));
    let v = statuses::check(&h.events, &[fault], 50, 10_000);
    assert_eq!(v.violations, 2, "{:?}", v.examples);
}

#[test]
fn an_isolated_node_acknowledging_a_write_is_caught() {
    let mut h = correct();
    let fault = FaultRecord {
        kind: "partition-one".into(),
        targets: vec![3],
        minority: vec![3],
        inject_ms: 1_000,
        in_place_ms: 1_000,
        heal_ms: Some(2_000),
        converged_ms: Some(2_500),
        redundant_ms: None,
        backlog_peak: None,
        note: String::new(),
    };
    let op = || Op::PushBlob {
        repo: "r".into(),
        digest: "x".into(),
    };
    let busy = Outcome {
        status: Some(503),
        retry_after: true,
        ..Outcome::default()
    };
    h.add(3, Phase::Workload, (1_100, 1_900), op(), busy);
    // The majority side keeps acknowledging.
    h.add(
        1,
        Phase::Workload,
        (1_100, 1_200),
        op(),
        Outcome::status(201),
    );
    assert!(minority::check(&h.events, std::slice::from_ref(&fault)).passed());
    h.add(
        3,
        Phase::Workload,
        (1_300, 1_400),
        op(),
        Outcome::status(201),
    );
    let v = minority::check(&h.events, &[fault]);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
}

#[test]
fn diverged_nodes_are_caught() {
    let state = |node, applied, digest: &str| NodeState {
        node,
        last_applied: Some(applied),
        leader: Some(1),
        tags: BTreeMap::from([("r:t".to_string(), digest.to_string())]),
        state_applied: Some(applied),
        state_digest: Some("d".repeat(64)),
        error: None,
    };
    assert!(convergence::check(&[state(1, 9, "a"), state(2, 9, "a"), state(3, 9, "a")]).passed());
    assert_eq!(
        convergence::check(&[state(1, 9, "a"), state(2, 8, "a"), state(3, 9, "b")]).violations,
        2
    );
}

/// A planted divergence: every node reports the same applied index, leader and tags,
/// but one node's state digest differs. Only the state digest shows it.
#[test]
fn a_diverged_state_digest_at_the_same_applied_index_is_caught() {
    let state = |node, digest: Option<&str>| NodeState {
        node,
        last_applied: Some(40),
        leader: Some(1),
        tags: BTreeMap::from([("r:t".to_string(), "sha256:a".to_string())]),
        state_applied: Some(40),
        state_digest: digest.map(str::to_string),
        error: None,
    };
    let same = "ab".repeat(32);
    let other = "cd".repeat(32);
    let agreed = [
        state(1, Some(&same)),
        state(2, Some(&same)),
        state(3, Some(&same)),
    ];
    assert!(convergence::check(&agreed).passed());

    let diverged = [
        state(1, Some(&same)),
        state(2, Some(&other)),
        state(3, Some(&same)),
    ];
    let v = convergence::check(&diverged);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("state diverged"), "{:?}", v.examples);

    let missing = [state(1, Some(&same)), state(2, None), state(3, Some(&same))];
    assert_eq!(convergence::check(&missing).violations, 1);

    // Digests taken at different applied indices are not compared with each other.
    let mut later = state(3, Some(&other));
    later.state_applied = Some(41);
    let v = convergence::check(&[state(1, Some(&same)), state(2, Some(&same)), later]);
    assert_eq!(v.violations, 0, "{:?}", v.examples);
}

/// A write answered 503 may take effect only until the forwarding window (plus the
/// commit margin) after its answer: seen within that time it passes, seen after a read
/// that began past it had seen another value it "appeared late", and read after a later
/// acknowledged write it is stale.
#[test]
fn a_503_write_taking_effect_after_the_forwarding_window_is_caught() {
    use super::tags::UNAVAILABLE_EFFECT_MS;
    let base = || {
        let mut h = H::new();
        h.move_tag((0, 10), "a", Some(201));
        h.move_tag((20, 5_020), "b", Some(503));
        h.read_tag(2, (5_100, 5_110), Some("a"));
        h
    };
    let late = 5_020 + UNAVAILABLE_EFFECT_MS;
    // b shows up within its window, after a read that still saw a: fine.
    let mut within = base();
    within.read_tag(3, (late - 1_000, late - 990), Some("b"));
    assert_eq!(tags::check(&within.events).violations, 0);
    // A read that began after the window saw a; a later read sees b: b appeared late.
    let mut appeared = base();
    appeared.read_tag(1, (late + 100, late + 110), Some("a"));
    appeared.read_tag(2, (late + 5_000, late + 5_010), Some("b"));
    let v = tags::check(&appeared.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("appeared late"), "{:?}", v.examples);
    assert!(v.examples[0].contains("answered 503"), "{:?}", v.examples);
    // Without the read in between, nothing shows that b was not in effect in time.
    let mut unseen = base();
    unseen.read_tag(2, (late + 5_000, late + 5_010), Some("b"));
    assert_eq!(tags::check(&unseen.events).violations, 0);
    // A write invoked after the window and acknowledged before the read makes b stale.
    let mut stale = base();
    stale.move_tag((late + 100, late + 200), "c", Some(201));
    stale.read_tag(2, (late + 300, late + 310), Some("b"));
    let v = tags::check(&stale.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("stale read"), "{:?}", v.examples);
    // A write without any answer stays unbounded: the same history passes.
    let mut unknown = H::new();
    unknown.move_tag((0, 10), "a", Some(201));
    unknown.move_tag((20, 15_020), "b", None);
    unknown.read_tag(1, (late + 100, late + 110), Some("a"));
    unknown.read_tag(2, (late + 5_000, late + 5_010), Some("b"));
    assert_eq!(tags::check(&unknown.events).violations, 0);
}

/// An acknowledged value cannot come back once a read that began after its
/// acknowledgement saw another value, even if that other write was invoked before it.
#[test]
fn an_acknowledged_value_coming_back_after_another_was_read_is_caught() {
    let mut h = H::new();
    // Concurrent writes: b acknowledged first, a took effect after it.
    h.move_tag((0, 100), "a", Some(201));
    h.move_tag((10, 50), "b", Some(201));
    h.read_tag(1, (200, 210), Some("a"));
    h.read_tag(2, (220, 230), Some("a"));
    assert_eq!(tags::check(&h.events).violations, 0);
    h.read_tag(3, (300, 310), Some("b"));
    let v = tags::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("appeared late"), "{:?}", v.examples);
}

/// A refused write (4xx) never takes effect: reading its value is a violation.
#[test]
fn a_value_of_a_refused_write_read_back_is_caught() {
    let mut h = correct();
    h.move_tag((50, 60), "x", Some(400));
    h.read_tag(2, (70, 80), Some("x"));
    let v = tags::check(&h.events);
    assert_eq!(v.violations, 1, "{:?}", v.examples);
    assert!(v.examples[0].contains("no write put"), "{:?}", v.examples);
}
