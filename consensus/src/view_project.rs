//! Queries that list what a project holds, for deleting a project with its
//! repositories: the repositories below a project, and the manifests, tags and blob
//! links of one repository (each bounded by a limit, so a caller works in batches);
//! and the projects whose repositories link a blob, for the profile it should have.

use std::collections::BTreeSet;

use berth_types::{Digest, RepoName, Tag};

use crate::error::ConsensusError;
use crate::state::key_suffix;
use crate::tables::{self, BytesTable, prefix_range};
use crate::tenancy::ProjectName;
use crate::view::StateView;

impl StateView {
    /// Existing repositories of `project` (`project` itself and everything under
    /// `project/`), at most `limit`.
    pub fn project_repositories(
        &self,
        project: &ProjectName,
        limit: usize,
    ) -> Result<Vec<RepoName>, ConsensusError> {
        let n = project.as_str().as_bytes();
        let mut below = n.to_vec();
        below.push(b'/');
        // `/` + 1 is `0`: [name/, name0) holds exactly the keys under `name/`.
        let mut end = n.to_vec();
        end.push(b'0');
        let table = self.table(tables::REPOS)?;
        let mut keys = Vec::new();
        if table.get(n)?.is_some() {
            keys.push(n.to_vec());
        }
        for entry in table.range::<&[u8]>(below.as_slice()..end.as_slice())? {
            if keys.len() >= limit {
                break;
            }
            keys.push(entry?.0.value().to_vec());
        }
        keys.truncate(limit);
        keys.into_iter()
            .map(|k| {
                std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(ConsensusError::Malformed { table: "repos" })
            })
            .collect()
    }

    /// Digests of the manifests stored in `repo`, at most `limit`.
    pub fn repository_manifests(
        &self,
        repo: &RepoName,
        limit: usize,
    ) -> Result<Vec<Digest>, ConsensusError> {
        self.suffixes(tables::MANIFESTS, "manifests", repo, limit)?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ConsensusError::Malformed { table: "manifests" })
            })
            .collect()
    }

    /// Digests of the blobs `repo` links, at most `limit`.
    pub fn repository_links(
        &self,
        repo: &RepoName,
        limit: usize,
    ) -> Result<Vec<Digest>, ConsensusError> {
        self.suffixes(tables::LINKS, "links", repo, limit)?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ConsensusError::Malformed { table: "links" })
            })
            .collect()
    }

    /// Tags of `repo`, at most `limit`.
    pub fn repository_tags(
        &self,
        repo: &RepoName,
        limit: usize,
    ) -> Result<Vec<Tag>, ConsensusError> {
        self.suffixes(tables::TAGS, "tags", repo, limit)?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ConsensusError::Malformed { table: "tags" })
            })
            .collect()
    }

    /// The projects of the repositories that link blob `digest` (empty when none
    /// does), or `None` when more than `links_max` repositories link it: then not all
    /// of them were looked at.
    pub fn blob_projects(
        &self,
        digest: &Digest,
        links_max: usize,
    ) -> Result<Option<BTreeSet<ProjectName>>, ConsensusError> {
        let digest = digest.to_string();
        let (start, end) = prefix_range(&[digest.as_bytes()]);
        let table = self.table(tables::BLOB_LINKS)?;
        let mut projects = BTreeSet::new();
        for (seen, entry) in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())?
            .enumerate()
        {
            if seen == links_max {
                return Ok(None);
            }
            let (k, _) = entry?;
            let repo: RepoName = key_suffix(k.value(), &start, "blob_links")?
                .parse()
                .map_err(|_| ConsensusError::Malformed {
                    table: "blob_links",
                })?;
            projects.insert(ProjectName::of(&repo));
        }
        Ok(Some(projects))
    }

    /// The key suffixes after `repo\0` in `def`, at most `limit`.
    fn suffixes(
        &self,
        def: BytesTable,
        name: &'static str,
        repo: &RepoName,
        limit: usize,
    ) -> Result<Vec<String>, ConsensusError> {
        let (start, end) = prefix_range(&[repo.as_str().as_bytes()]);
        let table = self.table(def)?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())?
            .take(limit)
        {
            let (k, _) = entry?;
            out.push(key_suffix(k.value(), &start, name)?.to_owned());
        }
        Ok(out)
    }
}
