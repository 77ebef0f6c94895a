//! Power loss at every point of a workload, on simulated disks that drop whatever was
//! not synced: every blob whose commit returned reads back byte-identical after the
//! crash, every final shard file left on disk is complete and valid (never a torn or
//! empty file under a final name), and the sweeps remove everything that is not a
//! committed blob.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_blobstore::format::{self, HEADER_BYTES, ShardHeader};
use berth_blobstore::{BlobStore, Disk, SimDisk, SimPower, StoreConfig};
use berth_types::{Digest, DiskId, EcProfile, StripedLayout, UploadId};
use bytes::Bytes;

use crate::common::{NODE, data, digest_of, get, upload};

const SHARD: u32 = 64;
const DISKS: u32 = 4;

fn cfg() -> StoreConfig {
    StoreConfig {
        profile: EcProfile::new(2, 1).unwrap(),
        shard_bytes: SHARD,
        ..StoreConfig::default()
    }
}

fn open(disks: &[SimDisk]) -> BlobStore {
    let disks = disks
        .iter()
        .map(|d| Arc::new(d.clone()) as Arc<dyn Disk>)
        .collect();
    BlobStore::open(NODE, disks, cfg()).unwrap()
}

struct Committed {
    digest: Digest,
    layout: StripedLayout,
    bytes: Vec<u8>,
}

/// Sizes of the workload's blobs: under a shard, exactly a stripe, several stripes.
const SIZES: [usize; 5] = [1, 128, 1000, 129, 700];

/// Writes the workload's blobs; commits all but the last two (the fourth is dropped
/// mid-write, the fifth aborted). Stops at the first error, as a dying node would.
async fn workload(store: &BlobStore) -> Vec<Committed> {
    let mut committed = Vec::new();
    for (n, size) in SIZES.into_iter().enumerate() {
        let bytes = data(n as u64 + 100, size);
        let digest = digest_of(&bytes);
        let Ok(mut writer) = store.begin(upload(n as u128)) else {
            return committed;
        };
        for piece in bytes.chunks(50) {
            if writer.write(Bytes::copy_from_slice(piece)).await.is_err() {
                return committed;
            }
        }
        match n {
            0..=2 => match writer.commit(&digest).await {
                Ok(written) => committed.push(Committed {
                    digest,
                    layout: written.layout,
                    bytes,
                }),
                Err(_) => return committed,
            },
            3 => drop(writer),
            _ => {
                if writer.abort().await.is_err() {
                    return committed;
                }
            }
        }
    }
    committed
}

/// Every file under `dir`, recursively.
fn files(disk: &SimDisk, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in disk.list(dir).unwrap() {
        let path = dir.join(&e.name);
        if e.is_dir {
            out.extend(files(disk, &path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Checks that a final shard file is whole: a valid header and only chunks whose
/// checksums match. Returns the number of stripes it holds.
fn assert_complete(disk: &SimDisk, path: &Path) -> u64 {
    let file = disk.open(path).unwrap();
    let len = file.size().unwrap();
    assert!(
        len >= HEADER_BYTES,
        "{path:?} on {:?} is torn: {len} bytes",
        disk.id()
    );
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_at(&mut header, 0).unwrap();
    let header = ShardHeader::decode(&header).unwrap();
    let chunk = format::chunk_bytes(header.shard_bytes);
    assert_eq!((len - HEADER_BYTES) % chunk, 0, "{path:?} ends mid-chunk");
    let stripes = (len - HEADER_BYTES) / chunk;
    for s in 0..stripes {
        let mut buf = vec![0u8; chunk as usize];
        file.read_at(&mut buf, format::chunk_offset(header.shard_bytes, s))
            .unwrap();
        let (sum, shard) = buf.split_at(format::CHECKSUM_BYTES as usize);
        assert_eq!(format::chunk_checksum(s, shard), sum, "{path:?} stripe {s}");
    }
    stripes
}

async fn crash_at(cut: Option<u64>) -> u64 {
    let power = SimPower::new();
    let disks: Vec<SimDisk> = (0..DISKS)
        .map(|i| SimDisk::new(DiskId(i), 1 << 30, power.clone()))
        .collect();
    let store = open(&disks);
    let start = power.ops();
    if let Some(cut) = cut {
        power.cut_after(cut);
    }
    let committed = workload(&store).await;
    let used = power.ops() - start;
    if cut.is_none() {
        assert_eq!(committed.len(), 3, "without a crash every commit succeeds");
    }
    drop(store);

    power.restore();
    for d in &disks {
        d.crash();
    }
    let store = open(&disks);
    let context = format!("power cut after {cut:?} operations");

    for c in &committed {
        let size = c.bytes.len() as u64;
        let got = get(&store, &c.layout, &c.digest, size, 0..size).await;
        assert!(got.unwrap() == c.bytes, "{context}: committed blob changed");
    }
    assert_eq!(store.counters().checksum_failures(), 0, "{context}");
    assert_eq!(store.counters().reconstructions(), 0, "{context}");
    for d in &disks {
        for path in files(d, Path::new(format::BLOBS_DIR)) {
            assert_complete(d, &path);
        }
    }

    let live: HashSet<(Digest, UploadId)> = committed
        .iter()
        .map(|c| (c.digest.clone(), c.layout.upload))
        .collect();
    store.sweep_staging(|_, _| false).await.unwrap();
    let keep = live.clone();
    store
        .sweep_orphans(
            move |d, u, _, _| keep.contains(&(d.clone(), *u)),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let mut expected: HashSet<(DiskId, PathBuf)> = HashSet::new();
    for c in &committed {
        for (i, p) in c.layout.shards.iter().enumerate() {
            expected.insert((p.disk, format::final_path(&c.digest, &c.layout.upload, i)));
        }
    }
    let mut left: HashSet<(DiskId, PathBuf)> = HashSet::new();
    for d in &disks {
        assert!(
            files(d, Path::new(format::STAGING_DIR)).is_empty(),
            "{context}"
        );
        left.extend(
            files(d, Path::new(format::BLOBS_DIR))
                .into_iter()
                .map(|p| (d.id(), p)),
        );
    }
    assert_eq!(
        left, expected,
        "{context}: sweeps left exactly the committed shards"
    );
    for c in &committed {
        let size = c.bytes.len() as u64;
        let got = get(&store, &c.layout, &c.digest, size, 0..size).await;
        assert!(
            got.unwrap() == c.bytes,
            "{context}: sweep damaged a committed blob"
        );
    }
    used
}

#[tokio::test]
async fn committed_blobs_survive_power_loss_at_every_point() {
    let total = crash_at(None).await;
    assert!(total > 50, "the workload does real I/O: {total} operations");
    // One more than the workload needs, so the last run crashes after the workload.
    for cut in 0..=total + 1 {
        crash_at(Some(cut)).await;
    }
}
