//! Every command's outcome, table style, applied straight to the state machine tables;
//! refused commands must leave the state digest unchanged. Then the effects a bare
//! outcome does not show (tags removed with a manifest, referrer index, listings).

use std::collections::BTreeMap;

use berth_types::{Digest, NodeId};

use super::{TestDb, inline, repo, sha, tag, upload};
use crate::model::{
    BlobRecord, Command, ManifestRecord, Outcome, REQUEST_RETENTION_MS, ReferrerRecord, Rejection,
    RequestId, UploadRecord, VersionedCommand,
};

fn create(id: u128, r: &str, at_ms: u64) -> Command {
    Command::CreateUpload {
        id: upload(id),
        repo: repo(r),
        at_ms,
    }
}

fn commit(r: &str, d: u8, layout: u8, up: Option<u128>) -> Command {
    Command::CommitBlob {
        repo: repo(r),
        digest: sha(d),
        size: 3,
        layout: inline(layout),
        upload: up.map(upload),
        at_ms: 5,
    }
}

fn at(node: u64, disk: u32) -> berth_types::ShardPlacement {
    berth_types::ShardPlacement {
        node: berth_types::NodeId(node),
        disk: berth_types::DiskId(disk),
    }
}

/// A layout of profile `k+m` written by upload `up` onto `shards`.
fn striped(
    k: u8,
    m: u8,
    up: u128,
    shards: Vec<berth_types::ShardPlacement>,
) -> berth_types::StripedLayout {
    berth_types::StripedLayout {
        codec: berth_types::CodecId::ReedSolomonV1,
        profile: berth_types::EcProfile::new(k, m).unwrap(),
        shard_bytes: 1024,
        upload: upload(up),
        shards,
    }
}

/// The 2+1 layout of upload 7 over nodes 1, 2 and 3.
fn layout_2_1() -> berth_types::StripedLayout {
    striped(2, 1, 7, vec![at(1, 0), at(2, 0), at(3, 0)])
}

/// Commits blob `d` striped 2+1 over nodes 1, 2 and 3, written by upload 7.
fn striped_commit(d: u8) -> Command {
    striped_commit_as(d, layout_2_1())
}

/// Commits blob `d` with `layout`.
fn striped_commit_as(d: u8, layout: berth_types::StripedLayout) -> Command {
    Command::CommitBlob {
        repo: repo("a"),
        digest: sha(d),
        size: 3000,
        layout: berth_types::BlobLayout::Striped(layout),
        upload: None,
        at_ms: 5,
    }
}

/// The 1+1 layout an outage gives blob writes of upload 7: nodes 1 and 2.
fn layout_1_1() -> berth_types::StripedLayout {
    striped(1, 1, 7, vec![at(1, 0), at(2, 0)])
}

/// Restripes blob `d`, copied from upload `from`, to the 2+1 layout of upload 9.
fn restripe(d: u8, from: u128) -> Command {
    Command::RestripeBlob {
        digest: sha(d),
        from_upload: upload(from),
        layout: striped(2, 1, 9, vec![at(1, 0), at(2, 0), at(3, 0)]),
    }
}

fn move_shard(
    d: u8,
    up: u128,
    index: u8,
    from: berth_types::ShardPlacement,
    to: berth_types::ShardPlacement,
) -> Command {
    Command::MoveShard {
        digest: sha(d),
        upload: upload(up),
        index,
        from,
        to,
    }
}

fn manifest(d: u8, subject: Option<u8>) -> ManifestRecord {
    ManifestRecord {
        digest: sha(d),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: format!("{{\"m\":{d}}}").into_bytes(),
        subject: subject.map(sha),
        artifact_type: subject.map(|_| "application/vnd.example.sbom".into()),
        annotations: BTreeMap::from([("k".into(), format!("v{d}"))]),
        pushed_at_ms: 7,
    }
}

fn put(
    r: &str,
    record: ManifestRecord,
    t: Option<&str>,
    blobs: &[u8],
    manifests: &[u8],
) -> Command {
    Command::PutManifest {
        repo: repo(r),
        record,
        tag: t.map(tag),
        blobs: blobs.iter().copied().map(sha).collect(),
        manifests: manifests.iter().copied().map(sha).collect(),
    }
}

