//! Random command sequences applied to the redb state machine and to a plain BTreeMap
//! model give the same outcomes and the same answers to every query.

use std::collections::{BTreeMap, BTreeSet};

use berth_types::{Digest, RepoName, Tag};
use proptest::prelude::*;

use super::{TestDb, inline, repo, sha, tag, upload};
use crate::model::{
    BlobRecord, Command, ManifestRecord, Outcome, ReferrerRecord, Rejection, TagRecord,
    UploadRecord,
};

const REPOS: [&str; 3] = ["a", "a/b", "ab"];
const TAGS: [&str; 3] = ["latest", "v1", "V2"];
const DIGESTS: u8 = 5;
const UPLOADS: u128 = 4;

/// The registry as ordered maps keyed the way a reader thinks of it.
#[derive(Default)]
struct Model {
    blobs: BTreeMap<String, BlobRecord>,
    links: BTreeSet<(String, String)>,
    manifests: BTreeMap<(String, String), ManifestRecord>,
    tags: BTreeMap<(String, String), TagRecord>,
    uploads: BTreeMap<String, UploadRecord>,
    cluster_id: Option<u128>,
}

impl Model {
    fn linked(&self, r: &RepoName, d: &Digest) -> bool {
        self.links.contains(&(r.to_string(), d.to_string()))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd.clone() {
            Command::Tenancy(_) => unreachable!("the registry model generates no tenancy commands"),
            Command::MoveShard { .. }
            | Command::SetDraining { .. }
            | Command::RestripeBlob { .. } => {
                unreachable!(
                    "the registry model generates inline blobs only; shard moves, drain marks and restripes are table-tested"
                )
            }
            Command::CreateUpload { id, repo, at_ms } => {
                self.uploads.entry(id.to_string()).or_insert(UploadRecord {
                    id,
                    repo,
                    started_at_ms: at_ms,
                });
                Outcome::UploadCreated
            }
            Command::CancelUpload { id } => match self.uploads.remove(&id.to_string()) {
                Some(_) => Outcome::UploadCancelled,
                None => Outcome::NotFound,
            },
            Command::CommitBlob {
                repo,
                digest,
                size,
                layout,
                upload,
                at_ms,
            } => {
                let existing = self.blobs.get(&digest.to_string()).cloned();
                if let Some(id) = upload
                    && self.uploads.remove(&id.to_string()).is_none()
                    && existing.is_none()
                {
                    return Outcome::Rejected(Rejection::UploadUnknown(id));
                }
                let kept = match existing {
                    Some(b) => (true, b.layout),
                    None => {
                        self.blobs.insert(
                            digest.to_string(),
                            BlobRecord {
                                digest: digest.clone(),
                                size,
                                layout: layout.clone(),
                                created_at_ms: at_ms,
                            },
                        );
                        (false, layout)
                    }
                };
                self.links.insert((repo.to_string(), digest.to_string()));
                Outcome::BlobCommitted {
                    existing: kept.0,
                    layout: kept.1,
                }
            }
            Command::MountBlob { repo, from, digest } => {
                match self.blobs.get(&digest.to_string()).cloned() {
                    Some(b) if self.linked(&from, &digest) => {
                        self.links.insert((repo.to_string(), digest.to_string()));
                        Outcome::Mounted(Some(b))
                    }
                    _ => Outcome::Mounted(None),
                }
            }
            Command::PutManifest {
                repo,
                record,
                tag,
                blobs,
                manifests,
            } => {
                if let Some(d) = blobs.iter().find(|d| !self.linked(&repo, d)) {
                    return Outcome::Rejected(Rejection::BlobUnknown(d.clone()));
                }
                if let Some(d) = manifests.iter().find(|d| {
                    !self
                        .manifests
                        .contains_key(&(repo.to_string(), d.to_string()))
                }) {
                    return Outcome::Rejected(Rejection::ManifestUnknown(d.clone()));
                }
                if let Some(t) = tag {
                    self.tags.insert(
                        (repo.to_string(), t.to_string()),
                        TagRecord {
                            digest: record.digest.clone(),
                            pushed_at_ms: record.pushed_at_ms,
                        },
                    );
                }
                self.manifests
                    .insert((repo.to_string(), record.digest.to_string()), record);
                Outcome::ManifestPut
            }
            Command::DeleteManifest { repo, digest } => {
                if self
                    .manifests
                    .remove(&(repo.to_string(), digest.to_string()))
                    .is_none()
                {
                    return Outcome::NotFound;
                }
                let doomed: Vec<(String, String)> = self
                    .tags
                    .iter()
                    .filter(|((r, _), t)| *r == repo.to_string() && t.digest == digest)
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut untagged = Vec::new();
                for k in doomed {
                    self.tags.remove(&k);
                    untagged.push(k.1.parse().unwrap());
                }
                Outcome::ManifestDeleted { untagged }
            }
            Command::DeleteTag { repo, tag } => {
                match self.tags.remove(&(repo.to_string(), tag.to_string())) {
                    Some(_) => Outcome::TagDeleted,
                    None => Outcome::NotFound,
                }
            }
            Command::UnlinkBlob { repo, digest } => {
                if self.links.remove(&(repo.to_string(), digest.to_string())) {
                    Outcome::BlobUnlinked
                } else {
                    Outcome::NotFound
                }
            }
            Command::ExpireUploads { before_ms } => {
                let mut expired: Vec<(u64, String)> = self
                    .uploads
                    .iter()
                    .filter(|(_, u)| u.started_at_ms < before_ms)
                    .map(|(k, u)| (u.started_at_ms, k.clone()))
                    .collect();
                expired.sort();
                let ids = expired
                    .into_iter()
                    .map(|(_, k)| self.uploads.remove(&k).unwrap().id)
                    .collect();
                Outcome::UploadsExpired(ids)
            }
            Command::DeleteBlobRecord { digest } => {
                let d = digest.to_string();
                if !self.blobs.contains_key(&d) {
                    Outcome::NotFound
                } else if self.links.iter().any(|(_, l)| *l == d) {
                    Outcome::Rejected(Rejection::StillLinked)
                } else {
                    Outcome::BlobRecordDeleted(self.blobs.remove(&d).unwrap())
                }
            }
            Command::SetClusterId { id } => Outcome::ClusterId(*self.cluster_id.get_or_insert(id)),
        }
    }

