//! Tests of the consensus crate: openraft's storage suite on our stores, the state
//! machine against a BTreeMap model, per-command outcomes, restart through the public
//! handle, decoding of checked-in bytes of format version 1, clusters of nodes
//! over the gRPC transport on loopback, and the seeded turmoil simulation of clusters
//! under partitions, crashes and restarts (`sim`).

mod access;
mod cluster;
mod commands;
mod fixture;
mod model_prop;
mod restart;
mod sim;
mod storage_suite;
mod tenancy;

use std::sync::Arc;

use berth_types::{BlobLayout, Digest, DigestAlgorithm, NodeId, RepoName, Tag, UploadId};
use redb::{Database, Durability, ReadableDatabase};
use tempfile::TempDir;

use crate::db;
use crate::model::{Command, Outcome, VersionedCommand};
use crate::state::StateTables;
use crate::view::StateView;

pub(crate) fn sha(n: u8) -> Digest {
    Digest::from_bytes(DigestAlgorithm::Sha256, &[n; 32])
}

pub(crate) fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

pub(crate) fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

pub(crate) fn upload(n: u128) -> UploadId {
    UploadId::new(NodeId(1), n)
}

pub(crate) fn inline(n: u8) -> BlobLayout {
    BlobLayout::Inline(vec![n; 3])
}

/// A state machine database without Raft, for applying commands directly.
pub(crate) struct TestDb {
    _dir: TempDir,
    db: Arc<Database>,
}

impl TestDb {
    pub(crate) fn new() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let db = db::open_blocking(dir.path(), db::CACHE_BYTES_DEFAULT).unwrap();
        TestDb { _dir: dir, db }
    }

    /// Applies one command in its own transaction, as an apply batch of one.
    /// The state machine store over this database, with its snapshots in the
    /// database's folder.
    pub(crate) fn store(&self) -> crate::state_machine::StateMachineStore {
        crate::state_machine::StateMachineStore::open(
            self.db.clone(),
            self._dir.path().join(crate::snapshot_file::DIR_NAME),
        )
        .unwrap()
    }

    pub(crate) fn apply(&self, cmd: &Command) -> Outcome {
        let txn = db::write(&self.db, Durability::None).unwrap();
        let outcome = StateTables::open(&txn).unwrap().apply(cmd).unwrap();
        txn.commit().unwrap();
        outcome
    }

    /// Applies one log entry's command (tracked or not) in its own transaction.
    pub(crate) fn apply_entry(&self, cmd: VersionedCommand) -> Outcome {
        let txn = db::write(&self.db, Durability::None).unwrap();
        let outcome = StateTables::open(&txn).unwrap().apply_entry(cmd).unwrap();
        txn.commit().unwrap();
        outcome
    }

    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub(crate) fn view(&self) -> StateView {
        StateView::new(self.db.begin_read().unwrap())
    }
}
