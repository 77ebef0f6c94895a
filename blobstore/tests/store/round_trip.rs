//! Blobs written through `StripeWriter` on filesystem disks read back byte-identical,
//! whole and by range, for every profile and for sizes around shard and stripe
//! boundaries; a small blob takes little more than its size on disk; a blob stored in
//! format version 1 (padded last stripe) still reads, scrubs and rebuilds; reads of a
//! chunk another read holds share its buffer.

use std::sync::Arc;

use berth_blobstore::{BlobStore, BlobStoreError, Disk, DiskState, SimDisk, SimPower, StoreConfig};
use berth_types::{CodecId, DiskId, EcProfile, NodeId, ShardPlacement, StripedLayout};
use bytes::Bytes;

use crate::common::{NODE, data, digest_of, fs_disks, get, put, rewrite_as_v1, upload};

const SHARD: u32 = 4096;

fn profile(k: u8, m: u8) -> EcProfile {
    EcProfile::new(k, m).unwrap()
}

/// Ranges at the edges of shards and stripes, clipped to the blob.
fn boundary_ranges(size: u64, shard: u64, stripe: u64) -> Vec<std::ops::Range<u64>> {
    let mut points = vec![
        0,
        1,
        shard - 1,
        shard,
        shard + 1,
        stripe - 1,
        stripe,
        stripe + 1,
    ];
    points.extend([2 * stripe - 1, 2 * stripe, size - 1, size]);
    points.retain(|&p| p <= size);
    let mut ranges = vec![0..size, size..size, 0..0];
    for &a in &points {
        for &b in &points {
            if a < b {
                ranges.push(a..b);
            }
        }
    }
    ranges
}

#[tokio::test]
async fn blobs_round_trip_in_every_profile_and_size() {
    for (k, m, disks) in [(1, 0, 1), (2, 2, 4), (2, 1, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            profile: profile(k, m),
            shard_bytes: SHARD,
            ..StoreConfig::default()
        };
        let store = BlobStore::open(NODE, fs_disks(dir.path(), disks), cfg).unwrap();
        assert_eq!(store.profile(), profile(k, m));
        let shard = u64::from(SHARD);
        let stripe = u64::from(k) * shard;
        let sizes = [1, shard - 1, shard, stripe, stripe + 1, 3 * 1024 * 1024 + 7];
        for (n, size) in sizes.into_iter().enumerate() {
            let bytes = data(n as u64, size as usize);
            let (digest, layout) = put(&store, upload(n as u128), &bytes).await.unwrap();
            assert_eq!(layout.profile, profile(k, m));
            assert_eq!(layout.shards.len(), usize::from(k + m));
            let mut on = layout.shards.iter().map(|p| p.disk).collect::<Vec<_>>();
            on.sort();
            on.dedup();
            assert_eq!(on.len(), usize::from(k + m), "shards on distinct disks");
            for range in boundary_ranges(size, shard, stripe) {
                let got = get(&store, &layout, &digest, size, range.clone())
                    .await
                    .unwrap();
                assert!(
                    got == bytes[range.start as usize..range.end as usize],
                    "profile {k}+{m} size {size} range {range:?}"
                );
            }
        }
        assert_eq!(store.counters().checksum_failures(), 0);
        assert_eq!(store.counters().reconstructions(), 0);
        assert!(store.counters().bytes_written() > 0);
        assert!(store.counters().bytes_read() > 0);
    }
}