    fn repositories(&self) -> Vec<RepoName> {
        let mut names: BTreeSet<String> = self.links.iter().map(|(r, _)| r.clone()).collect();
        names.extend(self.manifests.keys().map(|(r, _)| r.clone()));
        names.extend(self.tags.keys().map(|(r, _)| r.clone()));
        names.into_iter().map(|r| r.parse().unwrap()).collect()
    }

    fn tags_of(&self, r: &RepoName) -> Vec<Tag> {
        self.tags
            .keys()
            .filter(|(k, _)| k == r.as_str())
            .map(|(_, t)| t.parse().unwrap())
            .collect()
    }

    fn referrers(&self, r: &RepoName, subject: &Digest) -> Vec<ReferrerRecord> {
        self.manifests
            .iter()
            .filter(|((k, _), m)| k == r.as_str() && m.subject.as_ref() == Some(subject))
            .map(|(_, m)| ReferrerRecord::of(m))
            .collect()
    }

    fn unlinked_blobs(&self) -> Vec<Digest> {
        self.blobs
            .iter()
            .filter(|(d, _)| !self.links.iter().any(|(_, l)| l == *d))
            .map(|(_, b)| b.digest.clone())
            .collect()
    }
}

fn check_queries(db: &TestDb, model: &Model) {
    let v = db.view();
    let digests: Vec<Digest> = (0..DIGESTS).map(sha).collect();
    assert_eq!(v.repositories(None, 100).unwrap(), model.repositories());
    assert_eq!(
        v.uploads().unwrap(),
        model.uploads.values().cloned().collect::<Vec<_>>()
    );
    assert_eq!(v.unlinked_blobs(100).unwrap(), model.unlinked_blobs());
    for d in &digests {
        assert_eq!(v.blob(d).unwrap().as_ref(), model.blobs.get(&d.to_string()));
    }
    for r in REPOS.map(repo) {
        let exists = model.repositories().contains(&r);
        assert_eq!(v.repository_exists(&r).unwrap(), exists, "{r}");
        assert_eq!(v.tags(&r, None, 100).unwrap(), model.tags_of(&r), "{r}");
        for t in TAGS.map(tag) {
            let want = model
                .tags
                .get(&(r.to_string(), t.to_string()))
                .map(|t| t.digest.clone());
            assert_eq!(v.tag(&r, &t).unwrap(), want, "{r}:{t}");
        }
        for d in &digests {
            let key = (r.to_string(), d.to_string());
            assert_eq!(
                v.manifest(&r, d).unwrap().as_ref(),
                model.manifests.get(&key)
            );
            assert_eq!(v.blob_linked(&r, d).unwrap(), model.links.contains(&key));
            assert_eq!(v.referrers(&r, d).unwrap(), model.referrers(&r, d));
        }
    }
}

