//! What a simulated run records for the checkers: every change of a node's Raft role
//! and term as seen between simulation steps, the proposals the cluster acknowledged,
//! and each node's durable state (its Raft log and applied registry state) read back
//! from its redb file once the run is over.

use std::collections::BTreeMap;
use std::path::Path;

use redb::ReadableDatabase;

use crate::db;
use crate::error::ConsensusError;
use crate::model::{Command, UploadRecord};
use crate::state::read_record;
use crate::tables::{LAST_APPLIED, LAST_PURGED, LOG, RAFT_META, SM_META};
use crate::type_config::{Entry, LogId};
use crate::view::StateView;

/// One node's Raft status, recorded whenever it differs from the node's previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observation {
    /// Simulated milliseconds since the run started.
    pub at_ms: u64,
    pub node: u64,
    /// How many times the node had been started before this one (0 for the first run).
    pub incarnation: u32,
    pub term: u64,
    pub is_leader: bool,
}

/// A proposal whose `propose` returned success: committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ack {
    pub at_ms: u64,
    /// The node the proposal was made on (it may have forwarded it to the leader).
    pub via: u64,
    pub cmd: Command,
}

/// A node's durable state after the run.
#[derive(Debug, Clone)]
pub(super) struct NodeFinal {
    pub node: u64,
    pub last_applied: Option<LogId>,
    /// The last log index removed by compaction (its snapshot covers it).
    pub last_purged: Option<u64>,
    /// Every entry of its Raft log that compaction kept, by index.
    pub log: BTreeMap<u64, Entry>,
    pub state_digest: [u8; 32],
    pub uploads: Vec<UploadRecord>,
}

impl NodeFinal {
    /// Reads node `node`'s store in `dir`. The node must be stopped.
    pub(super) fn read(node: u64, dir: &Path) -> Result<NodeFinal, ConsensusError> {
        let db = db::open_blocking(dir, db::CACHE_BYTES_DEFAULT)?;
        let txn = db.begin_read()?;
        let mut log = BTreeMap::new();
        for item in txn.open_table(LOG)?.range(0..)? {
            let (index, bytes) = item?;
            let entry: Entry = crate::codec::decode("raft log entry", bytes.value())?;
            log.insert(index.value(), entry);
        }
        let last_applied = read_record(&txn.open_table(SM_META)?, "last applied", LAST_APPLIED)?;
        let last_purged: Option<LogId> =
            read_record(&txn.open_table(RAFT_META)?, "last purged", LAST_PURGED)?;
        let view = StateView::new(db.begin_read()?);
        Ok(NodeFinal {
            node,
            last_applied,
            last_purged: last_purged.map(|l| l.index),
            log,
            state_digest: view.state_digest()?,
            uploads: view.uploads()?,
        })
    }

    pub(super) fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|l| l.index)
    }
}

/// Expected record of the upload a simulated `CreateUpload` creates.
pub(super) fn upload_of(cmd: &Command) -> Option<UploadRecord> {
    match cmd {
        Command::CreateUpload { id, repo, at_ms } => Some(UploadRecord {
            id: *id,
            repo: repo.clone(),
            started_at_ms: *at_ms,
        }),
        _ => None,
    }
}
