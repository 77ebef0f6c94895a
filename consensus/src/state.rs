//! The registry state machine's apply logic: each command's effect on the registry
//! tables, as a pure function of the command and the tables inside one redb write
//! transaction. No clock, no randomness, ordered tables only, so every node computes
//! the same state from the same log. Also the shared read helpers [`crate::view`]
//! builds its queries on.

use berth_types::{Digest, NodeId, RepoName, Tag, UploadId};
use redb::{ReadableTable, Table, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::ConsensusError;
use crate::model::{
    BlobRecord, Command, ManifestRecord, Outcome, REQUEST_RETENTION_MS, ReferrerRecord, Rejection,
    TagRecord, UploadRecord, VersionedCommand,
};
use crate::tables::{self, key, prefix_range};
use crate::tenancy_state::TenancyTables;

/// A registry table opened for reading, in a read or a write transaction.
pub(crate) trait BytesRead: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> BytesRead for T {}

/// Decodes a stored cluster id.
pub(crate) fn cluster_id_of(bytes: &[u8]) -> Result<u128, ConsensusError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| ConsensusError::Malformed { table: "cluster" })?;
    Ok(u128::from_be_bytes(raw))
}

/// Reads and decodes one record.
pub(crate) fn read_record<R: DeserializeOwned>(
    table: &impl BytesRead,
    what: &'static str,
    k: &[u8],
) -> Result<Option<R>, ConsensusError> {
    table
        .get(k)?
        .map(|v| codec::decode(what, v.value()))
        .transpose()
}

pub(crate) fn contains(table: &impl BytesRead, k: &[u8]) -> Result<bool, ConsensusError> {
    Ok(table.get(k)?.is_some())
}

/// Whether any key starts with `parts` followed by `\0`.
pub(crate) fn any_with_prefix(
    table: &impl BytesRead,
    parts: &[&[u8]],
) -> Result<bool, ConsensusError> {
    let (start, end) = prefix_range(parts);
    Ok(table
        .range::<&[u8]>(start.as_slice()..end.as_slice())?
        .next()
        .transpose()?
        .is_some())
}

/// The part of a composite key after `prefix` (which includes its trailing `\0`).
pub(crate) fn key_suffix<'k>(
    k: &'k [u8],
    prefix: &[u8],
    table: &'static str,
) -> Result<&'k str, ConsensusError> {
    k.strip_prefix(prefix)
        .and_then(|s| std::str::from_utf8(s).ok())
        .ok_or(ConsensusError::Malformed { table })
}

/// The registry tables, opened for writing in one transaction. Applying a batch of log
/// entries uses one `StateTables` and one commit.
pub(crate) struct StateTables<'txn> {
    blobs: Table<'txn, &'static [u8], &'static [u8]>,
    links: Table<'txn, &'static [u8], &'static [u8]>,
    blob_links: Table<'txn, &'static [u8], &'static [u8]>,
    manifests: Table<'txn, &'static [u8], &'static [u8]>,
    tags: Table<'txn, &'static [u8], &'static [u8]>,
    referrers: Table<'txn, &'static [u8], &'static [u8]>,
    uploads: Table<'txn, &'static [u8], &'static [u8]>,
    uploads_by_start: Table<'txn, &'static [u8], &'static [u8]>,
    repos: Table<'txn, &'static [u8], &'static [u8]>,
    requests: Table<'txn, &'static [u8], &'static [u8]>,
    requests_by_time: Table<'txn, &'static [u8], &'static [u8]>,
    cluster: Table<'txn, &'static [u8], &'static [u8]>,
    tenancy: TenancyTables<'txn>,
}

/// What the state machine remembers of a tracked proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RequestRecord {
    at_ms: u64,
    outcome: Outcome,
}

/// At most this many expired request ids are forgotten per apply, so one entry's
/// apply stays short however many ids have expired; the rest go with later entries.
const REQUESTS_FORGOTTEN_PER_APPLY: usize = 64;

