//! The registry state machine in redb, behind openraft's `RaftStateMachine`: applying
//! committed entries, and building, installing and serving snapshots.
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

use std::collections::BTreeMap;
use std::io;
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
use crate::state::{StateTables, read_record};
use crate::tables::{
    self, LAST_APPLIED, LAST_MEMBERSHIP, SM_META, SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META,
};
use crate::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The bytes of a snapshot: a versioned [`SnapshotContent`].
pub(crate) type SnapshotData = Vec<u8>;

/// Every registry table, copied entry by entry.
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
}

impl StateMachineStore {
    pub(crate) fn new(db: Arc<Database>) -> StateMachineStore {
        StateMachineStore { db }
    }
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

fn current_snapshot(db: &Database) -> Result<Option<CurrentSnapshot>, ConsensusError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = read_record::<SnapshotMeta>(&table, "snapshot meta", SNAPSHOT_META)? else {
        return Ok(None);
    };
    let data = table
        .get(SNAPSHOT_DATA)?
        .map(|v| v.value().to_vec())
        .ok_or(ConsensusError::Malformed { table: "snapshot" })?;
    Ok(Some(Snapshot {
        meta,
        snapshot: data,
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<CurrentSnapshot, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || {
            // One read transaction: the data and the log id it corresponds to match.
            let txn = db.begin_read()?;
            let (last_applied, last_membership) = applied_state_in(&txn)?;
            let mut content = SnapshotContent { tables: Vec::new() };
            for (name, def) in tables::all_state_tables() {
                let mut entries = Vec::new();
                for item in txn.open_table(def)?.iter()? {
                    let (k, v) = item?;
                    entries.push((k.value().to_vec(), v.value().to_vec()));
                }
                content.tables.push(SnapshotTable {
                    name: name.to_owned(),
                    entries,
                });
            }
            drop(txn);
            let data = codec::encode(&content);
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
            };
            // Durable before openraft may purge the log entries it covers.
            let wtxn = db::write(&db, Durability::Immediate)?;
            {
                let mut snap = wtxn.open_table(SNAPSHOT)?;
                snap.insert(SNAPSHOT_META, codec::encode(&meta).as_slice())?;
                snap.insert(SNAPSHOT_DATA, data.as_slice())?;
            }
            wtxn.commit()?;
            Ok(Snapshot {
                meta,
                snapshot: data,
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
        let meta = meta.clone();
        Ok(blocking(move || {
            let content: SnapshotContent = codec::decode("snapshot", &snapshot)?;
            // Tables are matched by name: a snapshot from a build that had fewer tables
            // installs with the missing ones empty; a table this build does not know
            // would be silently dropped state, so it refuses.
            let mut by_name: BTreeMap<&str, &SnapshotTable> = BTreeMap::new();
            for t in &content.tables {
                let known = tables::all_state_tables().any(|(n, _)| n == t.name);
                if !known || by_name.insert(t.name.as_str(), t).is_some() {
                    return Err(ConsensusError::Malformed { table: "snapshot" });
                }
            }
            // Replacing the state, its last-applied id and the current snapshot in one
            // durable transaction: a crash leaves either the old state or the new one.
            let txn = db::write(&db, Durability::Immediate)?;
            for (name, def) in tables::all_state_tables() {
                let mut t = txn.open_table(def)?;
                t.retain(|_, _| false)?;
                for (k, v) in by_name.get(name).map_or(&[][..], |t| &t.entries[..]) {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
            }
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
                let mut snap = txn.open_table(SNAPSHOT)?;
                snap.insert(SNAPSHOT_META, codec::encode(&meta).as_slice())?;
                snap.insert(SNAPSHOT_DATA, snapshot.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<CurrentSnapshot>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || current_snapshot(&db)).await?)
    }
}
