//! A disk that runs out of space: the write fails with `DiskFull`, no final file
//! appears, the disk leaves placement while it is short of space, and aborting gives
//! the space back.

use std::path::Path;
use std::sync::Arc;

use berth_blobstore::{
    BlobStore, BlobStoreError, Disk, DiskState, FULL_RESERVE_CHUNKS, SimDisk, SimPower,
    StoreConfig, format,
};
use berth_types::{DiskId, EcProfile};
use bytes::Bytes;

use crate::common::{NODE, data, upload};

const SHARD: u32 = 1024;

fn count_files(disk: &SimDisk, dir: &Path) -> usize {
    disk.list(dir)
        .unwrap()
        .into_iter()
        .map(|e| {
            if e.is_dir {
                count_files(disk, &dir.join(&e.name))
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn running_out_of_space_is_disk_full_and_leaves_no_final_file() {
    let reserve = FULL_RESERVE_CHUNKS * format::chunk_bytes(SHARD);
    let capacity = reserve + 5000;
    let disk = SimDisk::new(DiskId(0), capacity, SimPower::new());
    let cfg = StoreConfig {
        profile: EcProfile::SINGLE,
        shard_bytes: SHARD,
    };
    let store = BlobStore::open(NODE, vec![Arc::new(disk.clone()) as Arc<dyn Disk>], cfg).unwrap();

    let mut writer = store.begin(upload(1)).unwrap();
    let err = writer
        .write(Bytes::from(data(1, capacity as usize + 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobStoreError::DiskFull { disk: DiskId(0) }),
        "{err:?}"
    );
    assert!(matches!(
        writer.write(Bytes::from_static(b"more")).await,
        Err(BlobStoreError::WriterFailed)
    ));

    // Short of space, the disk takes no new uploads.
    assert_eq!(store.disk_stats()[0].state, DiskState::Full);
    assert!(matches!(
        store.begin(upload(2)),
        Err(BlobStoreError::DiskFull { disk: DiskId(0) })
    ));

    writer.abort().await.unwrap();
    assert_eq!(count_files(&disk, Path::new("")), 0);
    let stats = &store.disk_stats()[0];
    assert_eq!(stats.free_bytes, capacity);
    assert_eq!(stats.state, DiskState::Active);
}

/// Space that runs out between writing and committing fails the commit, and the
/// commit cleans up after itself.
#[tokio::test]
async fn a_failed_commit_removes_its_files() {
    let reserve = FULL_RESERVE_CHUNKS * format::chunk_bytes(SHARD);
    let disk = SimDisk::new(DiskId(0), reserve + 3000, SimPower::new());
    let cfg = StoreConfig {
        profile: EcProfile::SINGLE,
        shard_bytes: SHARD,
    };
    let store = BlobStore::open(NODE, vec![Arc::new(disk.clone()) as Arc<dyn Disk>], cfg).unwrap();
    let mut writer = store.begin(upload(1)).unwrap();
    writer.write(Bytes::from(data(1, 1000))).await.unwrap();
    // Another tenant of the disk takes the rest of the space.
    let hog = disk.create(Path::new("hog")).unwrap();
    let free = disk.free_bytes().unwrap();
    hog.write_at(&vec![0; free as usize], 0).unwrap();

    let digest = crate::common::digest_of(&data(1, 1000));
    let err = writer.commit(&digest).await.unwrap_err();
    assert!(matches!(err, BlobStoreError::DiskFull { .. }), "{err:?}");
    disk.remove(Path::new("hog")).unwrap();
    assert_eq!(count_files(&disk, Path::new("")), 0);
}