/// The default 1 MiB shard size streams a blob of several stripes.
#[tokio::test]
async fn default_shard_size_streams_a_blob_of_several_stripes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        profile: profile(2, 1),
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, fs_disks(dir.path(), 3), cfg).unwrap();
    let bytes = data(9, 5 * 1024 * 1024 + 3);
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    let size = bytes.len() as u64;
    assert_eq!(layout.stripe_count(size), 3);
    assert!(get(&store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    let mid = 2 * 1024 * 1024 - 5..4 * 1024 * 1024 + 5;
    let got = get(&store, &layout, &digest, size, mid.clone())
        .await
        .unwrap();
    assert!(got == bytes[mid.start as usize..mid.end as usize]);
}

#[tokio::test]
async fn an_empty_blob_commits_and_reads_as_empty() {
    let (_dir, store) = fs_store(2, 1, 3);
    let (digest, layout) = put(&store, upload(1), b"").await.unwrap();
    assert!(
        get(&store, &layout, &digest, 0, 0..0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Two uploads of the same content get their own files: deleting one leaves the other.
#[tokio::test]
async fn two_uploads_of_the_same_content_never_share_files() {
    let (_dir, store) = fs_store(2, 1, 3);
    let bytes = data(3, 20_000);
    let (digest, first) = put(&store, upload(1), &bytes).await.unwrap();
    let (_, second) = put(&store, upload(2), &bytes).await.unwrap();
    assert_ne!(first.upload, second.upload);
    store.delete(&first, &digest).await.unwrap();
    let size = bytes.len() as u64;
    assert!(get(&store, &first, &digest, size, 0..size).await.is_err());
    assert!(get(&store, &second, &digest, size, 0..size).await.unwrap() == bytes);
    // Deleting twice is fine: the files are already gone.
    store.delete(&first, &digest).await.unwrap();
}

#[tokio::test]
async fn reads_outside_the_blob_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(
        NODE,
        fs_disks(dir.path(), 1),
        StoreConfig {
            profile: EcProfile::SINGLE,
            shard_bytes: SHARD,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let bytes = data(1, 100);
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    let reversed = std::ops::Range { start: 50, end: 40 };
    for range in [0..101, reversed, 101..101] {
        assert!(matches!(
            get(&store, &layout, &digest, 100, range).await,
            Err(BlobStoreError::RangeOutOfBounds { size: 100, .. })
        ));
    }
}

#[test]
fn open_refuses_bad_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let open = |n, k, m, shard_bytes| {
        let disks = fs_disks(dir.path(), n);
        BlobStore::open(
            NodeId(1),
            disks,
            StoreConfig {
                profile: profile(k, m),
                shard_bytes,
                ..StoreConfig::default()
            },
        )
    };
    assert!(matches!(
        open(2, 2, 1, SHARD),
        Err(BlobStoreError::NotEnoughDisks {
            needed: 3,
            available: 2,
            ..
        })
    ));
    assert!(matches!(
        open(1, 1, 0, 4095),
        Err(BlobStoreError::InvalidShardBytes { shard_bytes: 4095 })
    ));
    assert!(matches!(
        open(1, 1, 0, 0),
        Err(BlobStoreError::InvalidShardBytes { shard_bytes: 0 })
    ));
    let mut twice = fs_disks(dir.path(), 1);
    twice.push(twice[0].clone());
    assert!(matches!(
        BlobStore::open(NodeId(1), twice, StoreConfig::default()),
        Err(BlobStoreError::DuplicateDisk { disk: DiskId(0) })
    ));
}

#[tokio::test]
async fn abort_removes_the_staging_files_and_stats_list_every_disk() {
    let (dir, store) = fs_store(2, 1, 3);
    let mut writer = store.begin(upload(5)).unwrap();
    writer.write(Bytes::from(data(1, 50_000))).await.unwrap();
    let staged = |i: u32| {
        std::fs::read_dir(dir.path().join(format!("disk{i}/staging")))
            .unwrap()
            .count()
    };
    assert_eq!((0..3).map(staged).sum::<usize>(), 3);
    writer.abort().await.unwrap();
    assert_eq!((0..3).map(staged).sum::<usize>(), 0);

    let stats = store.disk_stats();
    assert_eq!(
        stats.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![DiskId(0), DiskId(1), DiskId(2)]
    );
    for s in stats {
        assert!(s.path.ends_with(&format!("disk{}", s.id)));
        assert!(s.total_bytes >= s.free_bytes);
        assert_eq!(s.state, DiskState::Active);
    }
}

/// The futures and streams a request handler holds across `.await` can move between
/// threads.
#[test]
fn writer_and_reader_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let disk = SimDisk::new(DiskId(0), 1 << 30, SimPower::new());
    let store = BlobStore::open(
        NODE,
        vec![Arc::new(disk) as Arc<dyn Disk>],
        StoreConfig::default(),
    )
    .unwrap();
    let digest = digest_of(b"x");
    let mut writer = store.begin(upload(1)).unwrap();
    send(writer.write(Bytes::from_static(b"x")));
    let layout = StripedLayout {
        codec: CodecId::ReedSolomonV1,
        profile: EcProfile::SINGLE,
        shard_bytes: SHARD,
        upload: upload(1),
        shards: vec![ShardPlacement {
            node: NODE,
            disk: DiskId(0),
        }],
    };
    send(store.read(&layout, &digest, 1, 0..1));
    send(store.delete(&layout, &digest));
    send(store.sweep_staging(|_, _| true));
    send(store.sweep_orphans(|_, _, _, _| true, std::time::Duration::ZERO));
    send(writer.commit(&digest));
}

/// Sum of the lengths of every file under `root`.
fn bytes_under(root: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The last stripe is stored only as long as it needs: a 40 KiB blob on 2+1 with the
/// default 1 MiB shards takes three files of 64 + 32 + 20 KiB, not three of 1 MiB.
#[tokio::test]
async fn a_small_blob_takes_little_more_than_its_size_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        profile: profile(2, 1),
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, fs_disks(dir.path(), 3), cfg).unwrap();
    let before: u64 = (0..3)
        .map(|i| bytes_under(&dir.path().join(format!("disk{i}")).join("blobs")))
        .sum();
    let bytes = data(40, 40 * 1024);
    let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
    let used: u64 = (0..3)
        .map(|i| bytes_under(&dir.path().join(format!("disk{i}")).join("blobs")))
        .sum::<u64>()
        - before;
    assert_eq!(used, 3 * (64 + 32 + 20 * 1024));
    assert!(used < 1024 * 1024 / 10, "{used} bytes on disk for 40 KiB");
    let size = bytes.len() as u64;
    assert_eq!(
        get(&store, &layout, &digest, size, 0..size).await.unwrap(),
        bytes
    );
}

/// A `k+m` store of `SHARD`-byte shards on `disks` filesystem disks in a new folder.
fn fs_store(k: u8, m: u8, disks: u32) -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        profile: profile(k, m),
        shard_bytes: SHARD,
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, fs_disks(dir.path(), disks), cfg).unwrap();
    (dir, store)
}

