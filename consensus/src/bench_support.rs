//! The state machine's apply step without Raft, for the crate's criterion benchmarks
//! (`benches/apply.rs`): a batch of commands applied in one redb transaction with the
//! tables and durability `StateMachineStore::apply` uses. Not used by the node.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability};

use crate::db;
use crate::error::ConsensusError;
use crate::model::{Outcome, VersionedCommand};
use crate::state::StateTables;

/// A state machine database in a folder of its own.
pub struct ApplyBench {
    db: Arc<Database>,
}

impl ApplyBench {
    /// Creates (or opens) the database in `dir` with the default page cache.
    pub fn open(dir: &Path) -> Result<ApplyBench, ConsensusError> {
        Ok(ApplyBench {
            db: db::open_blocking(dir, db::CACHE_BYTES_DEFAULT)?,
        })
    }

    /// Applies `batch` in one transaction and commits it, as one apply call of the
    /// state machine does for the entries Raft hands it at once.
    pub fn apply_batch(
        &self,
        batch: Vec<VersionedCommand>,
    ) -> Result<Vec<Outcome>, ConsensusError> {
        let txn = db::write(&self.db, Durability::None)?;
        let outcomes = {
            let mut state = StateTables::open(&txn)?;
            batch
                .into_iter()
                .map(|cmd| state.apply_entry(cmd))
                .collect::<Result<Vec<_>, _>>()?
        };
        txn.commit()?;
        Ok(outcomes)
    }
}