fn blob_record(d: u8, layout: u8) -> BlobRecord {
    BlobRecord {
        digest: sha(d),
        size: 3,
        layout: inline(layout),
        created_at_ms: 5,
    }
}

struct Case {
    name: &'static str,
    setup: Vec<Command>,
    cmd: Command,
    want: Outcome,
}

#[test]
fn each_command_returns_its_outcome_and_refusals_change_nothing() {
    let cases = vec![
        Case {
            name: "create upload",
            setup: vec![],
            cmd: create(1, "a", 10),
            want: Outcome::UploadCreated,
        },
        Case {
            name: "cancel existing upload",
            setup: vec![create(1, "a", 10)],
            cmd: Command::CancelUpload { id: upload(1) },
            want: Outcome::UploadCancelled,
        },
        Case {
            name: "cancel absent upload",
            setup: vec![create(2, "a", 10)],
            cmd: Command::CancelUpload { id: upload(1) },
            want: Outcome::NotFound,
        },
        Case {
            name: "commit new blob through its session",
            setup: vec![create(1, "a", 10)],
            cmd: commit("a", 1, 1, Some(1)),
            want: Outcome::BlobCommitted {
                existing: false,
                layout: inline(1),
            },
        },
        Case {
            name: "commit without a session",
            setup: vec![],
            cmd: commit("a", 1, 1, None),
            want: Outcome::BlobCommitted {
                existing: false,
                layout: inline(1),
            },
        },
        Case {
            name: "commit existing digest keeps the first layout",
            setup: vec![commit("a", 1, 1, None), create(2, "b", 10)],
            cmd: commit("b", 1, 9, Some(2)),
            want: Outcome::BlobCommitted {
                existing: true,
                layout: inline(1),
            },
        },
        Case {
            name: "commit through an expired session is refused",
            setup: vec![commit("a", 2, 2, None)],
            cmd: commit("a", 1, 1, Some(7)),
            want: Outcome::Rejected(Rejection::UploadUnknown(upload(7))),
        },
        Case {
            name: "commit of a known digest through an expired session links it",
            setup: vec![commit("a", 1, 1, None)],
            cmd: commit("b", 1, 9, Some(7)),
            want: Outcome::BlobCommitted {
                existing: true,
                layout: inline(1),
            },
        },
        Case {
            name: "mount a blob the source links",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::MountBlob {
                repo: repo("b"),
                from: repo("a"),
                digest: sha(1),
            },
            want: Outcome::Mounted(Some(blob_record(1, 1))),
        },
        Case {
            name: "mount from a repository that does not link the blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::MountBlob {
                repo: repo("b"),
                from: repo("c"),
                digest: sha(1),
            },
            want: Outcome::Mounted(None),
        },
        Case {
            name: "mount an unknown blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::MountBlob {
                repo: repo("b"),
                from: repo("a"),
                digest: sha(2),
            },
            want: Outcome::Mounted(None),
        },
        Case {
            name: "put manifest with its blobs and child",
            setup: vec![
                commit("a", 1, 1, None),
                put("a", manifest(20, None), None, &[1], &[]),
            ],
            cmd: put("a", manifest(21, None), Some("latest"), &[1], &[20]),
            want: Outcome::ManifestPut,
        },
        Case {
            name: "put manifest referencing an unlinked blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: put("a", manifest(21, None), Some("latest"), &[1, 2], &[]),
            want: Outcome::Rejected(Rejection::BlobUnknown(sha(2))),
        },
        Case {
            name: "put manifest referencing a blob linked only elsewhere",
            setup: vec![commit("b", 1, 1, None)],
            cmd: put("a", manifest(21, None), Some("latest"), &[1], &[]),
            want: Outcome::Rejected(Rejection::BlobUnknown(sha(1))),
        },
        Case {
            name: "put manifest referencing a missing child manifest",
            setup: vec![
                commit("a", 1, 1, None),
                put("b", manifest(20, None), None, &[], &[]),
            ],
            cmd: put("a", manifest(21, None), Some("latest"), &[1], &[20]),
            want: Outcome::Rejected(Rejection::ManifestUnknown(sha(20))),
        },
        Case {
            name: "delete manifest",
            setup: vec![put("a", manifest(20, None), Some("latest"), &[], &[])],
            cmd: Command::DeleteManifest {
                repo: repo("a"),
                digest: sha(20),
            },
            want: Outcome::ManifestDeleted {
                untagged: vec![tag("latest")],
            },
        },
        Case {
            name: "delete absent manifest",
            setup: vec![put("b", manifest(20, None), Some("latest"), &[], &[])],
            cmd: Command::DeleteManifest {
                repo: repo("a"),
                digest: sha(20),
            },
            want: Outcome::NotFound,
        },
        Case {
            name: "delete tag",
            setup: vec![put("a", manifest(20, None), Some("latest"), &[], &[])],
            cmd: Command::DeleteTag {
                repo: repo("a"),
                tag: tag("latest"),
            },
            want: Outcome::TagDeleted,
        },
        Case {
            name: "delete absent tag",
            setup: vec![put("a", manifest(20, None), Some("latest"), &[], &[])],
            cmd: Command::DeleteTag {
                repo: repo("a"),
                tag: tag("v1"),
            },
            want: Outcome::NotFound,
        },
        Case {
            name: "unlink blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::UnlinkBlob {
                repo: repo("a"),
                digest: sha(1),
            },
            want: Outcome::BlobUnlinked,
        },
        Case {
            name: "unlink a blob the repository does not link",
            setup: vec![commit("b", 1, 1, None)],
            cmd: Command::UnlinkBlob {
                repo: repo("a"),
                digest: sha(1),
            },
            want: Outcome::NotFound,
        },
        Case {
            name: "expire uploads started before the cutoff",
            setup: vec![create(3, "a", 5), create(1, "a", 30), create(2, "b", 5)],
            cmd: Command::ExpireUploads { before_ms: 30 },
            want: Outcome::UploadsExpired(vec![upload(2), upload(3)]),
        },
        Case {
            name: "expire with nothing old enough",
            setup: vec![create(1, "a", 30)],
            cmd: Command::ExpireUploads { before_ms: 30 },
            want: Outcome::UploadsExpired(vec![]),
        },
        Case {
            name: "delete an unlinked blob record",
            setup: vec![
                commit("a", 1, 1, None),
                Command::UnlinkBlob {
                    repo: repo("a"),
                    digest: sha(1),
                },
            ],
            cmd: Command::DeleteBlobRecord { digest: sha(1) },
            want: Outcome::BlobRecordDeleted(blob_record(1, 1)),
        },
        Case {
            name: "delete a linked blob record",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::DeleteBlobRecord { digest: sha(1) },
            want: Outcome::Rejected(Rejection::StillLinked),
        },
        Case {
            name: "delete an absent blob record",
            setup: vec![commit("a", 1, 1, None)],
            cmd: Command::DeleteBlobRecord { digest: sha(2) },
            want: Outcome::NotFound,
        },
        Case {
            name: "mark a node draining",
            setup: vec![],
            cmd: Command::SetDraining {
                node: NodeId(4),
                draining: true,
            },
            want: Outcome::DrainingSet,
        },
        Case {
            name: "clear a node's draining mark",
            setup: vec![Command::SetDraining {
                node: NodeId(4),
                draining: true,
            }],
            cmd: Command::SetDraining {
                node: NodeId(4),
                draining: false,
            },
            want: Outcome::DrainingSet,
        },
        Case {
            name: "move a shard from where the layout has it",
            setup: vec![striped_commit(1)],
            cmd: move_shard(1, 7, 1, at(2, 0), at(4, 1)),
            want: Outcome::ShardMoved,
        },
        Case {
            name: "move a shard rewritten in place",
            setup: vec![striped_commit(1)],
            cmd: move_shard(1, 7, 0, at(1, 0), at(1, 0)),
            want: Outcome::ShardMoved,
        },
        Case {
            name: "move a shard that is elsewhere now",
            setup: vec![striped_commit(1)],
            cmd: move_shard(1, 7, 1, at(3, 0), at(4, 1)),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "move a shard onto another shard of its stripe",
            setup: vec![striped_commit(1)],
            cmd: move_shard(1, 7, 1, at(2, 0), at(3, 0)),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "move a shard of another upload's files",
            setup: vec![striped_commit(1)],
            cmd: move_shard(1, 8, 1, at(2, 0), at(4, 1)),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "restripe a 1+1 blob to 2+1",
            setup: vec![striped_commit_as(1, layout_1_1())],
            cmd: restripe(1, 7),
            want: Outcome::BlobRestriped {
                replaced: layout_1_1(),
            },
        },
        Case {
            name: "restripe a blob whose layout belongs to another upload now",
            setup: vec![striped_commit_as(1, layout_1_1())],
            cmd: restripe(1, 8),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "restripe a blob that is gone",
            setup: vec![striped_commit_as(2, layout_1_1())],
            cmd: restripe(1, 7),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "restripe an inline blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: restripe(1, 7),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "restripe onto files named like the ones replaced",
            setup: vec![striped_commit_as(1, layout_1_1())],
            cmd: Command::RestripeBlob {
                digest: sha(1),
                from_upload: upload(7),
                layout: layout_2_1(),
            },
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "restripe to an inconsistent layout",
            setup: vec![striped_commit_as(1, layout_1_1())],
            cmd: Command::RestripeBlob {
                digest: sha(1),
                from_upload: upload(7),
                layout: striped(2, 1, 9, vec![at(1, 0), at(2, 0)]),
            },
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
        Case {
            name: "move a shard of an inline or absent blob",
            setup: vec![commit("a", 1, 1, None)],
            cmd: move_shard(1, 7, 0, at(1, 0), at(4, 1)),
            want: Outcome::Rejected(Rejection::LayoutChanged),
        },
    ];

    for case in cases {
        let db = TestDb::new();
        for cmd in &case.setup {
            assert!(
                !db.apply(cmd).is_refused(),
                "{}: setup command {cmd:?} was refused",
                case.name
            );
        }
        let before = db.view().state_digest().unwrap();
        let got = db.apply(&case.cmd);
        assert_eq!(got, case.want, "{}", case.name);
        let after = db.view().state_digest().unwrap();
        match got {
            Outcome::Rejected(_) | Outcome::NotFound | Outcome::Mounted(None) => {
                assert_eq!(before, after, "{}: a refusal changed the state", case.name)
            }
            Outcome::UploadsExpired(ref ids) if ids.is_empty() => {
                assert_eq!(
                    before, after,
                    "{}: an empty expiry changed the state",
                    case.name
                )
            }
            // A shard rewritten in place keeps its placement: the layout is unchanged.
            Outcome::ShardMoved if matches!(&case.cmd, Command::MoveShard { from, to, .. } if from == to) =>
            {
                assert_eq!(
                    before, after,
                    "{}: an in-place move changed the state",
                    case.name
                )
            }
            _ => assert_ne!(before, after, "{}: the command changed nothing", case.name),
        }
    }
}