fn digest_strategy() -> impl Strategy<Value = Digest> {
    (0..DIGESTS).prop_map(sha)
}

fn repo_strategy() -> impl Strategy<Value = RepoName> {
    proptest::sample::select(REPOS.to_vec()).prop_map(repo)
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let upload_id = (0..UPLOADS).prop_map(upload);
    let manifest = (
        digest_strategy(),
        proptest::option::of(digest_strategy()),
        0..3u64,
    )
        .prop_map(|(digest, subject, at)| ManifestRecord {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            bytes: digest.to_string().into_bytes(),
            digest,
            subject,
            artifact_type: None,
            annotations: BTreeMap::new(),
            pushed_at_ms: at,
        });
    prop_oneof![
        (upload_id.clone(), repo_strategy(), 0..20u64)
            .prop_map(|(id, repo, at_ms)| Command::CreateUpload { id, repo, at_ms }),
        upload_id
            .clone()
            .prop_map(|id| Command::CancelUpload { id }),
        (
            repo_strategy(),
            digest_strategy(),
            0..3u8,
            proptest::option::of(upload_id),
            0..20u64
        )
            .prop_map(|(repo, digest, l, upload, at_ms)| Command::CommitBlob {
                repo,
                digest,
                size: 3,
                layout: inline(l),
                upload,
                at_ms,
            }),
        (repo_strategy(), repo_strategy(), digest_strategy())
            .prop_map(|(repo, from, digest)| Command::MountBlob { repo, from, digest }),
        (
            repo_strategy(),
            manifest,
            proptest::option::of(proptest::sample::select(TAGS.to_vec()).prop_map(tag)),
            proptest::collection::vec(digest_strategy(), 0..3),
            proptest::collection::vec(digest_strategy(), 0..2),
        )
            .prop_map(
                |(repo, record, tag, blobs, manifests)| Command::PutManifest {
                    repo,
                    record,
                    tag,
                    blobs,
                    manifests,
                }
            ),
        (repo_strategy(), digest_strategy())
            .prop_map(|(repo, digest)| Command::DeleteManifest { repo, digest }),
        (
            repo_strategy(),
            proptest::sample::select(TAGS.to_vec()).prop_map(tag)
        )
            .prop_map(|(repo, tag)| Command::DeleteTag { repo, tag }),
        (repo_strategy(), digest_strategy())
            .prop_map(|(repo, digest)| Command::UnlinkBlob { repo, digest }),
        (0..25u64).prop_map(|before_ms| Command::ExpireUploads { before_ms }),
        digest_strategy().prop_map(|digest| Command::DeleteBlobRecord { digest }),
        (1u128..4).prop_map(|id| Command::SetClusterId { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn state_machine_matches_btreemap_model(cmds in proptest::collection::vec(command_strategy(), 1..60)) {
        let db = TestDb::new();
        let mut model = Model::default();
        for (i, cmd) in cmds.iter().enumerate() {
            let want = model.apply(cmd);
            let got = db.apply(cmd);
            prop_assert_eq!(&got, &want, "step {} {:?}", i, cmd);
            if i % 8 == 0 {
                check_queries(&db, &model);
            }
        }
        check_queries(&db, &model);
    }
}
