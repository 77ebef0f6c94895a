//! [`StateView`]: the registry queries, answered from one consistent redb read
//! transaction of the state machine.

use std::ops::Bound;

use berth_types::limits::{LIST_PAGE_ENTRIES_MAX, REFERRERS_ENTRIES_MAX};
use berth_types::{Digest, NodeId, RepoName, Tag, UploadId};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata};
use sha2::{Digest as _, Sha256};

use crate::error::ConsensusError;
use crate::model::{BlobRecord, ManifestRecord, ReferrerRecord, TagRecord, UploadRecord};
use crate::state::{any_with_prefix, contains, key_suffix, read_record};
use crate::tables::{self, BytesTable, key, prefix_range};

/// A read snapshot of the registry state. Every query sees the same committed state,
/// whatever is applied meanwhile. Listings are bounded: `limit` is capped at one more
/// than `limits::LIST_PAGE_ENTRIES_MAX` (so a caller can tell whether another page
/// follows), referrers at `limits::REFERRERS_ENTRIES_MAX`.
pub struct StateView {
    txn: ReadTransaction,
}

impl StateView {
    pub(crate) fn new(txn: ReadTransaction) -> StateView {
        StateView { txn }
    }

    pub(crate) fn table(
        &self,
        def: BytesTable,
    ) -> Result<ReadOnlyTable<&'static [u8], &'static [u8]>, ConsensusError> {
        Ok(self.txn.open_table(def)?)
    }

    /// Whether the repository holds any blob link, manifest or tag.
    pub fn repository_exists(&self, repo: &RepoName) -> Result<bool, ConsensusError> {
        contains(&self.table(tables::REPOS)?, repo.as_str().as_bytes())
    }

    pub fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, ConsensusError> {
        let k = key(&[repo.as_str().as_bytes(), digest.to_string().as_bytes()]);
        read_record(&self.table(tables::MANIFESTS)?, "manifest record", &k)
    }

    /// The digest `tag` points to.
    pub fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, ConsensusError> {
        Ok(self.tag_record(repo, tag)?.map(|t| t.digest))
    }

    /// The tag with the time it was last pushed.
    pub fn tag_record(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagRecord>, ConsensusError> {
        let k = key(&[repo.as_str().as_bytes(), tag.as_str().as_bytes()]);
        read_record(&self.table(tables::TAGS)?, "tag record", &k)
    }

    /// Tags of `repo` in lexical byte order, strictly after `after`.
    pub fn tags(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>, ConsensusError> {
        let repo_b = repo.as_str().as_bytes();
        let (start, end) = prefix_range(&[repo_b]);
        let after_key = after.map(|a| key(&[repo_b, a.as_bytes()]));
        let lower = match &after_key {
            Some(a) if a.as_slice() >= start.as_slice() => Bound::Excluded(a.as_slice()),
            _ => Bound::Included(start.as_slice()),
        };
        let table = self.table(tables::TAGS)?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>((lower, Bound::Excluded(end.as_slice())))?
            .take(limit.min(LIST_PAGE_ENTRIES_MAX + 1))
        {
            let (k, _) = entry?;
            let name = key_suffix(k.value(), &start, "tags")?;
            out.push(
                name.parse()
                    .map_err(|_| ConsensusError::Malformed { table: "tags" })?,
            );
        }
        Ok(out)
    }

    /// Existing repositories in lexical byte order, strictly after `after`.
    pub fn repositories(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RepoName>, ConsensusError> {
        let lower = match after {
            Some(a) => Bound::Excluded(a.as_bytes()),
            None => Bound::Unbounded,
        };
        let table = self.table(tables::REPOS)?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>((lower, Bound::Unbounded))?
            .take(limit.min(LIST_PAGE_ENTRIES_MAX + 1))
        {
            let (k, _) = entry?;
            let name = std::str::from_utf8(k.value())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ConsensusError::Malformed { table: "repos" })?;
            out.push(name);
        }
        Ok(out)
    }

    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, ConsensusError> {
        read_record(
            &self.table(tables::BLOBS)?,
            "blob record",
            digest.to_string().as_bytes(),
        )
    }

    /// Up to `limit` blob records with digests after `after` (from the first when
    /// `None`), in digest order: how repair walks every layout in pages.
    pub fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobRecord>, ConsensusError> {
        let table = self.table(tables::BLOBS)?;
        let start = after.map(|d| d.to_string());
        let mut out = Vec::new();
        let range = match &start {
            Some(s) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(s.as_bytes()),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&[u8]>(..)?,
        };
        for entry in range.take(limit) {
            let (_, v) = entry?;
            out.push(crate::codec::decode("blob record", v.value())?);
        }
        Ok(out)
    }

    /// Whether `repo` links the blob (and so may serve it).
    pub fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool, ConsensusError> {
        let k = key(&[repo.as_str().as_bytes(), digest.to_string().as_bytes()]);
        contains(&self.table(tables::LINKS)?, &k)
    }

    /// Manifests of `repo` whose subject is `subject`, sorted by digest.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<ReferrerRecord>, ConsensusError> {
        let (start, end) =
            prefix_range(&[repo.as_str().as_bytes(), subject.to_string().as_bytes()]);
        let table = self.table(tables::REFERRERS)?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())?
            .take(REFERRERS_ENTRIES_MAX)
        {
            let (_, v) = entry?;
            out.push(crate::codec::decode("referrer record", v.value())?);
        }
        Ok(out)
    }