#[test]
fn upload_sessions_are_recorded_closed_by_commit_and_expired() {
    let db = TestDb::new();
    db.apply(&create(1, "a", 10));
    // A retried create keeps the first start time, so expiry does not move.
    db.apply(&create(1, "a", 99));
    let want = UploadRecord {
        id: upload(1),
        repo: repo("a"),
        started_at_ms: 10,
    };
    assert_eq!(db.view().upload(&upload(1)).unwrap(), Some(want.clone()));
    assert_eq!(db.view().uploads().unwrap(), vec![want]);

    db.apply(&commit("a", 1, 1, Some(1)));
    let v = db.view();
    assert_eq!(v.upload(&upload(1)).unwrap(), None);
    assert!(v.blob_linked(&repo("a"), &sha(1)).unwrap());
    assert_eq!(v.blob(&sha(1)).unwrap(), Some(blob_record(1, 1)));

    db.apply(&create(2, "a", 10));
    db.apply(&Command::ExpireUploads { before_ms: 11 });
    assert!(db.view().uploads().unwrap().is_empty());
    // The expired session's index entry is gone too: expiring again finds nothing.
    assert_eq!(
        db.apply(&Command::ExpireUploads { before_ms: 100 }),
        Outcome::UploadsExpired(vec![])
    );
}

