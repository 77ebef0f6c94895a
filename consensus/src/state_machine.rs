//! The registry state machine in redb, behind openraft's `RaftStateMachine`: applying
//! committed entries, and building, installing and serving snapshots, which are files
//! (`snapshot_file`) streamed from and to disk.
//!
//! Durability: applies commit with `Durability::None` (no fsync). That is safe because
//! the last-applied log id and the registry data it describes commit in the same redb
//! transaction, and redb (two-phase commit) recovers to a complete earlier commit, never
//! a torn one. After a crash the state machine is therefore some consistent earlier
//! state whose `last_applied` tells openraft exactly where to resume; the entries after
//! it are still in the durable Raft log (the log is only purged up to a snapshot, and
//! snapshots commit with `Durability::Immediate`), so openraft re-applies them and
//! reaches the same state. Apply commits become durable anyway with the next log
//! append, vote or snapshot, which share the database file and fsync it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use futures::stream::Stream;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{self, blocking};
use crate::error::ConsensusError;
use crate::snapshot_file::{self, Frame, SnapshotFile, SnapshotFileRecord, SnapshotWriter};
use crate::state::{StateTables, read_record};
use crate::tables::{
    self, LAST_APPLIED, LAST_MEMBERSHIP, SM_META, SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_FILE,
    SNAPSHOT_META,
};
use crate::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// A snapshot: a file of the state tables' entries (see `snapshot_file`).
pub(crate) type SnapshotData = SnapshotFile;

/// Every registry table, copied entry by entry: the snapshot format of earlier builds,
/// one postcard value. Still installed when a peer or the store holds one.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotContent {
    tables: Vec<SnapshotTable>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotTable {
    name: String,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The state machine store. Cheap to clone; clones share the database, so a clone is
/// also the snapshot builder.
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    db: Arc<Database>,
    /// The folder of snapshot files.
    snapshots: Arc<PathBuf>,
}

impl StateMachineStore {
    /// The store over `db`, with its snapshot files in `snapshots`. Removes what an
    /// interrupted snapshot write or receive left there.
    pub(crate) fn open(
        db: Arc<Database>,
        snapshots: PathBuf,
    ) -> Result<StateMachineStore, ConsensusError> {
        std::fs::create_dir_all(&snapshots).map_err(ConsensusError::Directory)?;
        let current = current_record(&db)?.map(|r| r.name);
        snapshot_file::remove_all_but(&snapshots, current.as_deref(), true)
            .map_err(ConsensusError::Directory)?;
        Ok(StateMachineStore {
            db,
            snapshots: Arc::new(snapshots),
        })
    }
}

fn current_record(db: &Database) -> Result<Option<SnapshotFileRecord>, ConsensusError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    read_record(&table, "snapshot file", SNAPSHOT_FILE)
}

fn snapshot_io(e: io::Error) -> ConsensusError {
    ConsensusError::SnapshotFile(e)
}

fn applied_state_in(
    txn: &ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), ConsensusError> {
    let meta = txn.open_table(SM_META)?;
    let last_applied = read_record(&meta, "last applied log id", LAST_APPLIED)?;
    let membership = read_record(&meta, "last membership", LAST_MEMBERSHIP)?.unwrap_or_default();
    Ok((last_applied, membership))
}

type CurrentSnapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The current snapshot, if any. A snapshot an earlier build kept inside the database
/// is moved out into a file first.
fn current_snapshot(db: &Database, dir: &Path) -> Result<Option<CurrentSnapshot>, ConsensusError> {
    let (meta, record, legacy) = {
        let txn = db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(meta) = read_record::<SnapshotMeta>(&table, "snapshot meta", SNAPSHOT_META)?
        else {
            return Ok(None);
        };
        let record: Option<SnapshotFileRecord> =
            read_record(&table, "snapshot file", SNAPSHOT_FILE)?;
        let legacy = match record {
            Some(_) => None,
            None => Some(
                table
                    .get(SNAPSHOT_DATA)?
                    .map(|v| v.value().to_vec())
                    .ok_or(ConsensusError::Malformed { table: "snapshot" })?,
            ),
        };
        (meta, record, legacy)
    };
    let file = match (record, legacy) {
        (Some(record), _) => match SnapshotFile::open(dir, &record).map_err(snapshot_io)? {
            Some(f) => f,
            None => {
                tracing::warn!(
                    file = record.name,
                    "the current snapshot file is missing; a new one will be built when needed"
                );
                return Ok(None);
            }
        },
        (None, legacy) => {
            let mut staged = snapshot_file::StagedFile::create(dir).map_err(snapshot_io)?;
            staged
                .write_all(&legacy.unwrap_or_default())
                .map_err(snapshot_io)?;
            let file = staged.publish().map_err(snapshot_io)?;
            let txn = db::write(db, Durability::Immediate)?;
            {
                let mut snap = txn.open_table(SNAPSHOT)?;
                snap.insert(SNAPSHOT_FILE, codec::encode(&file.record()).as_slice())?;
                snap.remove(SNAPSHOT_DATA)?;
            }
            txn.commit()?;
            file
        }
    };
    Ok(Some(Snapshot {
        meta,
        snapshot: file,
    }))
}

