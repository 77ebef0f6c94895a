//! The sweeps remove exactly the leftovers: staging files of uploads that are no longer
//! live, and final files that no committed blob references and that are old enough.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use berth_blobstore::{BlobStore, StoreConfig, format};
use berth_types::EcProfile;
use bytes::Bytes;

use crate::common::{NODE, data, fs_disks, get, put, upload};

fn files_under(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn staging_of_dead_uploads_is_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        profile: EcProfile::new(2, 1).unwrap(),
        shard_bytes: 1024,
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, fs_disks(dir.path(), 3), cfg).unwrap();
    let (live, dead) = (upload(1), upload(2));
    let mut live_writer = store.begin(live).unwrap();
    live_writer.write(Bytes::from(data(1, 5000))).await.unwrap();
    let mut dead_writer = store.begin(dead).unwrap();
    dead_writer.write(Bytes::from(data(2, 5000))).await.unwrap();
    drop(dead_writer);

    let removed = store.sweep_staging(move |u, _| *u == live).await.unwrap();
    assert_eq!(removed, 3);
    // The live upload goes on and commits as if nothing happened.
    live_writer.write(Bytes::from(data(3, 10))).await.unwrap();
    let mut expected = data(1, 5000);
    expected.extend(data(3, 10));
    let digest = crate::common::digest_of(&expected);
    let layout = live_writer.commit(&digest).await.unwrap().layout;
    let got = get(&store, &layout, &digest, 5010, 0..5010).await.unwrap();
    assert!(got == expected);
    assert_eq!(store.sweep_staging(|_, _| false).await.unwrap(), 0);
}

#[tokio::test]
async fn orphans_are_removed_only_when_uncommitted_and_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        profile: EcProfile::new(2, 1).unwrap(),
        shard_bytes: 1024,
        ..StoreConfig::default()
    };
    let store = BlobStore::open(NODE, fs_disks(dir.path(), 3), cfg).unwrap();
    let (kept_digest, kept) = put(&store, upload(1), &data(1, 3000)).await.unwrap();
    let (old_digest, old) = put(&store, upload(2), &data(2, 3000)).await.unwrap();
    let (_, young) = put(&store, upload(3), &data(3, 3000)).await.unwrap();
    assert_eq!(files_under(dir.path()), 3 * 3 + 3);

    // Age the files of `old` by an hour.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (i, p) in old.shards.iter().enumerate() {
        let path = dir
            .path()
            .join(format!("disk{}", p.disk))
            .join(format::final_path(&old_digest, &old.upload, i));
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }

    // Only `kept` is committed; `young` is uncommitted but too fresh to judge.
    let committed: HashSet<_> = [(kept_digest.clone(), kept.upload)].into();
    let removed = store
        .sweep_orphans(
            move |d, u, _, _| committed.contains(&(d.clone(), *u)),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert!(get(&store, &old, &old_digest, 3000, 0..3000).await.is_err());
    assert!(
        get(&store, &kept, &kept_digest, 3000, 0..3000)
            .await
            .unwrap()
            == data(1, 3000)
    );
    assert_eq!(files_under(dir.path()), 2 * 3 + 3);
    assert_eq!(young.shards.len(), 3);

    // With no minimum age, `young` goes too and `kept` still stays.
    let committed: HashSet<_> = [(kept_digest, kept.upload)].into();
    let removed = store
        .sweep_orphans(
            move |d, u, _, _| committed.contains(&(d.clone(), *u)),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert_eq!(files_under(dir.path()), 3 + 3);
}