#[test]
fn deleting_a_manifest_removes_its_tags_and_referrer_entry_only() {
    let db = TestDb::new();
    db.apply(&put("a", manifest(20, None), Some("latest"), &[], &[]));
    db.apply(&put("a", manifest(20, None), Some("v1"), &[], &[]));
    db.apply(&put("a", manifest(21, None), Some("other"), &[], &[]));
    db.apply(&put("a", manifest(30, Some(20)), None, &[], &[]));
    db.apply(&put("a", manifest(20, Some(21)), None, &[], &[]));

    let v = db.view();
    assert_eq!(
        v.referrers(&repo("a"), &sha(21)).unwrap(),
        vec![ReferrerRecord::of(&manifest(20, Some(21)))]
    );
    drop(v);

    let out = db.apply(&Command::DeleteManifest {
        repo: repo("a"),
        digest: sha(20),
    });
    assert_eq!(
        out,
        Outcome::ManifestDeleted {
            untagged: vec![tag("latest"), tag("v1")]
        }
    );
    let v = db.view();
    assert_eq!(v.manifest(&repo("a"), &sha(20)).unwrap(), None);
    assert_eq!(v.tags(&repo("a"), None, 100).unwrap(), vec![tag("other")]);
    assert_eq!(v.tag(&repo("a"), &tag("other")).unwrap(), Some(sha(21)));
    assert!(v.referrers(&repo("a"), &sha(21)).unwrap().is_empty());
    // Referrers of the deleted manifest stay: a subject need not exist.
    assert_eq!(
        v.referrers(&repo("a"), &sha(20)).unwrap(),
        vec![ReferrerRecord::of(&manifest(30, Some(20)))]
    );
}

