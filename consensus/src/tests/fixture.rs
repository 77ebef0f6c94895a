//! Format version 1 stays readable: bytes written by this version are checked in under
//! `fixtures/`, and every later build must decode them to the same values. Encoding
//! the same values must still give the same bytes, so a change to a V1 type (instead of
//! a new version) fails here.

use std::collections::{BTreeMap, BTreeSet};

use berth_types::{BlobLayout, CodecId, DiskId, EcProfile, NodeId, ShardPlacement, StripedLayout};
use openraft::entry::RaftEntry;
use openraft::vote::RaftLeaderIdExt;
use openraft::{Membership, RaftTypeConfig};

use super::{inline, repo, sha, tag, upload};
use crate::codec;
use crate::model::{
    BlobRecord, CommandV1, ManifestRecord, ReferrerRecord, TagRecord, UploadRecord,
    VersionedCommand,
};
use crate::type_config::{Entry, LogId, Peer, TypeConfig};

const COMMANDS_V1: &[u8] = include_bytes!("fixtures/commands_v1.bin");
const RECORDS_V1: &[u8] = include_bytes!("fixtures/records_v1.bin");
const LOG_ENTRIES_V1: &[u8] = include_bytes!("fixtures/log_entries_v1.bin");

fn striped() -> BlobLayout {
    BlobLayout::Striped(StripedLayout {
        codec: CodecId::ReedSolomonV1,
        profile: EcProfile::new(2, 1).unwrap(),
        shard_bytes: 1024 * 1024,
        upload: upload(9),
        shards: (0..3)
            .map(|i| ShardPlacement {
                node: NodeId(i),
                disk: DiskId(i as u32),
            })
            .collect(),
    })
}

fn manifest() -> ManifestRecord {
    ManifestRecord {
        digest: sha(20),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: b"{\"schemaVersion\":2}".to_vec(),
        subject: Some(sha(21)),
        artifact_type: Some("application/vnd.example.sbom".into()),
        annotations: BTreeMap::from([("org.opencontainers.image.created".into(), "2025".into())]),
        pushed_at_ms: 1_700_000_000_000,
    }
}

fn commands() -> Vec<VersionedCommand> {
    [
        CommandV1::CreateUpload {
            id: upload(1),
            repo: repo("team/app"),
            at_ms: 10,
        },
        CommandV1::CancelUpload { id: upload(1) },
        CommandV1::CommitBlob {
            repo: repo("team/app"),
            digest: sha(1),
            size: 5_000_000,
            layout: striped(),
            upload: Some(upload(9)),
            at_ms: 11,
        },
        CommandV1::CommitBlob {
            repo: repo("team/app"),
            digest: sha(2),
            size: 3,
            layout: inline(2),
            upload: None,
            at_ms: 12,
        },
        CommandV1::MountBlob {
            repo: repo("team/other"),
            from: repo("team/app"),
            digest: sha(1),
        },
        CommandV1::PutManifest {
            repo: repo("team/app"),
            record: manifest(),
            tag: Some(tag("v1.0")),
            blobs: vec![sha(1), sha(2)],
            manifests: vec![sha(21)],
        },
        CommandV1::DeleteManifest {
            repo: repo("team/app"),
            digest: sha(20),
        },
        CommandV1::DeleteTag {
            repo: repo("team/app"),
            tag: tag("v1.0"),
        },
        CommandV1::UnlinkBlob {
            repo: repo("team/app"),
            digest: sha(1),
        },
        CommandV1::ExpireUploads { before_ms: 99 },
        CommandV1::DeleteBlobRecord { digest: sha(1) },
    ]
    .into_iter()
    .map(VersionedCommand::V1)
    .collect()
}

/// Each record as stored in its table, in a fixed order.
fn records() -> Vec<Vec<u8>> {
    vec![
        codec::encode(&manifest()),
        codec::encode(&BlobRecord {
            digest: sha(1),
            size: 5_000_000,
            layout: striped(),
            created_at_ms: 11,
        }),
        codec::encode(&BlobRecord {
            digest: sha(2),
            size: 3,
            layout: inline(2),
            created_at_ms: 12,
        }),
        codec::encode(&UploadRecord {
            id: upload(1),
            repo: repo("team/app"),
            started_at_ms: 10,
        }),
        codec::encode(&TagRecord {
            digest: sha(20),
            pushed_at_ms: 13,
        }),
        codec::encode(&ReferrerRecord::of(&manifest())),
    ]
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, node),
        index,
    )
}

/// Raft log entries as stored in the log table: a command, a membership, a blank.
fn log_entries() -> Vec<Vec<u8>> {
    let membership = Membership::new(
        vec![BTreeSet::from([7])],
        BTreeMap::from([(
            7,
            Peer {
                addr: "10.0.0.7:7000".into(),
            },
        )]),
    )
    .unwrap();
    vec![
        codec::encode(&Entry::new_normal(log_id(3, 7, 42), commands()[5].clone())),
        codec::encode(&Entry::new_membership(log_id(3, 7, 43), membership)),
        codec::encode(&Entry::new_blank(log_id(4, 7, 44))),
    ]
}

#[test]
fn version_1_bytes_still_decode() {
    let got: Vec<VersionedCommand> = postcard::from_bytes(COMMANDS_V1).unwrap();
    assert_eq!(got, commands());
    assert_eq!(postcard::to_stdvec(&commands()).unwrap(), COMMANDS_V1);

    let stored: Vec<Vec<u8>> = postcard::from_bytes(RECORDS_V1).unwrap();
    assert_eq!(stored, records());
    assert_eq!(
        codec::decode::<ManifestRecord>("m", &stored[0]).unwrap(),
        manifest()
    );
    assert_eq!(
        codec::decode::<BlobRecord>("b", &stored[1]).unwrap().layout,
        striped()
    );
    assert_eq!(
        codec::decode::<BlobRecord>("b", &stored[2]).unwrap().size,
        3
    );
    assert_eq!(
        codec::decode::<UploadRecord>("u", &stored[3]).unwrap().id,
        upload(1)
    );
    assert_eq!(
        codec::decode::<TagRecord>("t", &stored[4]).unwrap().digest,
        sha(20)
    );
    assert_eq!(
        codec::decode::<ReferrerRecord>("r", &stored[5]).unwrap(),
        ReferrerRecord::of(&manifest())
    );

    let entries: Vec<Vec<u8>> = postcard::from_bytes(LOG_ENTRIES_V1).unwrap();
    assert_eq!(entries, log_entries());
    let first: Entry = codec::decode("entry", &entries[0]).unwrap();
    assert_eq!(first.log_id, log_id(3, 7, 42));
    assert_eq!(
        first.payload,
        openraft::EntryPayload::Normal(commands()[5].clone())
    );
    let second: Entry = codec::decode("entry", &entries[1]).unwrap();
    assert_eq!(
        second.get_membership().unwrap().get_node(&7),
        Some(&Peer {
            addr: "10.0.0.7:7000".into()
        })
    );
}
