//! A disk that runs out of space: the write fails with `DiskFull`, no final file
//! appears, the disk leaves placement while it is short of space, and aborting gives
//! the space back.

use std::path::Path;
use std::sync::Arc;

use berth_blobstore::{
    BlobStore, BlobStoreError, Disk, DiskState, FULL_RESERVE_CHUNKS, STRIPES_IN_FLIGHT_MAX,
    SimDisk, SimPower, StoreConfig, format,
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
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, vec![Arc::new(disk.clone()) as Arc<dyn Disk>], cfg).unwrap();

    let mut writer = store.begin(upload(1)).unwrap();
    // Stripes are written behind `write`: the error of the stripe that found the disk
    // full surfaces at the latest when `STRIPES_IN_FLIGHT_MAX` more stripes follow it.
    let beyond = capacity as usize + (STRIPES_IN_FLIGHT_MAX + 1) * SHARD as usize;
    let err = writer
        .write(Bytes::from(data(1, beyond)))
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
        ..StoreConfig::default()
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

/// One disk per shard of `profile`, the first of which has room for only `stripes`
/// chunks beyond the reserve that keeps it in placement; the others are roomy.
fn one_small_disk(profile: EcProfile, stripes: u64) -> (BlobStore, Vec<SimDisk>, DiskId) {
    let reserve = FULL_RESERVE_CHUNKS * format::chunk_bytes(SHARD);
    let small = DiskId(0);
    let disks: Vec<SimDisk> = (0..profile.width() as u32)
        .map(|i| {
            let capacity = if DiskId(i) == small {
                reserve + stripes * format::chunk_bytes(SHARD)
            } else {
                64 << 20
            };
            SimDisk::new(DiskId(i), capacity, SimPower::new())
        })
        .collect();
    let cfg = StoreConfig {
        profile,
        shard_bytes: SHARD,
        ..StoreConfig::default()
    };
    let store = BlobStore::open(
        NODE,
        disks
            .iter()
            .map(|d| Arc::new(d.clone()) as Arc<dyn Disk>)
            .collect(),
        cfg,
    )
    .unwrap();
    (store, disks, small)
}

/// Regression test for issue 4 (stripes written behind `write`): a target that fails
/// while later stripes are already queued to it is dropped, the others get every
/// stripe, and the commit (which waits for all of them) keeps the quorum and names the
/// lost shard.
#[tokio::test]
async fn a_target_lost_with_stripes_in_flight_leaves_a_quorum_commit() {
    let profile = EcProfile::new(2, 2).unwrap();
    let (store, _disks, small) = one_small_disk(profile, 4);
    let stripe = 2 * SHARD as usize;
    let bytes = data(3, 200 * stripe + 77);
    let digest = crate::common::digest_of(&bytes);
    let mut writer = store.begin(upload(3)).unwrap();
    // One call: the small disk fills up while the stripes after it are in flight.
    writer.write(Bytes::from(bytes.clone())).await.unwrap();
    let written = writer.commit(&digest).await.unwrap();
    let lost = written
        .layout
        .shards
        .iter()
        .position(|p| p.disk == small)
        .unwrap();
    assert_eq!(written.missing, vec![lost]);
    let size = bytes.len() as u64;
    let got = crate::common::get(&store, &written.layout, &digest, size, 0..size)
        .await
        .unwrap();
    assert!(got == bytes);
}

/// Regression test for issue 4: losing the quorum while stripes are in flight fails
/// the upload with the error of the target that broke it, whether that surfaces in
/// `write` (more stripes followed) or only at `commit` (the failing stripe was among
/// the last), and leaves no file, final or staging, on any disk.
#[tokio::test]
async fn losing_the_quorum_with_stripes_in_flight_fails_and_leaves_nothing() {
    let profile = EcProfile::new(2, 1).unwrap();
    let stripe = 2 * SHARD as usize;
    // The small disk holds its reserve plus 4 chunks: a header and then `fills - 1`
    // chunks; the chunk of stripe `fills - 1` fails.
    let fills = FULL_RESERVE_CHUNKS as usize + 4;
    let cases = [
        (4u128, fills),
        (5, fills + STRIPES_IN_FLIGHT_MAX + 1),
        (6, 200),
    ];
    for (n, stripes) in cases {
        let (store, disks, small) = one_small_disk(profile, 4);
        let bytes = data(n as u64, stripes * stripe + 5);
        let digest = crate::common::digest_of(&bytes);
        let mut writer = store.begin(upload(n)).unwrap();
        let err = match writer.write(Bytes::from(bytes)).await {
            Ok(()) => writer.commit(&digest).await.unwrap_err(),
            Err(e) => {
                assert!(matches!(
                    writer.write(Bytes::from_static(b"more")).await,
                    Err(BlobStoreError::WriterFailed)
                ));
                writer.abort().await.unwrap();
                e
            }
        };
        assert!(
            matches!(err, BlobStoreError::DiskFull { disk } if disk == small),
            "{stripes} stripes: {err:?}"
        );
        for disk in &disks {
            assert_eq!(count_files(disk, Path::new("")), 0, "{stripes} stripes");
        }
    }
}