/// The path of a committed blob's shard `i` under a store's folder.
fn shard_path(
    root: &std::path::Path,
    layout: &StripedLayout,
    digest: &berth_types::Digest,
    i: usize,
) -> std::path::PathBuf {
    root.join(format!("disk{}", layout.shards[i].disk))
        .join(berth_blobstore::format::final_path(
            digest,
            &layout.upload,
            i,
        ))
}

/// A blob written by format version 1 (version 1 headers, last stripe zero-padded to
/// full shards) reads whole and by range, scrubs clean even with its short blob size,
/// reads around a lost shard, and a rebuilt shard (written as version 2, short last
/// chunk) works next to the version 1 files.
#[tokio::test]
async fn a_version_1_blob_still_reads_scrubs_and_rebuilds() {
    use berth_blobstore::{Pacer, ShardHealth, format};

    let (dir, store) = fs_store(2, 1, 3);
    let shard = u64::from(SHARD);
    for (n, size) in [1, 100, 2 * shard + 65, 5 * shard - 1]
        .into_iter()
        .enumerate()
    {
        let bytes = data(n as u64, size as usize);
        let (digest, layout) = put(&store, upload(n as u128), &bytes).await.unwrap();
        rewrite_as_v1(dir.path(), &layout, &digest, size);
        let file = |i: usize| shard_path(dir.path(), &layout, &digest, i);
        let stripes = layout.stripe_count(size);
        assert_eq!(
            std::fs::metadata(file(0)).unwrap().len(),
            format::HEADER_BYTES + stripes * format::chunk_bytes(SHARD)
        );
        for range in boundary_ranges(size, shard, 2 * shard) {
            let got = get(&store, &layout, &digest, size, range.clone())
                .await
                .unwrap();
            assert!(
                got == bytes[range.start as usize..range.end as usize],
                "range {range:?} of {size}"
            );
        }
        for i in 0..3 {
            let health = store
                .scrub_shard(&layout, &digest, size, i, &mut Pacer::new(u64::MAX))
                .await
                .unwrap();
            assert_eq!(
                health,
                ShardHealth::Good {
                    bytes: std::fs::metadata(file(i)).unwrap().len()
                }
            );
        }
        // Data shard 1 lost: read from shard 0 and parity, then rebuilt as version 2.
        std::fs::remove_file(file(1)).unwrap();
        assert_eq!(
            get(&store, &layout, &digest, size, 0..size).await.unwrap(),
            bytes
        );
        store
            .rebuild_shard(&layout, &digest, size, 1, layout.shards[1])
            .await
            .unwrap();
        assert_eq!(
            std::fs::metadata(file(1)).unwrap().len(),
            format::file_bytes(SHARD, 2, size)
        );
        let header: [u8; 64] = std::fs::read(file(1)).unwrap()[..64].try_into().unwrap();
        assert_eq!(
            u16::from_le_bytes([header[8], header[9]]),
            format::FORMAT_VERSION
        );
        // Mixed files: the v2 data shard with the v1 parity rebuilds v1 data shard 0.
        std::fs::remove_file(file(0)).unwrap();
        assert_eq!(
            get(&store, &layout, &digest, size, 0..size).await.unwrap(),
            bytes
        );
        store
            .rebuild_shard(&layout, &digest, size, 0, layout.shards[0])
            .await
            .unwrap();
        for i in 0..3 {
            let health = store
                .scrub_shard(&layout, &digest, size, i, &mut Pacer::new(u64::MAX))
                .await
                .unwrap();
            assert!(
                matches!(health, ShardHealth::Good { .. }),
                "shard {i}: {health:?}"
            );
        }
        assert_eq!(
            get(&store, &layout, &digest, size, 0..size).await.unwrap(),
            bytes
        );
    }
}

