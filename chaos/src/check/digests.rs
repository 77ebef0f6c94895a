//! No pull ever returns bytes that do not match their digest: a blob or manifest read
//! by digest hashes to that digest, and a manifest read by tag hashes to the
//! `Docker-Content-Digest` the registry sent with it.

use super::Verdict;
use crate::history::{Event, Op};

pub fn check(events: &[Event]) -> Verdict {
    let mut v = Verdict::new(
        "digests",
        "no successful pull returns bytes that do not match their digest",
    );
    for e in events.iter().filter(|e| e.outcome.ok()) {
        let (expected, what) = match &e.op {
            Op::PullBlob { digest, .. } | Op::PullManifest { digest, .. } => {
                (Some(digest.as_str()), "requested digest")
            }
            Op::ReadTag { .. } => (
                e.outcome.header_digest.as_deref(),
                "Docker-Content-Digest header",
            ),
            _ => continue,
        };
        v.checked += 1;
        let body = e.outcome.body_digest.as_deref();
        match (expected, body) {
            (Some(x), Some(b)) if x == b => {}
            (None, Some(_)) => v.violation(format!(
                "op {} on node {}: {} answered 2xx without a Docker-Content-Digest",
                e.id,
                e.node,
                e.op.name()
            )),
            _ => v.violation(format!(
                "op {} on node {}: {} returned bytes hashing to {:?}, {what} is {:?}",
                e.id,
                e.node,
                e.op.name(),
                body,
                expected
            )),
        }
    }
    v
}
