//! The redb tables of the metadata store and their key layouts. One database file holds
//! the Raft log, the Raft metadata, the registry state and the current snapshot.
//!
//! Registry keys are byte strings built so every listing is one ordered range scan:
//! composite keys join their parts with `\0`, which sorts before every byte a
//! repository name, tag or digest may contain, so `repo\0…` ranges never mix with
//! the keys of a repository whose name extends `repo` (`a\0x` < `a/b\0x`).
//! Values are versioned records ([`crate::codec`]) unless noted.

use redb::TableDefinition;

/// Byte-keyed, byte-valued table: every registry table, so snapshots, digests and
/// installs treat them uniformly.
pub(crate) type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Raft log: index -> versioned `Entry`.
pub(crate) const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
/// Raft log-store metadata: [`VOTE`], [`COMMITTED`], [`LAST_PURGED`] -> versioned values.
pub(crate) const RAFT_META: BytesTable = TableDefinition::new("raft_meta");
pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";

/// State-machine metadata, written in the same transaction as the registry data it
/// describes: [`LAST_APPLIED`], [`LAST_MEMBERSHIP`] -> versioned values.
pub(crate) const SM_META: BytesTable = TableDefinition::new("sm_meta");
pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const LAST_MEMBERSHIP: &[u8] = b"last_membership";

/// The current snapshot: [`SNAPSHOT_META`] -> versioned `SnapshotMeta`,
/// [`SNAPSHOT_FILE`] -> the versioned record of its file (see `snapshot_file`);
/// [`SNAPSHOT_DATA`] -> snapshot bytes, as earlier builds kept them (moved out to a
/// file when found).
pub(crate) const SNAPSHOT: BytesTable = TableDefinition::new("snapshot");
pub(crate) const SNAPSHOT_META: &[u8] = b"meta";
pub(crate) const SNAPSHOT_DATA: &[u8] = b"data";
pub(crate) const SNAPSHOT_FILE: &[u8] = b"file";

/// `digest` -> `BlobRecord`.
pub(crate) const BLOBS: BytesTable = TableDefinition::new("blobs");
/// `repo\0digest` -> empty: the repository links the blob.
pub(crate) const LINKS: BytesTable = TableDefinition::new("links");
/// `digest\0repo` -> empty: the reverse of [`LINKS`], so GC asks "is it linked
/// anywhere" with one range probe.
pub(crate) const BLOB_LINKS: BytesTable = TableDefinition::new("blob_links");
/// `repo\0digest` -> `ManifestRecord`.
pub(crate) const MANIFESTS: BytesTable = TableDefinition::new("manifests");
/// `repo\0tag` -> `TagRecord`.
pub(crate) const TAGS: BytesTable = TableDefinition::new("tags");
/// `repo\0subject\0digest` -> `ReferrerRecord`.
pub(crate) const REFERRERS: BytesTable = TableDefinition::new("referrers");
/// `upload id` -> `UploadRecord`.
pub(crate) const UPLOADS: BytesTable = TableDefinition::new("uploads");
/// `started_at_ms (8 bytes big-endian) ++ upload id` -> empty, so expiry is a prefix
/// range instead of a scan of every session.
pub(crate) const UPLOADS_BY_START: BytesTable = TableDefinition::new("uploads_by_start");
/// `repo` -> number of links, manifests and tags it holds (8 bytes big-endian, not a
/// versioned record: a counter has no format to evolve). A repository exists while
/// the count is positive; the catalog is a range scan of this table.
pub(crate) const REPOS: BytesTable = TableDefinition::new("repos");

/// `request id (16 bytes big-endian)` -> `RequestRecord`: the outcome of each tracked
/// proposal, so a retried proposal applies once.
pub(crate) const REQUESTS: BytesTable = TableDefinition::new("requests");
/// `at_ms (8 bytes big-endian) ++ request id` -> empty: forgetting old request ids is
/// a prefix range.
pub(crate) const REQUESTS_BY_TIME: BytesTable = TableDefinition::new("requests_by_time");

/// [`CLUSTER_ID`] -> the cluster's id (16 bytes big-endian, set once);
/// [`DRAINING`] -> the set of draining node ids (absent: none).
pub(crate) const CLUSTER: BytesTable = TableDefinition::new("cluster");
pub(crate) const CLUSTER_ID: &[u8] = b"id";
pub(crate) const DRAINING: &[u8] = b"draining";

/// Every registry table, in the fixed order snapshots and the state digest use.
pub(crate) const STATE_TABLES: [(&str, BytesTable); 12] = [
    ("blobs", BLOBS),
    ("links", LINKS),
    ("blob_links", BLOB_LINKS),
    ("manifests", MANIFESTS),
    ("tags", TAGS),
    ("referrers", REFERRERS),
    ("uploads", UPLOADS),
    ("uploads_by_start", UPLOADS_BY_START),
    ("repos", REPOS),
    ("requests", REQUESTS),
    ("requests_by_time", REQUESTS_BY_TIME),
    ("cluster", CLUSTER),
];

/// Every replicated table: the registry tables, then the tenancy tables.
pub(crate) fn all_state_tables() -> impl Iterator<Item = (&'static str, BytesTable)> {
    STATE_TABLES
        .into_iter()
        .chain(crate::tenancy_state::TENANCY_TABLES)
        .chain(crate::tenancy_state::ACCESS_TABLES)
}

/// Joins key parts with `\0`.
pub(crate) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// The half-open range of keys that start with `parts` joined and then `\0`:
/// `[prefix\0, prefix\x01)`.
pub(crate) fn prefix_range(parts: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let mut start = key(parts);
    let mut end = start.clone();
    start.push(0);
    end.push(1);
    (start, end)
}

/// The key of an upload in [`UPLOADS_BY_START`].
pub(crate) fn upload_start_key(started_at_ms: u64, id: &[u8]) -> Vec<u8> {
    let mut k = started_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(id);
    k
}

/// The key of a request id in [`REQUESTS_BY_TIME`].
pub(crate) fn request_time_key(at_ms: u64, id: u128) -> Vec<u8> {
    let mut k = at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_do_not_mix_nested_repositories() {
        let (start, end) = prefix_range(&[b"a"]);
        let inside = key(&[b"a", b"latest"]);
        let nested = key(&[b"a/b", b"latest"]);
        let longer = key(&[b"ab", b"latest"]);
        assert!(start <= inside && inside < end);
        assert!(!(start <= nested && nested < end));
        assert!(!(start <= longer && longer < end));
    }
}
