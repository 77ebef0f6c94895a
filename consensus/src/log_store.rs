//! The Raft log and vote in redb: openraft's `RaftLogStorage` and `RaftLogReader`.
//!
//! Every write here commits with `Durability::Immediate` and two-phase commit before
//! openraft is told it is done: an acknowledged entry or vote survives kill -9 and
//! power loss, which Raft's safety depends on. The one exception is the committed
//! log id, see [`LogStore::save_committed`].

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::codec;
use crate::db::{self, blocking};
use crate::error::ConsensusError;
use crate::state::read_record;
use crate::tables::{self, COMMITTED, LAST_PURGED, LOG, RAFT_META, VOTE};
use crate::type_config::{Entry, LogId, TypeConfig, Vote};

/// The Raft log store. Cheap to clone: every clone shares the database, so a clone is
/// also the log reader openraft hands to replication tasks.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    async fn read_meta<T>(
        &self,
        what: &'static str,
        k: &'static [u8],
    ) -> Result<Option<T>, io::Error>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        Ok(blocking(move || {
            let txn = db.begin_read()?;
            read_record(&txn.open_table(RAFT_META)?, what, k)
        })
        .await?)
    }

    async fn write_meta<T>(
        &self,
        k: &'static [u8],
        value: &T,
        durability: Durability,
    ) -> Result<(), io::Error>
    where
        T: serde::Serialize,
    {
        let db = self.db.clone();
        let bytes = codec::encode(value);
        Ok(blocking(move || {
            let txn = db::write(&db, durability)?;
            txn.open_table(RAFT_META)?.insert(k, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await?)
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, ConsensusError> {
    codec::decode("raft log entry", bytes)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let db = self.db.clone();
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        Ok(blocking(move || {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let mut out = Vec::new();
            for item in log.range::<u64>(bounds)? {
                let (_, v) = item?;
                out.push(decode_entry(v.value())?);
            }
            Ok(out)
        })
        .await?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_meta("raft vote", VOTE).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || {
            let txn = db.begin_read()?;
            let last_purged_log_id: Option<LogId> = read_record(
                &txn.open_table(RAFT_META)?,
                "last purged log id",
                LAST_PURGED,
            )?;
            let last_log_id = match txn.open_table(LOG)?.last()? {
                Some((_, v)) => Some(decode_entry(v.value())?.log_id()),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await?)
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_meta(VOTE, vote, Durability::Immediate).await
    }

    /// The committed log id only lets a restarting node re-apply its log before it
    /// hears from a leader; losing the latest value costs a later re-apply, never
    /// safety. So it commits without an fsync and becomes durable with the next log
    /// append or vote, which share the database file.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write_meta(COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .read_meta::<Option<LogId>>("committed log id", COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.index(), codec::encode(&e)))
            .collect();
        let db = self.db.clone();
        blocking(move || {
            let txn = db::write(&db, Durability::Immediate)?;
            {
                let mut log = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    log.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |l| l.index() + 1);
        let db = self.db.clone();
        Ok(blocking(move || {
            let txn = db::write(&db, Durability::Immediate)?;
            txn.open_table(LOG)?
                .retain_in::<u64, _>(first_removed.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await?)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let db = self.db.clone();
        let bytes = codec::encode(&log_id);
        let last = log_id.index();
        Ok(blocking(move || {
            // The purge mark and the deletion commit together, so the log state never
            // claims entries that are gone or hides entries that are there.
            let txn = db::write(&db, Durability::Immediate)?;
            txn.open_table(tables::RAFT_META)?
                .insert(LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in::<u64, _>(..=last, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await?)
    }
}
