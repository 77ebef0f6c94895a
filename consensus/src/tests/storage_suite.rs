//! openraft's storage test suite on the redb log store and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::db;
use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::type_config::TypeConfig;

/// Builds a fresh store in a temporary directory for each suite case.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = db::open(dir.path(), db::CACHE_BYTES_DEFAULT)
            .await
            .expect("open metadata store");
        let store = StateMachineStore::open(db.clone(), dir.path().join("snapshots"))
            .expect("open the state machine store");
        Ok((dir, LogStore::new(db), store))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(RedbStoreBuilder).await.unwrap();
}
