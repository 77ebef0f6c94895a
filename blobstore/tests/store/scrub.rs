//! Scrubbing shard files on real disks: a healthy shard reads back whole, data and
//! parity alike; a flipped byte in a parity shard (which no read of a healthy stripe
//! meets), a missing file, a damaged header and a truncated file are each reported as
//! damage, and rebuilding the damaged shard in place makes it scrub clean again.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use berth_blobstore::{
    BlobStore, BlobStoreError, Pacer, ShardDamage, ShardHealth, StoreConfig, format,
};
use berth_types::{Digest, EcProfile, NodeId, ShardPlacement, StripedLayout};

use crate::common::{NODE, data, flip_byte, fs_disks, get, put, upload};

const SHARD: u32 = 4096;

fn shard_file(root: &Path, layout: &StripedLayout, digest: &Digest, i: usize) -> PathBuf {
    root.join(format!("disk{}", layout.shards[i].disk))
        .join(format::final_path(digest, &layout.upload, i))
}

fn store(root: &Path) -> BlobStore {
    let cfg = StoreConfig {
        profile: EcProfile::new(2, 1).unwrap(),
        shard_bytes: SHARD,
        ..StoreConfig::default()
    };
    BlobStore::open(NODE, fs_disks(root, 3), cfg).unwrap()
}

async fn scrub(
    store: &BlobStore,
    layout: &StripedLayout,
    digest: &Digest,
    size: u64,
    i: usize,
) -> ShardHealth {
    let mut pacer = Pacer::new(u64::MAX);
    store
        .scrub_shard(layout, digest, size, i, &mut pacer)
        .await
        .unwrap()
}

#[tokio::test]
async fn scrub_finds_damage_in_parity_and_missing_files_and_repair_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let bytes = data(7, 3 * 2 * SHARD as usize + 100);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    let stripes = layout.stripe_count(size);
    // The last chunk holds 100 bytes over 2 data shards: 64 bytes each.
    let whole = format::HEADER_BYTES + (stripes - 1) * format::chunk_bytes(SHARD) + 32 + 64;
    assert_eq!(whole, format::file_bytes(SHARD, 2, size));
    for i in 0..3 {
        assert_eq!(
            scrub(&store, &layout, &digest, size, i).await,
            ShardHealth::Good { bytes: whole }
        );
    }

    // Parity shard 2, stripe 2: a read of the whole blob never looks at it.
    let parity = shard_file(dir.path(), &layout, &digest, 2);
    flip_byte(
        &parity,
        format::chunk_offset(SHARD, 2) + format::CHECKSUM_BYTES + 9,
    );
    assert!(get(&store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(store.counters().checksum_failures(), 0);
    let health = scrub(&store, &layout, &digest, size, 2).await;
    assert_eq!(
        health,
        ShardHealth::Damaged {
            damage: ShardDamage::ChecksumMismatch { stripe: 2 },
            bytes: format::HEADER_BYTES + 2 * format::chunk_bytes(SHARD),
        }
    );
    assert_eq!(store.counters().checksum_failures(), 1);
    // Rebuilt where it is, the parity scrubs clean.
    store
        .rebuild_shard(&layout, &digest, size, 2, layout.shards[2])
        .await
        .unwrap();
    assert_eq!(
        scrub(&store, &layout, &digest, size, 2).await,
        ShardHealth::Good { bytes: whole }
    );

    std::fs::remove_file(shard_file(dir.path(), &layout, &digest, 1)).unwrap();
    assert_eq!(
        scrub(&store, &layout, &digest, size, 1).await,
        ShardHealth::Damaged {
            damage: ShardDamage::Missing,
            bytes: 0
        }
    );
    store
        .rebuild_shard(&layout, &digest, size, 1, layout.shards[1])
        .await
        .unwrap();
    assert_eq!(
        scrub(&store, &layout, &digest, size, 1).await,
        ShardHealth::Good { bytes: whole }
    );
    // With data shard 0 gone, the blob reads from the two rebuilt shards alone.
    std::fs::remove_file(shard_file(dir.path(), &layout, &digest, 0)).unwrap();
    assert!(get(&store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
}

#[tokio::test]
async fn scrub_reports_a_damaged_header_a_short_file_and_a_lost_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let bytes = data(8, 5 * 2 * SHARD as usize);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(2), &bytes).await.unwrap();

    flip_byte(&shard_file(dir.path(), &layout, &digest, 0), 20);
    let health = scrub(&store, &layout, &digest, size, 0).await;
    assert!(
        matches!(
            health,
            ShardHealth::Damaged {
                damage: ShardDamage::Unusable { .. },
                bytes: 0
            }
        ),
        "{health:?}"
    );

    let short = shard_file(dir.path(), &layout, &digest, 1);
    let len = std::fs::metadata(&short).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let health = scrub(&store, &layout, &digest, size, 1).await;
    assert!(
        matches!(
            health,
            ShardHealth::Damaged {
                damage: ShardDamage::ChunkUnreadable { stripe: 4, .. },
                ..
            }
        ),
        "{health:?}"
    );

    let mut elsewhere = layout.clone();
    elsewhere.shards[2].disk = berth_types::DiskId(9);
    assert_eq!(
        scrub(&store, &elsewhere, &digest, size, 2).await,
        ShardHealth::Damaged {
            damage: ShardDamage::UnknownDisk {
                disk: berth_types::DiskId(9)
            },
            bytes: 0
        }
    );
    let mut remote = layout.clone();
    remote.shards[2] = ShardPlacement {
        node: NodeId(2),
        disk: layout.shards[2].disk,
    };
    let mut pacer = Pacer::new(u64::MAX);
    assert!(matches!(
        store
            .scrub_shard(&remote, &digest, size, 2, &mut pacer)
            .await,
        Err(BlobStoreError::InvalidLayout)
    ));
}

/// The pacer bounds a scrub's read rate: 5 stripes of 4 KiB shards (about 20 KiB with
/// header and checksums) at 40 KiB/s take about half a second.
#[tokio::test]
async fn scrub_reads_at_most_at_the_pacer_rate() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let bytes = data(9, 5 * 2 * SHARD as usize);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(3), &bytes).await.unwrap();
    let mut pacer = Pacer::new(40 * 1024);
    let started = std::time::Instant::now();
    let health = store
        .scrub_shard(&layout, &digest, size, 2, &mut pacer)
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let ShardHealth::Good { bytes: read } = health else {
        panic!("{health:?}");
    };
    // Every take but the first waits for the bytes before it.
    let last = format::chunk_bytes(SHARD);
    let floor = (read - last) as f64 / (40.0 * 1024.0);
    assert!(
        elapsed >= floor * 0.95,
        "{read} bytes in {elapsed:.3} s, at least {floor:.3} s expected at 40 KiB/s"
    );
}