impl<'txn> StateTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<StateTables<'txn>, ConsensusError> {
        Ok(StateTables {
            blobs: txn.open_table(tables::BLOBS)?,
            links: txn.open_table(tables::LINKS)?,
            blob_links: txn.open_table(tables::BLOB_LINKS)?,
            manifests: txn.open_table(tables::MANIFESTS)?,
            tags: txn.open_table(tables::TAGS)?,
            referrers: txn.open_table(tables::REFERRERS)?,
            uploads: txn.open_table(tables::UPLOADS)?,
            uploads_by_start: txn.open_table(tables::UPLOADS_BY_START)?,
            repos: txn.open_table(tables::REPOS)?,
            requests: txn.open_table(tables::REQUESTS)?,
            requests_by_time: txn.open_table(tables::REQUESTS_BY_TIME)?,
            cluster: txn.open_table(tables::CLUSTER)?,
            tenancy: TenancyTables::open(txn)?,
        })
    }

    /// Applies one log entry's command. A tracked command whose request id was applied
    /// before answers the outcome recorded then and changes nothing: the same
    /// proposal, retried after its reply was lost, applies once.
    pub(crate) fn apply_entry(&mut self, cmd: VersionedCommand) -> Result<Outcome, ConsensusError> {
        let (request, cmd) = cmd.into_parts();
        let Some((id, at_ms)) = request else {
            return self.apply(&cmd);
        };
        let id_key = id.0.to_be_bytes();
        if let Some(done) = read_record::<RequestRecord>(&self.requests, "request", &id_key)? {
            return Ok(done.outcome);
        }
        let outcome = self.apply(&cmd)?;
        self.forget_requests(at_ms.saturating_sub(REQUEST_RETENTION_MS))?;
        let record = RequestRecord {
            at_ms,
            outcome: outcome.clone(),
        };
        self.requests
            .insert(&id_key[..], codec::encode(&record).as_slice())?;
        let by_time = tables::request_time_key(at_ms, id.0);
        self.requests_by_time.insert(by_time.as_slice(), &[][..])?;
        Ok(outcome)
    }

    /// Forgets (a bounded number of) request ids proposed before `before_ms`.
    fn forget_requests(&mut self, before_ms: u64) -> Result<(), ConsensusError> {
        let end = before_ms.to_be_bytes();
        let mut old = Vec::new();
        for entry in self
            .requests_by_time
            .range::<&[u8]>(..&end[..])?
            .take(REQUESTS_FORGOTTEN_PER_APPLY)
        {
            old.push(entry?.0.value().to_vec());
        }
        for k in old {
            let id = k.get(8..).ok_or(ConsensusError::Malformed {
                table: "requests_by_time",
            })?;
            self.requests.remove(id)?;
            self.requests_by_time.remove(k.as_slice())?;
        }
        Ok(())
    }

    /// Applies one command. An `Outcome::Rejected` or `Outcome::NotFound` leaves the
    /// tables untouched: every check runs before the first write.
    pub(crate) fn apply(&mut self, cmd: &Command) -> Result<Outcome, ConsensusError> {
        match cmd {
            Command::CreateUpload { id, repo, at_ms } => self.create_upload(*id, repo, *at_ms),
            Command::CancelUpload { id } => Ok(match self.remove_upload(*id)? {
                Some(_) => Outcome::UploadCancelled,
                None => Outcome::NotFound,
            }),
            Command::CommitBlob {
                repo,
                digest,
                size,
                layout,
                upload,
                at_ms,
            } => self.commit_blob(repo, digest, *size, layout, *upload, *at_ms),
            Command::MountBlob { repo, from, digest } => self.mount_blob(repo, from, digest),
            Command::PutManifest {
                repo,
                record,
                tag,
                blobs,
                manifests,
            } => self.put_manifest(repo, record, tag.as_ref(), blobs, manifests),
            Command::DeleteManifest { repo, digest } => self.delete_manifest(repo, digest),
            Command::DeleteTag { repo, tag } => {
                let k = key(&[repo.as_str().as_bytes(), tag.as_str().as_bytes()]);
                if self.tags.remove(k.as_slice())?.is_none() {
                    return Ok(Outcome::NotFound);
                }
                self.release_repo(repo)?;
                Ok(Outcome::TagDeleted)
            }
            Command::UnlinkBlob { repo, digest } => self.unlink_blob(repo, digest),
            Command::ExpireUploads { before_ms } => self.expire_uploads(*before_ms),
            Command::DeleteBlobRecord { digest } => self.delete_blob_record(digest),
            Command::SetClusterId { id } => {
                if let Some(known) = self.cluster.get(tables::CLUSTER_ID)? {
                    return Ok(Outcome::ClusterId(cluster_id_of(known.value())?));
                }
                self.cluster
                    .insert(tables::CLUSTER_ID, &id.to_be_bytes()[..])?;
                Ok(Outcome::ClusterId(*id))
            }
            Command::Tenancy(t) => Ok(Outcome::Tenancy(self.tenancy.apply(t, &self.repos)?)),
            Command::MoveShard {
                digest,
                upload,
                index,
                from,
                to,
            } => self.move_shard(digest, *upload, usize::from(*index), *from, *to),
            Command::SetDraining { node, draining } => {
                let mut nodes: std::collections::BTreeSet<NodeId> =
                    read_record(&self.cluster, "draining nodes", tables::DRAINING)?
                        .unwrap_or_default();
                let changed = if *draining {
                    nodes.insert(*node)
                } else {
                    nodes.remove(node)
                };
                if changed {
                    self.cluster
                        .insert(tables::DRAINING, codec::encode(&nodes).as_slice())?;
                }
                Ok(Outcome::DrainingSet)
            }
            Command::RestripeBlob {
                digest,
                from_upload,
                layout,
            } => self.restripe_blob(digest, *from_upload, layout),
        }
    }

    fn restripe_blob(
        &mut self,
        digest: &Digest,
        from_upload: UploadId,
        layout: &berth_types::StripedLayout,
    ) -> Result<Outcome, ConsensusError> {
        self.change_layout(digest, |current| {
            // The new files must not share names with the ones they replace: those are
            // deleted once this applies.
            if current.upload != from_upload || layout.upload == from_upload || !layout.is_valid() {
                return None;
            }
            let replaced = std::mem::replace(current, layout.clone());
            Some(Outcome::BlobRestriped { replaced })
        })
    }

    fn move_shard(
        &mut self,
        digest: &Digest,
        upload: UploadId,
        index: usize,
        from: berth_types::ShardPlacement,
        to: berth_types::ShardPlacement,
    ) -> Result<Outcome, ConsensusError> {
        self.change_layout(digest, |layout| {
            let others_hold_to = layout
                .shards
                .iter()
                .enumerate()
                .any(|(i, p)| i != index && *p == to);
            if layout.upload != upload || layout.shards.get(index) != Some(&from) || others_hold_to
            {
                return None;
            }
            layout.shards[index] = to;
            Some(Outcome::ShardMoved)
        })
    }

    /// Applies `change` to the striped layout of blob `digest` and stores the record
    /// when `change` answers; a missing blob, an inline one, or `None` from `change`
    /// (the layout is not the one the command was made for) is `LayoutChanged`.
    fn change_layout(
        &mut self,
        digest: &Digest,
        change: impl FnOnce(&mut berth_types::StripedLayout) -> Option<Outcome>,
    ) -> Result<Outcome, ConsensusError> {
        let digest_key = digest.to_string();
        let Some(mut record) =
            read_record::<BlobRecord>(&self.blobs, "blob record", digest_key.as_bytes())?
        else {
            return Ok(Outcome::Rejected(Rejection::LayoutChanged));
        };
        let berth_types::BlobLayout::Striped(layout) = &mut record.layout else {
            return Ok(Outcome::Rejected(Rejection::LayoutChanged));
        };
        let Some(outcome) = change(layout) else {
            return Ok(Outcome::Rejected(Rejection::LayoutChanged));
        };
        self.blobs
            .insert(digest_key.as_bytes(), codec::encode(&record).as_slice())?;
        Ok(outcome)
    }

    fn create_upload(
        &mut self,
        id: UploadId,
        repo: &RepoName,
        at_ms: u64,
    ) -> Result<Outcome, ConsensusError> {
        let id_key = id.to_string();
        // A retried proposal of the same session keeps the first record, so its start
        // time (and thus its expiry) does not move.
        if !contains(&self.uploads, id_key.as_bytes())? {
            let record = UploadRecord {
                id,
                repo: repo.clone(),
                started_at_ms: at_ms,
            };
            self.uploads
                .insert(id_key.as_bytes(), codec::encode(&record).as_slice())?;
            let by_start = tables::upload_start_key(at_ms, id_key.as_bytes());
            self.uploads_by_start.insert(by_start.as_slice(), &[][..])?;
        }
        Ok(Outcome::UploadCreated)
    }

    fn remove_upload(&mut self, id: UploadId) -> Result<Option<UploadRecord>, ConsensusError> {
        let id_key = id.to_string();
        let Some(bytes) = self.uploads.remove(id_key.as_bytes())? else {
            return Ok(None);
        };
        let record: UploadRecord = codec::decode("upload record", bytes.value())?;
        drop(bytes);
        let by_start = tables::upload_start_key(record.started_at_ms, id_key.as_bytes());
        self.uploads_by_start.remove(by_start.as_slice())?;
        Ok(Some(record))
    }

    fn commit_blob(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        layout: &berth_types::BlobLayout,
        upload: Option<UploadId>,
        at_ms: u64,
    ) -> Result<Outcome, ConsensusError> {
        let digest_key = digest.to_string();
        let existing: Option<BlobRecord> =
            read_record(&self.blobs, "blob record", digest_key.as_bytes())?;
        if let Some(id) = upload {
            let had_session = self.remove_upload(id)?.is_some();
            // Without its session the upload's shard files may already be swept; only
            // an existing record (whose shards are someone else's) is safe to link.
            if !had_session && existing.is_none() {
                return Ok(Outcome::Rejected(Rejection::UploadUnknown(id)));
            }
        }
        let (existing, kept) = match existing {
            Some(record) => (true, record.layout),
            None => {
                let record = BlobRecord {
                    digest: digest.clone(),
                    size,
                    layout: layout.clone(),
                    created_at_ms: at_ms,
                };
                self.blobs
                    .insert(digest_key.as_bytes(), codec::encode(&record).as_slice())?;
                (false, record.layout)
            }
        };
        self.link(repo, digest)?;
        Ok(Outcome::BlobCommitted {
            existing,
            layout: kept,
        })
    }

    fn mount_blob(
        &mut self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Outcome, ConsensusError> {
        let digest_key = digest.to_string();
        let from_link = key(&[from.as_str().as_bytes(), digest_key.as_bytes()]);
        if !contains(&self.links, &from_link)? {
            return Ok(Outcome::Mounted(None));
        }
        let Some(blob) =
            read_record::<BlobRecord>(&self.blobs, "blob record", digest_key.as_bytes())?
        else {
            return Ok(Outcome::Mounted(None));
        };
        self.link(repo, digest)?;
        Ok(Outcome::Mounted(Some(blob)))
    }

    fn put_manifest(
        &mut self,
        repo: &RepoName,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        blobs: &[Digest],
        manifests: &[Digest],
    ) -> Result<Outcome, ConsensusError> {
        let repo_b = repo.as_str().as_bytes();
        for d in blobs {
            if !contains(&self.links, &key(&[repo_b, d.to_string().as_bytes()]))? {
                return Ok(Outcome::Rejected(Rejection::BlobUnknown(d.clone())));
            }
        }
        for d in manifests {
            if !contains(&self.manifests, &key(&[repo_b, d.to_string().as_bytes()]))? {
                return Ok(Outcome::Rejected(Rejection::ManifestUnknown(d.clone())));
            }
        }

        let digest_s = record.digest.to_string();
        let manifest_key = key(&[repo_b, digest_s.as_bytes()]);
        let previous: Option<ManifestRecord> =
            read_record(&self.manifests, "manifest record", &manifest_key)?;
        match previous {
            // A re-put replaces the record; its old subject's index entry goes with it.
            Some(old) => {
                if let Some(subject) = old.subject {
                    self.referrers.remove(
                        key(&[repo_b, subject.to_string().as_bytes(), digest_s.as_bytes()])
                            .as_slice(),
                    )?;
                }
            }
            None => self.hold_repo(repo)?,
        }
        self.manifests
            .insert(manifest_key.as_slice(), codec::encode(record).as_slice())?;

        if let Some(tag) = tag {
            let tag_key = key(&[repo_b, tag.as_str().as_bytes()]);
            let tag_record = TagRecord {
                digest: record.digest.clone(),
                pushed_at_ms: record.pushed_at_ms,
            };
            let replaced = self
                .tags
                .insert(tag_key.as_slice(), codec::encode(&tag_record).as_slice())?
                .is_some();
            if !replaced {
                self.hold_repo(repo)?;
            }
        }

        if let Some(subject) = &record.subject {
            let referrer_key = key(&[repo_b, subject.to_string().as_bytes(), digest_s.as_bytes()]);
            self.referrers.insert(
                referrer_key.as_slice(),
                codec::encode(&ReferrerRecord::of(record)).as_slice(),
            )?;
        }
        Ok(Outcome::ManifestPut)
    }

    fn delete_manifest(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Outcome, ConsensusError> {
        let repo_b = repo.as_str().as_bytes();
        let digest_s = digest.to_string();
        let Some(bytes) = self
            .manifests
            .remove(key(&[repo_b, digest_s.as_bytes()]).as_slice())?
        else {
            return Ok(Outcome::NotFound);
        };
        let record: ManifestRecord = codec::decode("manifest record", bytes.value())?;
        drop(bytes);
        self.release_repo(repo)?;
        if let Some(subject) = &record.subject {
            self.referrers.remove(
                key(&[repo_b, subject.to_string().as_bytes(), digest_s.as_bytes()]).as_slice(),
            )?;
        }

        let (start, end) = prefix_range(&[repo_b]);
        let mut doomed = Vec::new();
        for entry in self.tags.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            let (k, v) = entry?;
            let tag: TagRecord = codec::decode("tag record", v.value())?;
            if tag.digest == *digest {
                doomed.push(k.value().to_vec());
            }
        }
        let mut untagged = Vec::with_capacity(doomed.len());
        for k in doomed {
            let name = key_suffix(&k, &start, "tags")?;
            untagged.push(
                name.parse::<Tag>()
                    .map_err(|_| ConsensusError::Malformed { table: "tags" })?,
            );
            self.tags.remove(k.as_slice())?;
            self.release_repo(repo)?;
        }
        Ok(Outcome::ManifestDeleted { untagged })
    }

    fn unlink_blob(&mut self, repo: &RepoName, digest: &Digest) -> Result<Outcome, ConsensusError> {
        let repo_b = repo.as_str().as_bytes();
        let digest_s = digest.to_string();
        if self
            .links
            .remove(key(&[repo_b, digest_s.as_bytes()]).as_slice())?
            .is_none()
        {
            return Ok(Outcome::NotFound);
        }
        self.blob_links
            .remove(key(&[digest_s.as_bytes(), repo_b]).as_slice())?;
        self.release_repo(repo)?;
        Ok(Outcome::BlobUnlinked)
    }

    fn expire_uploads(&mut self, before_ms: u64) -> Result<Outcome, ConsensusError> {
        let end = before_ms.to_be_bytes();
        let mut expired = Vec::new();
        for entry in self.uploads_by_start.range::<&[u8]>(..&end[..])? {
            let (k, _) = entry?;
            expired.push(k.value().to_vec());
        }
        let mut ids = Vec::with_capacity(expired.len());
        for k in expired {
            let id_s = k.get(8..).and_then(|s| std::str::from_utf8(s).ok()).ok_or(
                ConsensusError::Malformed {
                    table: "uploads_by_start",
                },
            )?;
            let id: UploadId = id_s.parse().map_err(|_| ConsensusError::Malformed {
                table: "uploads_by_start",
            })?;
            self.uploads.remove(id_s.as_bytes())?;
            self.uploads_by_start.remove(k.as_slice())?;
            ids.push(id);
        }
        Ok(Outcome::UploadsExpired(ids))
    }

    fn delete_blob_record(&mut self, digest: &Digest) -> Result<Outcome, ConsensusError> {
        let digest_s = digest.to_string();
        let Some(record) =
            read_record::<BlobRecord>(&self.blobs, "blob record", digest_s.as_bytes())?
        else {
            return Ok(Outcome::NotFound);
        };
        if any_with_prefix(&self.blob_links, &[digest_s.as_bytes()])? {
            return Ok(Outcome::Rejected(Rejection::StillLinked));
        }
        self.blobs.remove(digest_s.as_bytes())?;
        Ok(Outcome::BlobRecordDeleted(record))
    }

    fn link(&mut self, repo: &RepoName, digest: &Digest) -> Result<(), ConsensusError> {
        let repo_b = repo.as_str().as_bytes();
        let digest_s = digest.to_string();
        let link_key = key(&[repo_b, digest_s.as_bytes()]);
        if self.links.insert(link_key.as_slice(), &[][..])?.is_none() {
            self.blob_links
                .insert(key(&[digest_s.as_bytes(), repo_b]).as_slice(), &[][..])?;
            self.hold_repo(repo)?;
        }
        Ok(())
    }

    /// Counts one more link, manifest or tag held by `repo`.
    fn hold_repo(&mut self, repo: &RepoName) -> Result<(), ConsensusError> {
        let k = repo.as_str().as_bytes();
        let n = self.repo_count(k)? + 1;
        self.repos.insert(k, &n.to_be_bytes()[..])?;
        Ok(())
    }

    /// Counts one fewer; the repository stops existing at zero.
    fn release_repo(&mut self, repo: &RepoName) -> Result<(), ConsensusError> {
        let k = repo.as_str().as_bytes();
        match self.repo_count(k)? {
            0 | 1 => {
                self.repos.remove(k)?;
            }
            n => {
                self.repos.insert(k, &(n - 1).to_be_bytes()[..])?;
            }
        }
        Ok(())
    }

    fn repo_count(&self, k: &[u8]) -> Result<u64, ConsensusError> {
        match self.repos.get(k)? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| ConsensusError::Malformed { table: "repos" })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }
}
