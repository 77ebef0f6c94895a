//! The public handle end to end: a single voter elects itself, applies proposals,
//! serves linearizable reads, shuts down idempotently, and after a restart on the same
//! directory has everything and accepts new proposals.

use std::collections::BTreeMap;

use berth_types::NodeId;

use super::{inline, repo, sha, tag, upload};
use crate::error::ConsensusError;
use crate::handle::Metadata;
use crate::model::{Command, ManifestRecord, Outcome};

fn manifest() -> ManifestRecord {
    ManifestRecord {
        digest: sha(20),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: b"{\"schemaVersion\":2}".to_vec(),
        subject: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
        pushed_at_ms: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_new_proposals_work() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeId(7);

    let meta = Metadata::open_single(dir.path(), node).await.unwrap();
    let status = meta.status();
    assert!(status.is_leader, "{status:?}");
    assert_eq!(status.leader, Some(node));

    let steps = [
        (
            Command::CreateUpload {
                id: upload(1),
                repo: repo("team/app"),
                at_ms: 1,
            },
            Outcome::UploadCreated,
        ),
        (
            Command::CommitBlob {
                repo: repo("team/app"),
                digest: sha(1),
                size: 3,
                layout: inline(1),
                upload: Some(upload(1)),
                at_ms: 2,
            },
            Outcome::BlobCommitted {
                existing: false,
                layout: inline(1),
            },
        ),
        (
            Command::PutManifest {
                repo: repo("team/app"),
                record: manifest(),
                tag: Some(tag("latest")),
                blobs: vec![sha(1)],
                manifests: vec![],
            },
            Outcome::ManifestPut,
        ),
        (
            Command::CreateUpload {
                id: upload(2),
                repo: repo("team/app"),
                at_ms: 4,
            },
            Outcome::UploadCreated,
        ),
    ];
    for (cmd, want) in steps {
        assert_eq!(meta.propose(cmd).await.unwrap(), want);
    }
    let before = meta.read(|v| v.state_digest()).await.unwrap();
    let applied = meta.status().last_applied;

    meta.shutdown().await.unwrap();
    meta.shutdown().await.unwrap();
    assert!(matches!(
        meta.propose(Command::ExpireUploads { before_ms: 0 }).await,
        Err(ConsensusError::ShuttingDown)
    ));
    assert!(matches!(
        meta.read(|v| v.uploads()).await,
        Err(ConsensusError::ShuttingDown)
    ));
    drop(meta);

    let meta = Metadata::open_single(dir.path(), node).await.unwrap();
    let (after, tagged, uploads) = meta
        .read(|v| {
            Ok((
                v.state_digest()?,
                v.tag(&repo("team/app"), &tag("latest"))?,
                v.uploads()?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(tagged, Some(sha(20)));
    assert_eq!(uploads.len(), 1);
    assert!(meta.status().last_applied >= applied);

    assert_eq!(
        meta.propose(Command::DeleteTag {
            repo: repo("team/app"),
            tag: tag("latest"),
        })
        .await
        .unwrap(),
        Outcome::TagDeleted
    );
    assert_eq!(
        meta.read(|v| v.tag(&repo("team/app"), &tag("latest")))
            .await
            .unwrap(),
        None
    );
    meta.shutdown().await.unwrap();
}