/// A shard file torn by a crash or a failing disk (cut inside its last chunk, cut to
/// its header, cut inside its first chunk) or grown by trailing garbage never reads as
/// good: every read, whole and by range, comes back byte-identical from the other
/// shards, and the scrubber reports the file damaged.
#[tokio::test]
async fn a_torn_or_grown_shard_file_is_read_around() {
    use berth_blobstore::{Pacer, ShardHealth, format};
    use std::io::Write;

    let (dir, store) = fs_store(2, 1, 3);
    let shard = u64::from(SHARD);
    let mut n = 0u128;
    for size in [100, 2 * shard + 65, 4 * shard] {
        let full = format::file_bytes(SHARD, 2, size);
        for (what, len) in [
            ("cut inside the last chunk", Some(full - 1)),
            ("cut to its header", Some(format::HEADER_BYTES)),
            (
                "cut inside the first chunk",
                Some(format::HEADER_BYTES + 40),
            ),
            ("grown by 64 bytes", None),
        ] {
            n += 1;
            let bytes = data(n as u64, size as usize);
            let (digest, layout) = put(&store, upload(n), &bytes).await.unwrap();
            let path = shard_path(dir.path(), &layout, &digest, 0);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            match len {
                Some(len) => file.set_len(len).unwrap(),
                None => {
                    use std::io::Seek;
                    file.seek(std::io::SeekFrom::End(0)).unwrap();
                    file.write_all(&[0u8; 64]).unwrap();
                }
            }
            drop(file);
            for range in [0..size, 1..size, size - 1..size] {
                let got = get(&store, &layout, &digest, size, range.clone()).await;
                assert!(
                    got.as_deref().ok() == Some(&bytes[range.start as usize..range.end as usize]),
                    "{what}, size {size}, range {range:?}: {:?}",
                    got.err()
                );
            }
            let health = store
                .scrub_shard(&layout, &digest, size, 0, &mut Pacer::new(u64::MAX))
                .await
                .unwrap();
            assert!(
                matches!(health, ShardHealth::Damaged { .. }),
                "{what}, size {size}: {health:?}"
            );
        }
    }
}

#[tokio::test]
async fn reads_of_a_chunk_another_read_holds_share_its_buffer_instead_of_the_disk() {
    use futures::StreamExt;

    let (_dir, store) = fs_store(1, 0, 1);
    let bytes = data(31, 8 * SHARD as usize);
    let size = bytes.len() as u64;
    let (digest, layout) = put(&store, upload(31), &bytes).await.unwrap();
    let counters = store.counters();

    // A read of the first stripe that holds its chunk (one stripe: no read-ahead of
    // its own that could land while the bytes read are counted).
    let mut held = store.read(&layout, &digest, size, 0..u64::from(SHARD));
    let first = held.next().await.unwrap().unwrap();
    assert!(first[..] == bytes[..SHARD as usize]);
    assert!(held.next().await.is_none());
    let (read_before, shared_before) = (counters.bytes_read(), counters.shared_reads());
    let range = 5..u64::from(SHARD) - 5;
    let got = get(&store, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    // The file was opened (its header read), its chunk not.
    assert_eq!(
        counters.bytes_read() - read_before,
        berth_blobstore::format::HEADER_BYTES
    );
    assert_eq!(counters.shared_reads(), shared_before + 1);

    // Once no read holds a chunk, it comes from the disk again.
    drop((first, held));
    let read_before = counters.bytes_read();
    let got = get(&store, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    assert_eq!(
        counters.bytes_read() - read_before,
        berth_blobstore::format::HEADER_BYTES + berth_blobstore::format::chunk_bytes(SHARD)
    );

    // Whole concurrent reads agree byte for byte whatever they shared.
    let reads = (0..8).map(|_| get(&store, &layout, &digest, size, 0..size));
    for got in futures::future::join_all(reads).await {
        assert!(got.unwrap() == bytes);
    }
}