#[test]
fn re_putting_a_manifest_moves_its_referrer_entry() {
    let db = TestDb::new();
    db.apply(&put("a", manifest(30, Some(20)), None, &[], &[]));
    db.apply(&put("a", manifest(30, Some(21)), None, &[], &[]));
    let v = db.view();
    assert!(v.referrers(&repo("a"), &sha(20)).unwrap().is_empty());
    assert_eq!(v.referrers(&repo("a"), &sha(21)).unwrap().len(), 1);
    assert_eq!(
        v.manifest(&repo("a"), &sha(30)).unwrap(),
        Some(manifest(30, Some(21)))
    );
}

#[test]
fn referrers_are_sorted_by_digest_and_scoped_to_the_repository() {
    let db = TestDb::new();
    for d in [33, 31, 32] {
        db.apply(&put("a", manifest(d, Some(20)), None, &[], &[]));
    }
    db.apply(&put("b", manifest(34, Some(20)), None, &[], &[]));
    let got: Vec<Digest> = db
        .view()
        .referrers(&repo("a"), &sha(20))
        .unwrap()
        .into_iter()
        .map(|r| r.digest)
        .collect();
    let mut want = vec![sha(31), sha(32), sha(33)];
    want.sort_by_key(|d| d.to_string());
    assert_eq!(got, want);
}