/// Makes `file` (covering `meta`) the current snapshot in `txn`, unless the current one
/// is newer. Returns whether it did.
fn record_current(
    txn: &redb::WriteTransaction,
    meta: &SnapshotMeta,
    file: &SnapshotFile,
) -> Result<bool, ConsensusError> {
    let mut snap = txn.open_table(SNAPSHOT)?;
    let current: Option<SnapshotMeta> = read_record(&snap, "snapshot meta", SNAPSHOT_META)?;
    if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
        return Ok(false);
    }
    snap.insert(SNAPSHOT_META, codec::encode(meta).as_slice())?;
    snap.insert(SNAPSHOT_FILE, codec::encode(&file.record()).as_slice())?;
    snap.remove(SNAPSHOT_DATA)?;
    Ok(true)
}

/// Installs the entries of `file` as the whole state, in `txn`.
fn install_entries(
    txn: &redb::WriteTransaction,
    file: &SnapshotFile,
) -> Result<(), ConsensusError> {
    for (_, def) in tables::all_state_tables() {
        txn.open_table(def)?.retain(|_, _| false)?;
    }
    let mut frames = file.frames().map_err(snapshot_io)?;
    if let Some(legacy) = frames.legacy() {
        let content: SnapshotContent = codec::decode("snapshot", &legacy)?;
        for t in content.tables {
            let def = known_table(&t.name)?;
            let mut table = txn.open_table(def)?;
            for (k, v) in &t.entries {
                table.insert(k.as_slice(), v.as_slice())?;
            }
        }
        return Ok(());
    }
    // Tables are matched by name: a snapshot from a build that had fewer tables
    // installs with the missing ones empty; a table this build does not know would be
    // silently dropped state, so it refuses, as it does a table named twice.
    let mut seen = BTreeSet::new();
    let mut table = None;
    while let Some(frame) = frames.next_frame().map_err(snapshot_io)? {
        match frame {
            Frame::Table(name) => {
                let def = known_table(&name)?;
                if !seen.insert(name) {
                    return Err(ConsensusError::Malformed { table: "snapshot" });
                }
                table = Some(txn.open_table(def)?);
            }
            Frame::Entry(k, v) => {
                let Some(t) = table.as_mut() else {
                    return Err(ConsensusError::Malformed { table: "snapshot" });
                };
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
    }
    Ok(())
}

fn known_table(name: &str) -> Result<tables::BytesTable, ConsensusError> {
    tables::all_state_tables()
        .find(|(n, _)| *n == name)
        .map(|(_, def)| def)
        .ok_or(ConsensusError::Malformed { table: "snapshot" })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<CurrentSnapshot, io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        Ok(blocking(move || {
            // One read transaction: the data and the log id it corresponds to match.
            let txn = db.begin_read()?;
            let (last_applied, last_membership) = applied_state_in(&txn)?;
            let mut out = SnapshotWriter::create(&dir).map_err(snapshot_io)?;
            for (name, def) in tables::all_state_tables() {
                out.table(name).map_err(snapshot_io)?;
                for item in txn.open_table(def)?.iter()? {
                    let (k, v) = item?;
                    out.entry(k.value(), v.value()).map_err(snapshot_io)?;
                }
            }
            drop(txn);
            let file = out.finish().map_err(snapshot_io)?;
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
            };
            // Durable before openraft may purge the log entries it covers.
            let wtxn = db::write(&db, Durability::Immediate)?;
            let current = record_current(&wtxn, &meta, &file)?;
            wtxn.commit()?;
            if current {
                snapshot_file::remove_all_but(&dir, Some(file.name()), false)
                    .map_err(snapshot_io)?;
            }
            // A snapshot that a newer installed one overtook is still returned: its
            // open file stays readable until dropped.
            Ok(Snapshot {
                meta,
                snapshot: file,
            })
        })
        .await?)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || applied_state_in(&db.begin_read()?)).await?)
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let batch: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if batch.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        // The whole batch is one transaction: one commit per batch, and a failure
        // leaves the state machine at the previous batch.
        let replies = blocking(move || {
            let txn = db::write(&db, Durability::None)?;
            let mut replies = Vec::with_capacity(batch.len());
            let mut last_applied = None;
            let mut last_membership = None;
            {
                let mut state = StateTables::open(&txn)?;
                for (entry, responder) in batch {
                    let log_id = entry.log_id;
                    let outcome = match entry.payload {
                        EntryPayload::Blank => None,
                        EntryPayload::Normal(cmd) => Some(state.apply_entry(cmd)?),
                        EntryPayload::Membership(m) => {
                            last_membership = Some(StoredMembership::new(Some(log_id), m));
                            None
                        }
                    };
                    last_applied = Some(log_id);
                    replies.push((responder, outcome));
                }
            }
            {
                let mut meta = txn.open_table(SM_META)?;
                if let Some(l) = &last_applied {
                    meta.insert(LAST_APPLIED, codec::encode(l).as_slice())?;
                }
                if let Some(m) = &last_membership {
                    meta.insert(LAST_MEMBERSHIP, codec::encode(m).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(replies)
        })
        .await?;
        // Answer only after the commit, so a reader that saw the answer sees the state.
        for (responder, outcome) in replies {
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        Ok(blocking(move || {
            let snapshot = snapshot_file::adopt(&dir, snapshot).map_err(snapshot_io)?;
            // Replacing the state, its last-applied id and the current snapshot in one
            // durable transaction: a crash leaves either the old state or the new one.
            let txn = db::write(&db, Durability::Immediate)?;
            install_entries(&txn, &snapshot)?;
            {
                let mut sm = txn.open_table(SM_META)?;
                match &meta.last_log_id {
                    Some(l) => sm.insert(LAST_APPLIED, codec::encode(l).as_slice())?,
                    None => sm.remove(LAST_APPLIED)?,
                };
                sm.insert(
                    LAST_MEMBERSHIP,
                    codec::encode(&meta.last_membership).as_slice(),
                )?;
            }
            let current = record_current(&txn, &meta, &snapshot)?;
            txn.commit()?;
            if current {
                snapshot_file::remove_all_but(&dir, Some(snapshot.name()), false)
                    .map_err(snapshot_io)?;
            }
            Ok(())
        })
        .await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<CurrentSnapshot>, io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        Ok(blocking(move || current_snapshot(&db, &dir)).await?)
    }
}

#[cfg(test)]
mod tests {
    //! A snapshot that an earlier build kept inside the database is moved out to a file
    //! when first asked for, and still installs.

    use super::*;
    use crate::model::Command;
    use crate::tests::{TestDb, repo, upload};

    #[tokio::test]
    async fn a_snapshot_of_the_earlier_format_is_moved_out_and_installs() {
        let from = TestDb::new();
        from.apply(&Command::CreateUpload {
            id: upload(1),
            repo: repo("team/app"),
            at_ms: 1,
        });
        let db = from.db();
        let content = {
            let txn = db.begin_read().unwrap();
            SnapshotContent {
                tables: tables::all_state_tables()
                    .map(|(name, def)| SnapshotTable {
                        name: name.to_owned(),
                        entries: txn
                            .open_table(def)
                            .unwrap()
                            .iter()
                            .unwrap()
                            .map(|e| {
                                let (k, v) = e.unwrap();
                                (k.value().to_vec(), v.value().to_vec())
                            })
                            .collect(),
                    })
                    .collect(),
            }
        };
        let meta = SnapshotMeta::default();
        let txn = db::write(&db, Durability::Immediate).unwrap();
        {
            let mut snap = txn.open_table(SNAPSHOT).unwrap();
            snap.insert(SNAPSHOT_META, codec::encode(&meta).as_slice())
                .unwrap();
            snap.insert(SNAPSHOT_DATA, codec::encode(&content).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();

        let current = from.store().get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        {
            let txn = db.begin_read().unwrap();
            let snap = txn.open_table(SNAPSHOT).unwrap();
            assert!(snap.get(SNAPSHOT_DATA).unwrap().is_none(), "moved out");
            assert!(snap.get(SNAPSHOT_FILE).unwrap().is_some());
        }
        let to = TestDb::new();
        to.store()
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(
            to.view().state_digest().unwrap(),
            from.view().state_digest().unwrap()
        );
        assert!(to.view().upload(&upload(1)).unwrap().is_some());
    }
}
