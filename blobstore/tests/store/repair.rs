//! Damaged shard files on real disks: reads verify every checksum and rebuild from
//! parity while `k` shards of a stripe are good, and fail cleanly, never with wrong
//! bytes, when they are not.

use std::path::{Path, PathBuf};

use berth_blobstore::{BlobStore, BlobStoreError, DiskState, StoreConfig, format};
use berth_types::{Digest, EcProfile, StripedLayout};
use bytes::Bytes;
use futures::StreamExt;

use crate::common::{NODE, data, flip_byte, fs_disks, get, put, upload};

const SHARD: u32 = 4096;

fn shard_file(root: &Path, layout: &StripedLayout, digest: &Digest, i: usize) -> PathBuf {
    root.join(format!("disk{}", layout.shards[i].disk))
        .join(format::final_path(digest, &layout.upload, i))
}

/// Offset of byte `at` of the shard of `stripe` in a shard file.
fn shard_byte(stripe: u64, at: u64) -> u64 {
    format::chunk_offset(SHARD, stripe) + format::CHECKSUM_BYTES + at
}

async fn store(root: &Path, k: u8, m: u8) -> BlobStore {
    let cfg = StoreConfig {
        profile: EcProfile::new(k, m).unwrap(),
        shard_bytes: SHARD,
        ..StoreConfig::default()
    };
    BlobStore::open(NODE, fs_disks(root, u32::from(k + m)), cfg).unwrap()
}

#[tokio::test]
async fn a_corrupt_and_a_missing_shard_are_rebuilt_from_parity() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 2, 2).await;
    let bytes = data(1, 3 * 2 * SHARD as usize + 100);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();

    flip_byte(
        &shard_file(dir.path(), &layout, &digest, 0),
        shard_byte(1, 10),
    );
    std::fs::remove_file(shard_file(dir.path(), &layout, &digest, 1)).unwrap();

    assert!(get(&store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    let c = store.counters();
    assert_eq!(c.checksum_failures(), 1);
    assert_eq!(c.shards_unavailable(), 1);
    // Every stripe lost shard 1 and has bytes in it, so every stripe was decoded:
    // the last stripe's 100 bytes are split over both data shards (64 + 36).
    assert_eq!(c.reconstructions(), layout.stripe_count(size));

    // A range inside the corrupt shard alone is rebuilt too.
    let range = 2 * u64::from(SHARD) + 5..2 * u64::from(SHARD) + 50;
    let got = get(&store, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
}

#[tokio::test]
async fn a_damaged_header_makes_the_shard_unavailable_not_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 2, 1).await;
    let bytes = data(2, 5 * SHARD as usize);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    flip_byte(&shard_file(dir.path(), &layout, &digest, 1), 13);
    assert!(get(&store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(store.counters().checksum_failures(), 1);
    // The last stripe holds half a stripe of bytes, split over both data shards as
    // two short shards: it is decoded like the others.
    assert_eq!(
        store.counters().reconstructions(),
        layout.stripe_count(size)
    );
}

#[tokio::test]
async fn more_than_m_bad_shards_in_a_stripe_is_an_error_after_only_good_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 2, 1).await;
    let bytes = data(3, 4 * 2 * SHARD as usize);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    // Stripe 2 loses two of its three shards.
    flip_byte(
        &shard_file(dir.path(), &layout, &digest, 0),
        shard_byte(2, 0),
    );
    flip_byte(
        &shard_file(dir.path(), &layout, &digest, 2),
        shard_byte(2, 4095),
    );

    let mut stream = Box::pin(store.read(&layout, &digest, size, 0..size));
    let mut good: Vec<u8> = Vec::new();
    let err = loop {
        match stream.next().await {
            Some(Ok(piece)) => good.extend_from_slice(&piece),
            Some(Err(e)) => break e,
            None => panic!("a stripe with one good shard of three read as complete"),
        }
    };
    assert!(matches!(
        err,
        BlobStoreError::TooFewShards {
            stripe: 2,
            needed: 2,
            available: 1
        }
    ));
    assert!(good.len() as u64 <= 2 * 2 * u64::from(SHARD));
    assert!(good == bytes[..good.len()]);

    // A range that needs only healthy stripes never touches the bad one.
    let stripe = 2 * u64::from(SHARD);
    let healthy = [0..2 * stripe, 3 * stripe..size];
    for range in healthy {
        let got = get(&store, &layout, &digest, size, range.clone())
            .await
            .unwrap();
        assert!(got == bytes[range.start as usize..range.end as usize]);
    }
}

/// A writer whose staging directory vanished stops accepting bytes instead of silently
/// dropping them.
#[tokio::test]
async fn a_failed_write_poisons_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1, 0).await;
    let mut writer = store.begin(upload(1)).unwrap();
    writer.write(Bytes::from(data(1, 100))).await.unwrap();
    std::fs::remove_dir_all(dir.path().join("disk0/staging")).unwrap();
    let err = writer
        .write(Bytes::from(data(2, 2 * SHARD as usize)))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobStoreError::Io { .. }), "{err:?}");
    assert!(matches!(
        writer.write(Bytes::from_static(b"x")).await,
        Err(BlobStoreError::WriterFailed)
    ));
    writer.abort().await.unwrap();
    // A disk that failed a write takes no new uploads until the store is reopened.
    assert_eq!(store.disk_stats()[0].state, DiskState::Failed);
    assert!(matches!(
        store.begin(upload(2)),
        Err(BlobStoreError::NotEnoughDisks {
            needed: 1,
            available: 0,
            ..
        })
    ));
}