#[test]
fn listings_are_lexical_paged_and_never_mix_nested_repositories() {
    let db = TestDb::new();
    for r in ["ab", "a/b", "a"] {
        db.apply(&commit(r, 1, 1, None));
    }
    for t in ["b", "a", "c", "B"] {
        db.apply(&put("a", manifest(20, None), Some(t), &[], &[]));
    }
    db.apply(&put("a/b", manifest(20, None), Some("zz"), &[], &[]));
    let v = db.view();
    assert_eq!(
        v.repositories(None, 10).unwrap(),
        vec![repo("a"), repo("a/b"), repo("ab")]
    );
    assert_eq!(v.repositories(Some("a"), 1).unwrap(), vec![repo("a/b")]);
    assert_eq!(
        v.tags(&repo("a"), None, 10).unwrap(),
        vec![tag("B"), tag("a"), tag("b"), tag("c")]
    );
    assert_eq!(
        v.tags(&repo("a"), Some("a"), 2).unwrap(),
        vec![tag("b"), tag("c")]
    );
    assert_eq!(v.tags(&repo("a"), Some("c"), 2).unwrap(), vec![]);
    assert_eq!(v.tags(&repo("a/b"), None, 10).unwrap(), vec![tag("zz")]);
}

#[test]
fn a_repository_exists_while_it_holds_a_link_manifest_or_tag() {
    let db = TestDb::new();
    let a = repo("a");
    assert!(!db.view().repository_exists(&a).unwrap());
    db.apply(&commit("a", 1, 1, None));
    db.apply(&put("a", manifest(20, None), Some("latest"), &[1], &[]));
    assert!(db.view().repository_exists(&a).unwrap());

    db.apply(&Command::UnlinkBlob {
        repo: a.clone(),
        digest: sha(1),
    });
    db.apply(&Command::DeleteTag {
        repo: a.clone(),
        tag: tag("latest"),
    });
    assert!(db.view().repository_exists(&a).unwrap());
    db.apply(&Command::DeleteManifest {
        repo: a.clone(),
        digest: sha(20),
    });
    let v = db.view();
    assert!(!v.repository_exists(&a).unwrap());
    assert!(v.repositories(None, 10).unwrap().is_empty());
    // The blob record stays for GC, which now sees it unlinked.
    assert_eq!(v.blob(&sha(1)).unwrap(), Some(blob_record(1, 1)));
    assert_eq!(v.unlinked_blobs(10).unwrap(), vec![sha(1)]);
}

fn tracked(id: u128, at_ms: u64, command: Command) -> VersionedCommand {
    VersionedCommand::Tracked {
        request: RequestId(id),
        at_ms,
        command,
    }
}

#[test]
fn a_retried_request_applies_once_and_answers_the_first_outcome() {
    let db = TestDb::new();
    db.apply(&commit("a", 1, 1, None));
    let unlink = || Command::UnlinkBlob {
        repo: repo("a"),
        digest: sha(1),
    };
    assert_eq!(
        db.apply_entry(tracked(7, 1_000, unlink())),
        Outcome::BlobUnlinked
    );
    // Relink, then retry the unlink: a second apply would unlink again.
    db.apply(&commit("a", 1, 1, None));
    let before = db.view().state_digest().unwrap();
    assert_eq!(
        db.apply_entry(tracked(7, 1_000, unlink())),
        Outcome::BlobUnlinked
    );
    assert_eq!(db.view().state_digest().unwrap(), before);
    assert!(db.view().blob_linked(&repo("a"), &sha(1)).unwrap());
    // Another id is another request.
    assert_eq!(
        db.apply_entry(tracked(8, 1_001, unlink())),
        Outcome::BlobUnlinked
    );
    assert!(!db.view().blob_linked(&repo("a"), &sha(1)).unwrap());
    // An untracked command is applied every time.
    assert_eq!(
        db.apply_entry(VersionedCommand::V1(unlink())),
        Outcome::NotFound
    );
}

