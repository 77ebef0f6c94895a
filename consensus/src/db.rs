//! The redb database file that holds the whole metadata store, and the two ways this
//! crate touches it: on a blocking thread, in transactions whose durability is chosen
//! explicitly.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, WriteTransaction};

use crate::error::ConsensusError;
use crate::tables;

/// The store's file inside the metadata directory.
pub(crate) const FILE_NAME: &str = "metadata.redb";

/// Bytes of page cache the store keeps in memory unless configured otherwise
/// (`--meta-cache-mib`). redb's own default is 1 GiB, which a busy node fills: the
/// cache holds every page written or read until the budget is reached. Pages beyond
/// it are read from the file again, usually from the operating system's page cache.
pub const CACHE_BYTES_DEFAULT: usize = 32 << 20;

/// Opens or creates the store in `dir` (creating `dir`) with a page cache of
/// `cache_bytes`, and makes sure every table exists, so read transactions never meet
/// a missing table.
pub(crate) async fn open(dir: &Path, cache_bytes: usize) -> Result<Arc<Database>, ConsensusError> {
    let dir = dir.to_owned();
    blocking(move || open_blocking(&dir, cache_bytes)).await
}

/// [`open`] for callers already on a blocking thread.
pub(crate) fn open_blocking(
    dir: &Path,
    cache_bytes: usize,
) -> Result<Arc<Database>, ConsensusError> {
    std::fs::create_dir_all(dir).map_err(ConsensusError::Directory)?;
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(dir.join(FILE_NAME))?;
    let txn = write(&db, Durability::Immediate)?;
    txn.open_table(tables::LOG)?;
    for def in [tables::RAFT_META, tables::SM_META, tables::SNAPSHOT] {
        txn.open_table(def)?;
    }
    for (_, def) in tables::all_state_tables() {
        txn.open_table(def)?;
    }
    txn.commit()?;
    Ok(Arc::new(db))
}

/// Runs redb work off the async runtime: redb calls block on file I/O and fsync.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ConsensusError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ConsensusError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Begins a write transaction with two-phase commit: a torn write of the commit slot
/// can then never be mistaken for a valid commit, which is what makes `Immediate`
/// commits safe to acknowledge.
pub(crate) fn write(
    db: &Database,
    durability: Durability,
) -> Result<WriteTransaction, ConsensusError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}
