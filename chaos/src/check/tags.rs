//! Tag reads are linearizable per tag. Every tag write carries a unique manifest, so a
//! read's digest names the write it saw.
//!
//! Each attempt to write a value bounds when that value may take effect: an
//! acknowledged attempt between its invocation and its acknowledgement; an attempt
//! answered 503 between its invocation and [`UNAVAILABLE_EFFECT_MS`] after its answer
//! (a leader refuses a forwarded command older than the forwarding window, and one it
//! accepted commits within about one election); an attempt without an answer, or with
//! another 5xx, at any time after its invocation (a paused node may still propose it
//! when it resumes). A read of tag T returning value `w` is wrong when:
//!
//! - no write that was not refused (4xx) put `w` there, or `w` was first written only after the read ended;
//! - it is stale: a write to T invoked after the last moment `w` could have taken
//!   effect was acknowledged before the read began, or an earlier completed read had
//!   already seen such a write;
//! - `w` appears late: an earlier completed read that began after the last moment `w`
//!   could have taken effect saw another value, so `w` would have had to take effect
//!   after its window (this is what catches a 503'd write taking effect too late);
//! - it found nothing although a write to T was acknowledged before it began.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{Event, Op};

/// The forwarding window of berth's consensus layer (`FORWARD_ACCEPT_WINDOW`): a leader
/// refuses a forwarded command proposed longer ago than this, by its clock.
pub const FORWARD_WINDOW_MS: u64 = 5_000;
/// Time allowed after the window for a command the leader accepted to commit: one
/// leader change (an election timeout is at most 1.5 s) twice over, plus the commit.
pub const COMMIT_MARGIN_MS: u64 = 3_000;
/// How long after a write was answered 503 it may still take effect.
pub const UNAVAILABLE_EFFECT_MS: u64 = FORWARD_WINDOW_MS + COMMIT_MARGIN_MS;

/// One attempt to write a value: the interval in which it may have taken effect.
#[derive(Clone, Copy)]
struct Attempt {
    invoke: u64,
    /// The last moment it may have taken effect; `None`: no bound.
    effect_until: Option<u64>,
    /// Why it is bounded that way, for the violation text.
    answered: Answer,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Acknowledged,
    Unavailable,
    Unknown,
}

/// Every attempt to write one value to one tag.
#[derive(Default)]
struct Write {
    attempts: Vec<Attempt>,
}

impl Write {
    /// The first invocation of any attempt.
    fn invoke(&self) -> u64 {
        self.attempts.iter().map(|a| a.invoke).min().unwrap_or(0)
    }

    /// The last acknowledgement, if any attempt was acknowledged.
    fn acked_at(&self) -> Option<u64> {
        self.attempts
            .iter()
            .filter(|a| a.answered == Answer::Acknowledged)
            .filter_map(|a| a.effect_until)
            .max()
    }

    /// The last moment the value may have taken effect, counting only attempts invoked
    /// before `before` (a read ending then cannot have seen a later attempt's effect).
    /// `None`: some such attempt is unbounded, so the value may be current at any time.
    fn effect_until(&self, before: u64) -> Option<(u64, Answer)> {
        let mut last: Option<(u64, Answer)> = None;
        for a in self.attempts.iter().filter(|a| a.invoke < before) {
            let until = a.effect_until?;
            if last.is_none_or(|(l, _)| until > l) {
                last = Some((until, a.answered));
            }
        }
        last
    }
}

/// Largest `value` among `(at, value)` pairs with `at < before`; pairs sorted by `at`.
fn max_before(sorted: &[(u64, u64)], prefix_max: &[u64], before: u64) -> Option<u64> {
    let n = sorted.partition_point(|(at, _)| *at < before);
    (n > 0).then(|| prefix_max[n - 1])
}

fn prefix_max(sorted: &[(u64, u64)]) -> Vec<u64> {
    let mut m = 0;
    sorted
        .iter()
        .map(|(_, v)| {
            m = m.max(*v);
            m
        })
        .collect()
}

/// A read's start and the value it saw.
type Start<'a> = (u64, &'a str);
/// The latest start of a prefix, and the latest start of another value than that one.
type Best<'a> = (Start<'a>, Option<Start<'a>>);