    pub fn upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, ConsensusError> {
        read_record(
            &self.table(tables::UPLOADS)?,
            "upload record",
            id.to_string().as_bytes(),
        )
    }

    /// Every open upload session, ordered by id.
    pub fn uploads(&self) -> Result<Vec<UploadRecord>, ConsensusError> {
        let table = self.table(tables::UPLOADS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(crate::codec::decode("upload record", v.value())?);
        }
        Ok(out)
    }

    /// Up to `limit` blob records that no repository links, in digest order: the GC's
    /// sweep candidates.
    pub fn unlinked_blobs(&self, limit: usize) -> Result<Vec<Digest>, ConsensusError> {
        let blobs = self.table(tables::BLOBS)?;
        let blob_links = self.table(tables::BLOB_LINKS)?;
        let mut out = Vec::new();
        for entry in blobs.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            if !any_with_prefix(&blob_links, &[k.value()])? {
                let digest = std::str::from_utf8(k.value())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(ConsensusError::Malformed { table: "blobs" })?;
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// The cluster's id, once one was set.
    pub fn cluster_id(&self) -> Result<Option<u128>, ConsensusError> {
        self.table(tables::CLUSTER)?
            .get(tables::CLUSTER_ID)?
            .map(|v| crate::state::cluster_id_of(v.value()))
            .transpose()
    }

    /// The nodes marked draining.
    pub fn draining(&self) -> Result<std::collections::BTreeSet<NodeId>, ConsensusError> {
        Ok(read_record(
            &self.table(tables::CLUSTER)?,
            "draining nodes",
            tables::DRAINING,
        )?
        .unwrap_or_default())
    }

    /// The log index of the last entry applied to the state this view reads.
    pub fn applied_index(&self) -> Result<Option<u64>, ConsensusError> {
        let meta = self.table(tables::SM_META)?;
        let applied: Option<crate::type_config::LogId> =
            read_record(&meta, "last applied log id", tables::LAST_APPLIED)?;
        Ok(applied.map(|l| l.index))
    }

    /// A SHA-256 over every registry table, in a fixed table order and key order. Two
    /// nodes that applied the same log prefix have the same digest.
    pub fn state_digest(&self) -> Result<[u8; 32], ConsensusError> {
        let mut hasher = Sha256::new();
        for (name, def) in tables::all_state_tables() {
            let table = self.table(def)?;
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            hasher.update(table.len()?.to_be_bytes());
            for entry in table.iter()? {
                let (k, v) = entry?;
                hasher.update((k.value().len() as u64).to_be_bytes());
                hasher.update(k.value());
                hasher.update((v.value().len() as u64).to_be_bytes());
                hasher.update(v.value());
            }
        }
        Ok(hasher.finalize().into())
    }
}