#[test]
fn request_ids_are_forgotten_after_the_retention() {
    let db = TestDb::new();
    let cancel = |n| Command::CancelUpload { id: upload(n) };
    db.apply(&create(1, "a", 0));
    assert_eq!(
        db.apply_entry(tracked(1, 1_000, cancel(1))),
        Outcome::UploadCancelled
    );
    db.apply(&create(1, "a", 0));
    // Within the retention the repeat is answered from memory.
    let late = 1_000 + REQUEST_RETENTION_MS;
    db.apply_entry(tracked(2, late, cancel(99)));
    assert_eq!(
        db.apply_entry(tracked(1, 1_000, cancel(1))),
        Outcome::UploadCancelled
    );
    assert!(db.view().upload(&upload(1)).unwrap().is_some());
    // Past it, the id is forgotten and the same id applies as new.
    db.apply_entry(tracked(3, late + 1, cancel(99)));
    assert_eq!(
        db.apply_entry(tracked(1, 1_000, cancel(1))),
        Outcome::UploadCancelled
    );
    assert!(db.view().upload(&upload(1)).unwrap().is_none());
}

/// Draining marks form a set: marking twice keeps one mark, clearing one leaves the
/// others.
#[test]
fn draining_marks_are_a_set_of_nodes() {
    let db = TestDb::new();
    assert!(db.view().draining().unwrap().is_empty());
    for (node, draining) in [(4, true), (4, true), (2, true), (4, false)] {
        assert_eq!(
            db.apply(&Command::SetDraining {
                node: NodeId(node),
                draining,
            }),
            Outcome::DrainingSet
        );
    }
    assert_eq!(
        db.view()
            .draining()
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![NodeId(2)]
    );
}

/// A restripe swaps the layout and nothing else: size, creation time and links stay;
/// a shard move or a second restripe that still names the replaced upload is
/// refused, and GC hands back the new layout, whose files are the ones to delete.
#[test]
fn a_restriped_blob_keeps_its_record_and_refuses_work_on_the_replaced_layout() {
    let db = TestDb::new();
    db.apply(&striped_commit_as(1, layout_1_1()));
    let before = db.view().blob(&sha(1)).unwrap().unwrap();
    assert_eq!(
        db.apply(&restripe(1, 7)),
        Outcome::BlobRestriped {
            replaced: layout_1_1()
        }
    );
    let after = db.view().blob(&sha(1)).unwrap().unwrap();
    let berth_types::BlobLayout::Striped(now) = &after.layout else {
        panic!("the restriped layout is striped: {after:?}");
    };
    assert_eq!(now.profile, berth_types::EcProfile::new(2, 1).unwrap());
    assert_eq!(now.upload, upload(9));
    assert_eq!(
        (after.size, after.created_at_ms),
        (before.size, before.created_at_ms)
    );
    assert!(db.view().blob_linked(&repo("a"), &sha(1)).unwrap());
    assert_eq!(
        db.apply(&move_shard(1, 7, 1, at(2, 0), at(4, 0))),
        Outcome::Rejected(Rejection::LayoutChanged)
    );
    assert_eq!(
        db.apply(&restripe(1, 7)),
        Outcome::Rejected(Rejection::LayoutChanged)
    );
    db.apply(&Command::UnlinkBlob {
        repo: repo("a"),
        digest: sha(1),
    });
    assert_eq!(
        db.apply(&Command::DeleteBlobRecord { digest: sha(1) }),
        Outcome::BlobRecordDeleted(after)
    );
}

/// The projects linking a blob: one per project whatever its repositories, none for
/// an unlinked blob, and `None` once more repositories link it than may be looked at.
#[test]
fn blob_projects_names_each_linking_project_once_within_a_bound() {
    use crate::tenancy::ProjectName;
    let db = TestDb::new();
    for r in ["a", "a/b", "ab/c"] {
        db.apply(&commit(r, 1, 1, None));
    }
    db.apply(&commit("z", 2, 2, None));
    let names = |ps: &[&str]| -> std::collections::BTreeSet<ProjectName> {
        ps.iter().map(|p| p.parse().unwrap()).collect()
    };
    let v = db.view();
    assert_eq!(
        v.blob_projects(&sha(1), 3).unwrap(),
        Some(names(&["a", "ab"]))
    );
    assert_eq!(v.blob_projects(&sha(1), 2).unwrap(), None);
    assert_eq!(v.blob_projects(&sha(2), 3).unwrap(), Some(names(&["z"])));
    assert_eq!(v.blob_projects(&sha(3), 3).unwrap(), Some(names(&[])));
}
