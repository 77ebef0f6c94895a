//! Property: for random profiles, blob sizes and fault sets of at most `m` damaged
//! shards per stripe (whole shard files deleted, chunks with a flipped byte, or both),
//! every committed blob reads back byte-identical, whole and by range; and the scrub of
//! each shard file reports damage exactly where a fault was planted; rebuilding the
//! damaged shards gives files that scrub clean. Blob sizes end in short last stripes of
//! many lengths (1 byte, 63, 64, 65, ..., a stripe less one, a whole stripe), and some
//! cases first rewrite the blob as format version 1 (last stripe padded). Real
//! filesystem disks in a tempdir; a bounded number of cases so it runs in seconds.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use berth_blobstore::{BlobStore, Pacer, ShardHealth, StoreConfig, format};
use berth_types::EcProfile;
use proptest::prelude::*;

use crate::common::{NODE, data, fs_disks, get, put, rewrite_as_v1, upload};

const SHARD: u32 = 512;

/// One case: a profile, a blob size, the shard files deleted, and per stripe the
/// shards whose chunk gets a flipped byte (together at most `m` per stripe), a byte
/// offset within the chunk, and a range to read.
#[derive(Debug, Clone)]
struct Case {
    k: u8,
    m: u8,
    size: usize,
    deleted: BTreeSet<usize>,
    flipped: Vec<BTreeSet<usize>>,
    at: u32,
    range: (usize, usize),
    /// The blob is rewritten as format version 1 before the faults.
    v1: bool,
}

/// A blob size of `full` whole stripes and a last stripe picked by `pick`: the edges
/// of the codec's 64-byte blocks and of the stripe, or any length.
fn size_of(k: u8, full: usize, pick: usize, any: usize) -> usize {
    let stripe = usize::from(k) * SHARD as usize;
    let tail = match pick {
        0 => 1,
        1 => 63,
        2 => 64,
        3 => 65,
        4 => 127,
        5 => 128,
        6 => 129,
        7 => stripe - 1,
        8 => stripe,
        _ => 1 + any % stripe,
    };
    full * stripe + tail
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u8..=4,
        0u8..=3,
        (0usize..=4, 0usize..12, any::<usize>()),
        any::<bool>(),
    )
        .prop_flat_map(|(k, m, (full, pick, any), v1)| {
            let size = size_of(k, full, pick, any);
            let width = usize::from(k + m);
            let stripe = usize::from(k) * SHARD as usize;
            let stripes = size.div_ceil(stripe);
            (
                Just((k, m, size, v1)),
                proptest::sample::subsequence((0..width).collect::<Vec<_>>(), 0..=usize::from(m)),
                proptest::collection::vec(
                    proptest::sample::subsequence(
                        (0..width).collect::<Vec<_>>(),
                        0..=usize::from(m),
                    ),
                    stripes,
                ),
                0..SHARD,
                (0..=size, 0..=size),
            )
        })
        .prop_map(|((k, m, size, v1), deleted, flips, at, (a, b))| {
            let deleted: BTreeSet<usize> = deleted.into_iter().collect();
            // Per stripe, flips are kept while deleted plus flipped stay within m.
            let room = usize::from(m) - deleted.len();
            let flipped = flips
                .into_iter()
                .map(|f| {
                    f.into_iter()
                        .filter(|i| !deleted.contains(i))
                        .take(room)
                        .collect()
                })
                .collect();
            Case {
                k,
                m,
                size,
                deleted,
                flipped,
                at,
                range: (a.min(b), a.max(b)),
                v1,
            }
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let profile = EcProfile::new(case.k, case.m).unwrap();
        let cfg = StoreConfig {
            profile,
            shard_bytes: SHARD,
            ..StoreConfig::default()
        };
        let width = profile.width();
        let store = BlobStore::open(NODE, fs_disks(dir.path(), width as u32), cfg).unwrap();
        let bytes = data(case.size as u64, case.size);
        let size = bytes.len() as u64;
        let (digest, layout) = put(&store, upload(1), &bytes).await.unwrap();
        let file = |i: usize| -> PathBuf {
            dir.path()
                .join(format!("disk{}", layout.shards[i].disk))
                .join(format::final_path(&digest, &layout.upload, i))
        };
        if case.v1 {
            rewrite_as_v1(dir.path(), &layout, &digest, size);
        }
        for &i in &case.deleted {
            std::fs::remove_file(file(i)).unwrap();
        }
        for (stripe, shards) in case.flipped.iter().enumerate() {
            for &i in shards {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(file(i))
                    .unwrap();
                // The flipped byte is inside the chunk as stored: the last one is
                // short unless the file is version 1.
                let len = if case.v1 {
                    SHARD
                } else {
                    format::stripe_shard_bytes(SHARD, profile.k(), size, stripe as u64)
                };
                let offset = format::chunk_offset(SHARD, stripe as u64)
                    + format::CHECKSUM_BYTES
                    + u64::from(case.at % len);
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, offset).unwrap();
                f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
            }
        }

        let whole = get(&store, &layout, &digest, size, 0..size).await;
        prop_assert!(whole.is_ok(), "whole read failed: {:?}", whole.err());
        prop_assert!(whole.unwrap() == bytes, "whole read differs");
        let (a, b) = case.range;
        let part = get(&store, &layout, &digest, size, a as u64..b as u64).await;
        prop_assert!(part.is_ok(), "range read failed: {:?}", part.err());
        prop_assert!(part.unwrap() == bytes[a..b], "range {a}..{b} differs");

        let damaged: BTreeSet<usize> = case
            .flipped
            .iter()
            .flatten()
            .chain(&case.deleted)
            .copied()
            .collect();
        let scrub_all = async || {
            let mut all = Vec::new();
            for i in 0..width {
                let mut pacer = Pacer::new(u64::MAX);
                all.push(
                    store
                        .scrub_shard(&layout, &digest, size, i, &mut pacer)
                        .await
                        .unwrap(),
                );
            }
            all
        };
        for (i, health) in scrub_all().await.into_iter().enumerate() {
            prop_assert_eq!(
                matches!(health, ShardHealth::Damaged { .. }),
                damaged.contains(&i),
                "shard {}: {:?}",
                i,
                health
            );
        }

        // Rebuilt in place, a damaged shard is a version 2 file (short last chunk)
        // that scrubs clean, also next to version 1 files of the same blob.
        let stripes = layout.stripe_count(size);
        let shard_total = (stripes.saturating_sub(1)) * u64::from(SHARD)
            + if stripes == 0 {
                0
            } else {
                u64::from(format::last_shard_bytes(SHARD, profile.k(), size))
            };
        for &i in &damaged {
            let written = store
                .rebuild_shard(&layout, &digest, size, i, layout.shards[i])
                .await
                .unwrap();
            prop_assert_eq!(written, shard_total);
            prop_assert_eq!(
                std::fs::metadata(file(i)).unwrap().len(),
                format::file_bytes(SHARD, profile.k(), size)
            );
        }
        for (i, health) in scrub_all().await.into_iter().enumerate() {
            prop_assert!(
                matches!(health, ShardHealth::Good { .. }),
                "shard {} after rebuild: {:?}",
                i,
                health
            );
        }
        let whole = get(&store, &layout, &digest, size, 0..size).await;
        prop_assert!(
            whole.ok() == Some(bytes),
            "whole read after rebuild differs"
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any fault set of at most `m` per stripe is read around, never served as wrong
    /// bytes, and found by the scrub.
    #[test]
    fn every_blob_reads_back_through_any_faults_within_the_parity(case in case()) {
        check(&case)?;
    }
}
