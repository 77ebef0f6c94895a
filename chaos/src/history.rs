//! The recorded history of a drill: every operation with its invoke and completion
//! instants (milliseconds since the drill started), the node it went to and its result,
//! plus the fault timeline. Checkers read only these values.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One client operation against the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Monolithic blob upload (`POST ...?digest=` with the body).
    PushBlob { repo: String, digest: String },
    /// Manifest put under a tag used by this push only.
    PushManifest {
        repo: String,
        tag: String,
        digest: String,
    },
    /// Manifest put that repoints a shared tag (every write carries a unique manifest).
    MoveTag {
        repo: String,
        tag: String,
        digest: String,
    },
    /// `GET` of a manifest by tag; what was read is in the outcome.
    ReadTag { repo: String, tag: String },
    /// `GET` of a blob by digest.
    PullBlob { repo: String, digest: String },
    /// `GET` of a manifest by digest.
    PullManifest { repo: String, digest: String },
    /// `DELETE` of a manifest by digest.
    DeleteManifest { repo: String, digest: String },
}

impl Op {
    /// Writes are what recovery time waits for.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::PushBlob { .. }
                | Op::PushManifest { .. }
                | Op::MoveTag { .. }
                | Op::DeleteManifest { .. }
        )
    }

    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Op::PushBlob { .. } => "push_blob",
            Op::PushManifest { .. } => "push_manifest",
            Op::MoveTag { .. } => "move_tag",
            Op::ReadTag { .. } => "read_tag",
            Op::PullBlob { .. } => "pull_blob",
            Op::PullManifest { .. } => "pull_manifest",
            Op::DeleteManifest { .. } => "delete_manifest",
        }
    }
}

/// When an operation ran: under load with faults, or in the read-back after healing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Workload,
    Verify,
}

/// What came back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status; `None` when no answer arrived (refused, reset, timed out).
    pub status: Option<u16>,
    /// A `Retry-After` header was present.
    pub retry_after: bool,
    /// Transport error, when there was no answer.
    pub error: Option<String>,
    /// sha256 of the body actually received (reads only).
    pub body_digest: Option<String>,
    /// The `Docker-Content-Digest` header (reads only).
    pub header_digest: Option<String>,
}

impl Outcome {
    pub fn status(status: u16) -> Outcome {
        Outcome {
            status: Some(status),
            ..Outcome::default()
        }
    }

    pub fn failed(error: impl Into<String>) -> Outcome {
        Outcome {
            error: Some(error.into()),
            ..Outcome::default()
        }
    }

    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// One operation of the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub worker: u32,
    pub node: u64,
    pub phase: Phase,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub op: Op,
    pub outcome: Outcome,
}

impl Event {
    /// An acknowledged write.
    pub fn acked_write(&self) -> bool {
        self.op.is_write() && self.outcome.ok()
    }
}

/// One injected fault and what happened around it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FaultRecord {
    /// Fault kind (`kill-leader`, `partition-one`, ...).
    pub kind: String,
    /// Nodes the fault hit.
    pub targets: Vec<u64>,
    /// Nodes cut off from the majority (partitions only): they must not acknowledge writes.
    pub minority: Vec<u64>,
    /// The injection started (recovery time counts from here).
    pub inject_ms: u64,
    /// The injection was complete: signal delivered, every drop rule installed.
    pub in_place_ms: u64,
    pub heal_ms: Option<u64>,
    /// Every node answered again and caught up with the leader's commit index.
    pub converged_ms: Option<u64>,
    /// After converging, every node reported an empty repair backlog.
    #[serde(default)]
    pub redundant_ms: Option<u64>,
    /// The largest repair backlog (shards, summed over the nodes) seen while waiting
    /// for it to empty.
    #[serde(default)]
    pub backlog_peak: Option<u64>,
    pub note: String,
}

/// The shared recorder the workload writes into, bounded in events.
pub struct Recorder {
    start: Instant,
    next: AtomicU64,
    max_events: u64,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new(max_events: u64) -> Recorder {
        Recorder {
            start: Instant::now(),
            next: AtomicU64::new(0),
            max_events,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the drill started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The history has reached its bound; the workload stops.
    pub fn full(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= self.max_events
    }

    /// Records an operation; false when the workload bound was reached (not recorded).
    /// The read-back after healing is bounded by what was acknowledged, not by this.
    pub fn record(
        &self,
        worker: u32,
        node: u64,
        phase: Phase,
        invoke_ms: u64,
        op: Op,
        outcome: Outcome,
    ) -> bool {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if phase == Phase::Workload && id >= self.max_events {
            return false;
        }
        let event = Event {
            id,
            worker,
            node,
            phase,
            invoke_ms,
            complete_ms: self.now_ms(),
            op,
            outcome,
        };
        self.events.lock().unwrap().push(event);
        true
    }

    /// Every event recorded so far, in completion order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}
