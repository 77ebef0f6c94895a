//! Parses a `/v2/...` request path into a typed [`Endpoint`] before anything else
//! happens. Repository names may contain slashes, so the path is matched from its end,
//! as the distribution spec's grammar allows.

use berth_types::{Digest, Reference, RepoName, Tag, UploadId};

use super::error::{Code, OciError};

/// One OCI API resource, with its path parameters parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// A low-cardinality label for metrics and logs.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }

    /// Parses the path below `/v2/` (without the leading `/v2/`).
    pub fn parse(rest: &str) -> Result<Endpoint, OciError> {
        if rest.is_empty() {
            return Ok(Endpoint::Base);
        }
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let n = parts.len();
        let name = |upto: usize| -> Result<RepoName, OciError> {
            if upto == 0 {
                return Err(not_found());
            }
            parts[..upto].join("/").parse::<RepoName>().map_err(|e| {
                OciError::new(Code::NameInvalid, format!("invalid repository name: {e}"))
            })
        };
        let digest = |s: &str| -> Result<Digest, OciError> {
            s.parse::<Digest>()
                .map_err(|e| OciError::new(Code::DigestInvalid, format!("invalid digest: {e}")))
        };
        if n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads" {
            return Ok(Endpoint::UploadStart(name(n - 2)?));
        }
        if n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads" {
            let repo = name(n - 3)?;
            if parts[n - 1].is_empty() {
                return Ok(Endpoint::UploadStart(repo));
            }
            let id = parts[n - 1]
                .parse::<UploadId>()
                .map_err(|_| OciError::new(Code::BlobUploadUnknown, "upload unknown"))?;
            return Ok(Endpoint::Upload(repo, id));
        }
        if n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list" {
            return Ok(Endpoint::Tags(name(n - 2)?));
        }
        if n >= 3 && parts[n - 2] == "manifests" {
            let repo = name(n - 2)?;
            let r = parts[n - 1];
            let reference =
                if r.contains(':') {
                    Reference::Digest(digest(r)?)
                } else {
                    Reference::Tag(r.parse::<Tag>().map_err(|e| {
                        OciError::new(Code::TagInvalid, format!("invalid tag: {e}"))
                    })?)
                };
            return Ok(Endpoint::Manifest(repo, reference));
        }
        if n >= 3 && parts[n - 2] == "blobs" {
            let repo = name(n - 2)?;
            return Ok(Endpoint::Blob(repo, digest(parts[n - 1])?));
        }
        if n >= 3 && parts[n - 2] == "referrers" {
            let repo = name(n - 2)?;
            return Ok(Endpoint::Referrers(repo, digest(parts[n - 1])?));
        }
        Err(not_found())
    }
}

fn not_found() -> OciError {
    OciError::new(Code::NameUnknown, "no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn router_table() {
        let d: Digest = D.parse().unwrap();
        let id = "1-000000000000000000000000deadbeef";
        let table: Vec<(String, Endpoint)> = vec![
            ("".into(), Endpoint::Base),
            ("_catalog".into(), Endpoint::Catalog),
            ("a/b/tags/list".into(), Endpoint::Tags(repo("a/b"))),
            (
                "a/manifests/latest".into(),
                Endpoint::Manifest(repo("a"), Reference::Tag("latest".parse().unwrap())),
            ),
            (
                format!("a/b/c/manifests/{D}"),
                Endpoint::Manifest(repo("a/b/c"), Reference::Digest(d.clone())),
            ),
            (format!("x/blobs/{D}"), Endpoint::Blob(repo("x"), d.clone())),
            ("x/blobs/uploads/".into(), Endpoint::UploadStart(repo("x"))),
            ("x/blobs/uploads".into(), Endpoint::UploadStart(repo("x"))),
            (
                format!("x/y/blobs/uploads/{id}"),
                Endpoint::Upload(repo("x/y"), id.parse().unwrap()),
            ),
            (
                format!("x/referrers/{D}"),
                Endpoint::Referrers(repo("x"), d.clone()),
            ),
            // Components that look like API words are still part of a name.
            (
                "blobs/manifests/manifests/v1".into(),
                Endpoint::Manifest(
                    repo("blobs/manifests"),
                    Reference::Tag("v1".parse().unwrap()),
                ),
            ),
        ];
        for (path, want) in table {
            assert_eq!(Endpoint::parse(&path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn bad_paths_get_the_right_code() {
        let long = format!("{}/manifests/latest", "a".repeat(256));
        let table: Vec<(String, Code)> = vec![
            ("Upper/manifests/latest".into(), Code::NameInvalid),
            ("a/../b/manifests/latest".into(), Code::NameInvalid),
            (long, Code::NameInvalid),
            ("a/manifests/bad:tag:x".into(), Code::DigestInvalid),
            ("a/manifests/.bad".into(), Code::TagInvalid),
            ("a/blobs/sha256:zz".into(), Code::DigestInvalid),
            ("a/blobs/uploads/not-an-id".into(), Code::BlobUploadUnknown),
            ("a/referrers/md5:00".into(), Code::DigestInvalid),
            ("manifests/latest".into(), Code::NameUnknown),
            ("a/unknown/thing".into(), Code::NameUnknown),
        ];
        for (path, code) in table {
            assert_eq!(Endpoint::parse(&path).unwrap_err().code, code, "{path}");
        }
    }
}