/// Reads sorted by completion, with, for every prefix, the latest-starting read and
/// the latest-starting read of another value than that one: enough to find the
/// latest-starting earlier read of any value other than a given one.
struct LatestOther<'a> {
    /// (completed at, invoked at, value), sorted.
    reads: Vec<(u64, u64, &'a str)>,
    /// Per prefix: (invoked at, value) of the latest start, and the latest start of
    /// another value.
    best: Vec<Best<'a>>,
}

impl<'a> LatestOther<'a> {
    fn new(mut reads: Vec<(u64, u64, &'a str)>) -> LatestOther<'a> {
        reads.sort_unstable();
        let mut best = Vec::with_capacity(reads.len());
        let mut cur: Option<Best<'a>> = None;
        for &(_, invoke, value) in &reads {
            let next = match cur {
                None => ((invoke, value), None),
                Some((first, second)) => {
                    let mut all = [Some(first), second, Some((invoke, value))];
                    all.sort_unstable_by_key(|c| std::cmp::Reverse(c.map(|c| c.0)));
                    let top = all[0].expect("at least one");
                    let other = all[1..].iter().flatten().find(|c| c.1 != top.1).copied();
                    (top, other)
                }
            };
            best.push(next);
            cur = Some(next);
        }
        LatestOther { reads, best }
    }

    /// The latest-starting read completed before `before` that saw a value other than
    /// `value`: (invoked at, value).
    fn latest_other(&self, before: u64, value: &str) -> Option<Start<'a>> {
        let n = self.reads.partition_point(|(at, _, _)| *at < before);
        let (top, other) = *self.best.get(n.checked_sub(1)?)?;
        if top.1 != value { Some(top) } else { other }
    }

    /// The read completed before `before` that started at `invoke` with `value`.
    fn find(&self, before: u64, invoke: u64, value: &str) -> Option<(u64, u64)> {
        self.reads
            .iter()
            .take_while(|(at, _, _)| *at < before)
            .find(|(_, i, v)| *i == invoke && *v == value)
            .map(|(at, i, _)| (*i, *at))
    }
}

pub fn check(events: &[Event]) -> Verdict {
    let mut v = Verdict::new(
        "tags",
        "per-tag linearizable reads: no read returns a value older than one acknowledged before it began, \
         nor one written by a 503'd request more than the forwarding window after its answer",
    );
    type TagKey = (String, String);
    let mut writes: BTreeMap<TagKey, BTreeMap<String, Write>> = BTreeMap::new();
    let mut reads: BTreeMap<TagKey, Vec<&Event>> = BTreeMap::new();
    let mut repos_with_deletes = std::collections::BTreeSet::new();
    for e in events {
        match &e.op {
            Op::MoveTag { repo, tag, digest } | Op::PushManifest { repo, tag, digest } => {
                let attempt = if e.outcome.ok() {
                    Some(Attempt {
                        invoke: e.invoke_ms,
                        effect_until: Some(e.complete_ms),
                        answered: Answer::Acknowledged,
                    })
                } else {
                    match e.outcome.status {
                        Some(503) => Some(Attempt {
                            invoke: e.invoke_ms,
                            effect_until: Some(e.complete_ms + UNAVAILABLE_EFFECT_MS),
                            answered: Answer::Unavailable,
                        }),
                        None | Some(500..) => Some(Attempt {
                            invoke: e.invoke_ms,
                            effect_until: None,
                            answered: Answer::Unknown,
                        }),
                        // Refused: never takes effect.
                        Some(_) => None,
                    }
                };
                let w = writes
                    .entry((repo.clone(), tag.clone()))
                    .or_default()
                    .entry(digest.clone())
                    .or_default();
                if let Some(a) = attempt {
                    w.attempts.push(a);
                }
            }
            Op::ReadTag { repo, tag } => reads
                .entry((repo.clone(), tag.clone()))
                .or_default()
                .push(e),
            Op::DeleteManifest { repo, .. } => {
                repos_with_deletes.insert(repo.clone());
            }
            _ => {}
        }
    }
    for (key, tag_reads) in &reads {
        let empty = BTreeMap::new();
        let tag_writes = writes.get(key).unwrap_or(&empty);
        // (acknowledged at, invoked at) of acknowledged writes.
        let mut acked: Vec<(u64, u64)> = tag_writes
            .values()
            .filter_map(|w| w.acked_at().map(|a| (a, w.invoke())))
            .collect();
        acked.sort_unstable();
        let acked_max = prefix_max(&acked);
        // (read completed at, invocation of the write it saw).
        let mut seen: Vec<(u64, u64)> = tag_reads
            .iter()
            .filter(|r| r.outcome.ok())
            .filter_map(|r| {
                let w = tag_writes.get(r.outcome.body_digest.as_deref()?)?;
                Some((r.complete_ms, w.invoke()))
            })
            .collect();
        seen.sort_unstable();
        let seen_max = prefix_max(&seen);
        let values = LatestOther::new(
            tag_reads
                .iter()
                .filter(|r| r.outcome.ok())
                .filter_map(|r| {
                    Some((
                        r.complete_ms,
                        r.invoke_ms,
                        r.outcome.body_digest.as_deref()?,
                    ))
                })
                .collect(),
        );
        for r in tag_reads {
            let name = format!("{}:{}", key.0, key.1);
            match r.outcome.status {
                Some(404) if !repos_with_deletes.contains(&key.0) => {
                    v.checked += 1;
                    if let Some(&(at, _)) = acked.first()
                        && at < r.invoke_ms
                    {
                        v.violation(format!(
                            "op {} on node {}: read of {name} at {}..{} ms found nothing, but a write was acknowledged at {at} ms",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    }
                }
                Some(s) if (200..300).contains(&s) => {
                    v.checked += 1;
                    let digest = r.outcome.body_digest.clone().unwrap_or_default();
                    let Some(w) = tag_writes.get(&digest).filter(|w| !w.attempts.is_empty()) else {
                        v.violation(format!(
                            "op {} on node {}: read of {name} returned {digest}, which no write put there",
                            r.id, r.node
                        ));
                        continue;
                    };
                    if w.invoke() > r.complete_ms {
                        v.violation(format!(
                            "op {} on node {}: read of {name} ending at {} ms returned {digest}, written only from {} ms",
                            r.id,
                            r.node,
                            r.complete_ms,
                            w.invoke()
                        ));
                        continue;
                    }
                    // No bound: a write of this value with an unknown outcome, invoked
                    // before the read ended, may have taken effect just before the read.
                    let Some((until, why)) = w.effect_until(r.complete_ms) else {
                        continue;
                    };
                    let why = match why {
                        Answer::Acknowledged => format!("acknowledged at {until} ms"),
                        Answer::Unavailable => format!(
                            "answered 503 at {} ms, so in effect by {until} ms or never",
                            until - UNAVAILABLE_EFFECT_MS
                        ),
                        Answer::Unknown => unreachable!("unbounded attempts have no bound"),
                    };
                    if let Some(newer) = max_before(&acked, &acked_max, r.invoke_ms)
                        && newer > until
                    {
                        v.violation(format!(
                            "op {} on node {}: stale read of {name} at {}..{} ms returned {digest} ({why}), \
                             but a write invoked at {newer} ms was acknowledged before the read began",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    } else if let Some(newer) = max_before(&seen, &seen_max, r.invoke_ms)
                        && newer > until
                    {
                        v.violation(format!(
                            "op {} on node {}: read of {name} at {}..{} ms returned {digest} ({why}), \
                             but an earlier read had already seen a write invoked at {newer} ms",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    } else if let Some((started, other)) = values.latest_other(r.invoke_ms, &digest)
                        && started > until
                    {
                        let ended = values
                            .find(r.invoke_ms, started, other)
                            .map_or(started, |(_, at)| at);
                        v.violation(format!(
                            "op {} on node {}: read of {name} at {}..{} ms returned {digest} ({why}), \
                             but a read at {started}..{ended} ms had already seen {other}: the value appeared late",
                            r.id, r.node, r.invoke_ms, r.complete_ms
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    v
}
