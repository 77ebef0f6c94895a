//! Handlers of the OCI endpoints: they turn an [`Endpoint`] and a request into calls of
//! the use cases and the metadata, and shape the responses the spec requires.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_consensus::{CommandV1, ManifestRecord, Outcome, Rejection};
use berth_types::limits::{LIST_PAGE_ENTRIES_DEFAULT, LIST_PAGE_ENTRIES_MAX, MANIFEST_BYTES_MAX};
use berth_types::{BlobLayout, Digest, Reference, RepoName, UploadId};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;

use super::endpoint::Endpoint;
use super::error::{Code, OciError, OciResult};
use super::ranges::{ByteRange, parse_content_range, parse_range, upload_range};
use super::unsupported;
use crate::AppState;
use crate::auth::Caller;
use crate::manifest::{self, ManifestError, OCI_INDEX};
use crate::uploads::now_ms;

/// Most listing pages the catalog scans to fill one filtered page.
const CATALOG_SCAN_PAGES_MAX: usize = 100;

pub async fn handle(app: AppState, endpoint: Endpoint, req: Request<Body>) -> OciResult<Response> {
    let method = req.method().clone();
    match (endpoint, &method) {
        (Endpoint::Base, &Method::GET | &Method::HEAD) => {
            Ok((StatusCode::OK, axum::Json(json!({}))).into_response())
        }
        (Endpoint::Catalog, &Method::GET) => catalog(app, req).await,
        (Endpoint::Tags(repo), &Method::GET) => tags(app, repo, req).await,
        (Endpoint::Manifest(repo, r), &Method::GET | &Method::HEAD) => {
            get_manifest(app, repo, r, method == Method::HEAD).await
        }
        (Endpoint::Manifest(repo, r), &Method::PUT) => put_manifest(app, repo, r, req).await,
        (Endpoint::Manifest(repo, r), &Method::DELETE) => delete_manifest(app, repo, r).await,
        (Endpoint::Blob(repo, d), &Method::GET | &Method::HEAD) => {
            get_blob(app, repo, d, req.headers(), method == Method::HEAD).await
        }
        (Endpoint::Blob(repo, d), &Method::DELETE) => delete_blob(app, repo, d).await,
        (Endpoint::UploadStart(repo), &Method::POST) => start_upload(app, repo, req).await,
        (Endpoint::Upload(repo, id), &Method::PATCH) => patch_upload(app, repo, id, req).await,
        (Endpoint::Upload(repo, id), &Method::PUT) => put_upload(app, repo, id, req).await,
        (Endpoint::Upload(repo, id), &Method::GET) => {
            let len = app.uploads.status(&repo, &id).await?;
            Ok(upload_accepted(&repo, &id, len, StatusCode::NO_CONTENT))
        }
        (Endpoint::Upload(repo, id), &Method::DELETE) => {
            app.uploads.cancel(&repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Endpoint::Referrers(repo, d), &Method::GET) => referrers(app, repo, d, req).await,
        (_, m) => Err(unsupported(m)),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values berth builds are ASCII")
}

fn query_param(req: &Request<Body>, key: &str) -> Option<String> {
    let q = req.uri().query()?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes of a query value. `+` stays `+`: media types such as
/// `application/vnd.x+json` appear unescaped in `artifactType` filters.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_digest_param(value: &str) -> OciResult<Digest> {
    value
        .parse()
        .map_err(|e| OciError::new(Code::DigestInvalid, format!("invalid digest: {e}")))
}

/// `n` and `last` of a paginated listing.
fn page(req: &Request<Body>) -> OciResult<(usize, Option<String>)> {
    let n = match query_param(req, "n") {
        None => LIST_PAGE_ENTRIES_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| OciError::new(Code::Unsupported, "n must be a non-negative integer"))?
            .min(LIST_PAGE_ENTRIES_MAX),
    };
    Ok((n, query_param(req, "last").filter(|s| !s.is_empty())))
}

/// A listing response. `items` holds up to `n + 1` entries: the extra one only says
/// that another page follows, which earns a `Link` header to it.
fn listing(
    path: &str,
    n: usize,
    mut items: Vec<String>,
    field: &str,
    name: Option<&RepoName>,
) -> Response {
    let more = items.len() > n;
    items.truncate(n);
    let link = (more && n > 0).then(|| {
        let last = items.last().expect("n > 0 entries precede the extra one");
        format!("<{path}?n={n}&last={last}>; rel=\"next\"")
    });
    let mut body = json!({ field: items });
    if let Some(name) = name {
        body["name"] = json!(name.as_str());
    }
    let mut resp = axum::Json(body).into_response();
    if let Some(link) = link {
        resp.headers_mut().insert(header::LINK, header_value(&link));
    }
    resp
}

async fn catalog(app: AppState, req: Request<Body>) -> OciResult<Response> {
    let (n, last) = page(&req)?;
    let caller = Caller::of(&req);
    let repos = app
        .meta
        .read(move |v| {
            if caller.open {
                return v.repositories(last.as_deref(), n + 1);
            }
            // Only what the caller may pull, paging through the rest.
            let mut out = Vec::new();
            let mut after = last;
            for _ in 0..CATALOG_SCAN_PAGES_MAX {
                let batch = v.repositories(after.as_deref(), LIST_PAGE_ENTRIES_MAX)?;
                let Some(tail) = batch.last() else { break };
                after = Some(tail.as_str().to_owned());
                let done = batch.len() < LIST_PAGE_ENTRIES_MAX;
                for r in batch {
                    if out.len() > n {
                        break;
                    }
                    if caller.actions(v, &r)?.pull {
                        out.push(r);
                    }
                }
                if done || out.len() > n {
                    break;
                }
            }
            Ok(out)
        })
        .await?;
    let names = repos.into_iter().map(String::from).collect();
    Ok(listing("/v2/_catalog", n, names, "repositories", None))
}

async fn tags(app: AppState, repo: RepoName, req: Request<Body>) -> OciResult<Response> {
    let (n, last) = page(&req)?;
    let r = repo.clone();
    let tags = app
        .meta
        .read(move |v| {
            v.repository_exists(&r)?
                .then(|| v.tags(&r, last.as_deref(), n + 1))
                .transpose()
        })
        .await?
        .ok_or_else(|| OciError::new(Code::NameUnknown, format!("repository {repo} not known")))?;
    let names = tags.into_iter().map(String::from).collect();
    Ok(listing(
        &format!("/v2/{repo}/tags/list"),
        n,
        names,
        "tags",
        Some(&repo),
    ))
}

async fn get_manifest(
    app: AppState,
    repo: RepoName,
    r: Reference,
    head: bool,
) -> OciResult<Response> {
    let record = app
        .meta
        .read(move |v| {
            let digest = match &r {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(t) => v.tag(&repo, t)?,
            };
            match digest {
                Some(d) => v.manifest(&repo, &d),
                None => Ok(None),
            }
        })
        .await?
        .ok_or_else(|| OciError::new(Code::ManifestUnknown, "manifest unknown"))?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, header_value(&record.media_type))
        .header(header::CONTENT_LENGTH, record.bytes.len())
        .header(
            "Docker-Content-Digest",
            header_value(&record.digest.to_string()),
        )
        .header(
            header::ETAG,
            header_value(&format!("\"{}\"", record.digest)),
        );
    if let Some(subject) = &record.subject {
        resp = resp.header("OCI-Subject", header_value(&subject.to_string()));
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from(record.bytes)
    };
    resp.body(body).map_err(|e| OciError::internal(&e))
}

async fn put_manifest(
    app: AppState,
    repo: RepoName,
    r: Reference,
    req: Request<Body>,
) -> OciResult<Response> {
    let too_large = || {
        OciError::new(
            Code::ManifestTooLarge,
            format!("manifest is larger than {MANIFEST_BYTES_MAX} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MANIFEST_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = http_body_util::Limited::new(req.into_body(), MANIFEST_BYTES_MAX)
        .collect()
        .await
        .map_err(|_| too_large())?
        .to_bytes();
    let expected = match &r {
        Reference::Digest(d) => Some(d),
        Reference::Tag(_) => None,
    };
    let parsed =
        manifest::parse(content_type.as_deref(), &body, expected).map_err(|e| match e {
            ManifestError::DigestMismatch { .. } => {
                OciError::new(Code::DigestInvalid, e.to_string())
            }
            other => OciError::new(Code::ManifestInvalid, other.to_string()),
        })?;
    let tag = match &r {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    let digest = parsed.digest.clone();
    let subject = parsed.subject.clone();
    let record = ManifestRecord {
        digest: parsed.digest,
        media_type: parsed.media_type,
        bytes: body.to_vec(),
        subject: parsed.subject,
        artifact_type: parsed.artifact_type,
        annotations: parsed.annotations,
        pushed_at_ms: now_ms(),
    };
    let outcome = app
        .meta
        .propose(CommandV1::PutManifest {
            repo: repo.clone(),
            record,
            tag,
            blobs: parsed.blobs,
            manifests: parsed.manifests,
        })
        .await?;
    match outcome {
        Outcome::ManifestPut => {}
        Outcome::Rejected(Rejection::BlobUnknown(d)) => {
            return Err(OciError::new(
                Code::ManifestBlobUnknown,
                format!("blob {d} is not in repository {repo}"),
            ));
        }
        Outcome::Rejected(Rejection::ManifestUnknown(d)) => {
            return Err(OciError::new(
                Code::ManifestBlobUnknown,
                format!("manifest {d} is not in repository {repo}"),
            ));
        }
        other => return Err(OciError::internal(&format!("unexpected outcome {other:?}"))),
    }
    let mut resp = Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            header_value(&format!("/v2/{repo}/manifests/{digest}")),
        )
        .header("Docker-Content-Digest", header_value(&digest.to_string()));
    if let Some(subject) = subject {
        resp = resp.header("OCI-Subject", header_value(&subject.to_string()));
    }
    resp.body(Body::empty()).map_err(|e| OciError::internal(&e))
}

async fn delete_manifest(app: AppState, repo: RepoName, r: Reference) -> OciResult<Response> {
    let cmd = match r {
        Reference::Digest(digest) => CommandV1::DeleteManifest { repo, digest },
        Reference::Tag(tag) => CommandV1::DeleteTag { repo, tag },
    };
    match app.meta.propose(cmd).await? {
        Outcome::ManifestDeleted { .. } | Outcome::TagDeleted => {
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Outcome::NotFound => Err(OciError::new(Code::ManifestUnknown, "manifest unknown")),
        other => Err(OciError::internal(&format!("unexpected outcome {other:?}"))),
    }
}

async fn get_blob(
    app: AppState,
    repo: RepoName,
    digest: Digest,
    headers: &HeaderMap,
    head: bool,
) -> OciResult<Response> {
    let d = digest.clone();
    let record = app
        .meta
        .read(move |v| {
            if v.blob_linked(&repo, &d)? {
                v.blob(&d)
            } else {
                Ok(None)
            }
        })
        .await?
        .ok_or_else(|| OciError::new(Code::BlobUnknown, "blob unknown"))?;
    let size = record.size;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, span) = match range {
        ByteRange::Full => (StatusCode::OK, 0..size),
        ByteRange::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        ByteRange::Unsatisfiable => {
            return Err(
                OciError::new(Code::RangeInvalid, "range not satisfiable").with_header(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                ),
            );
        }
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, span.end - span.start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", header_value(&digest.to_string()))
        .header(header::ETAG, header_value(&format!("\"{digest}\"")));
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{size}", span.start, span.end - 1)),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        app.metrics.blob_bytes_out(span.end - span.start);
        match record.layout {
            BlobLayout::Inline(bytes) => {
                Body::from(bytes[span.start as usize..span.end as usize].to_vec())
            }
            BlobLayout::Striped(layout) => {
                let stream = app.store.read(&layout, &digest, size, span);
                Body::from_stream(stream.map(|r| {
                    r.inspect_err(|e| tracing::error!(error = %e, "blob read failed mid-stream"))
                }))
            }
        }
    };
    resp.body(body).map_err(|e| OciError::internal(&e))
}

async fn delete_blob(app: AppState, repo: RepoName, digest: Digest) -> OciResult<Response> {
    match app
        .meta
        .propose(CommandV1::UnlinkBlob { repo, digest })
        .await?
    {
        Outcome::BlobUnlinked => Ok(StatusCode::ACCEPTED.into_response()),
        Outcome::NotFound => Err(OciError::new(Code::BlobUnknown, "blob unknown")),
        other => Err(OciError::internal(&format!("unexpected outcome {other:?}"))),
    }
}

fn upload_accepted(repo: &RepoName, id: &UploadId, len: u64, status: StatusCode) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    h.insert(header::RANGE, header_value(&upload_range(len)));
    h.insert("Docker-Upload-UUID", header_value(&id.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/{digest}")),
    );
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

async fn start_upload(app: AppState, repo: RepoName, req: Request<Body>) -> OciResult<Response> {
    if let Some(mount) = query_param(&req, "mount") {
        let digest = parse_digest_param(&mount)?;
        // A mount without a readable source falls back to a normal upload (202),
        // which reveals nothing about whether the blob exists elsewhere.
        let from = query_param(&req, "from").and_then(|f| f.parse::<RepoName>().ok());
        let caller = Caller::of(&req);
        let readable = match &from {
            Some(f) if !caller.open => {
                let (c, f) = (caller.clone(), f.clone());
                app.meta.read(move |v| Ok(c.actions(v, &f)?.pull)).await?
            }
            _ => true,
        };
        if let Some(from) = from.filter(|_| readable) {
            let outcome = app
                .meta
                .propose(CommandV1::MountBlob {
                    repo: repo.clone(),
                    from,
                    digest: digest.clone(),
                })
                .await?;
            if matches!(outcome, Outcome::Mounted(Some(_))) {
                return Ok(blob_created(&repo, &digest));
            }
        }
    }
    if let Some(d) = query_param(&req, "digest") {
        let digest = parse_digest_param(&d)?;
        let body = req.into_body().into_data_stream();
        let committed = app.uploads.monolithic(&repo, &digest, body).await?;
        app.metrics.blob_bytes_in(committed.size);
        return Ok(blob_created(&repo, &committed.digest));
    }
    let id = app.uploads.create(&repo).await?;
    Ok(upload_accepted(&repo, &id, 0, StatusCode::ACCEPTED))
}

async fn patch_upload(
    app: AppState,
    repo: RepoName,
    id: UploadId,
    req: Request<Body>,
) -> OciResult<Response> {
    let start = match req.headers().get(header::CONTENT_RANGE) {
        None => None,
        Some(v) => {
            let (start, end) = v
                .to_str()
                .ok()
                .and_then(parse_content_range)
                .ok_or_else(|| OciError::new(Code::RangeInvalid, "malformed Content-Range"))?;
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n != end - start + 1) {
                return Err(OciError::new(
                    Code::RangeInvalid,
                    "Content-Range does not match Content-Length",
                ));
            }
            Some(start)
        }
    };
    let body = req.into_body().into_data_stream();
    let appended = app.uploads.append(&repo, &id, start, body).await?;
    app.metrics.blob_bytes_in(appended.received);
    Ok(upload_accepted(
        &repo,
        &id,
        appended.len,
        StatusCode::ACCEPTED,
    ))
}

async fn put_upload(
    app: AppState,
    repo: RepoName,
    id: UploadId,
    req: Request<Body>,
) -> OciResult<Response> {
    let digest = query_param(&req, "digest")
        .ok_or_else(|| {
            OciError::new(
                Code::DigestInvalid,
                "the digest query parameter is required",
            )
        })
        .and_then(|d| parse_digest_param(&d))?;
    let body = req.into_body().into_data_stream();
    let committed = app.uploads.finish(&repo, &id, &digest, body).await?;
    app.metrics.blob_bytes_in(committed.received);
    Ok(blob_created(&repo, &committed.digest))
}

async fn referrers(
    app: AppState,
    repo: RepoName,
    subject: Digest,
    req: Request<Body>,
) -> OciResult<Response> {
    let filter = query_param(&req, "artifactType").filter(|s| !s.is_empty());
    let list = app.meta.read(move |v| v.referrers(&repo, &subject)).await?;
    let manifests: Vec<serde_json::Value> = list
        .into_iter()
        .filter(|r| filter.is_none() || r.artifact_type == filter)
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest.to_string(),
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if !r.annotations.is_empty() {
                d["annotations"] = json!(r.annotations);
            }
            d
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("sha256%3Aabc"), "sha256:abc");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("%e2%82"), "\u{fffd}");
        assert_eq!(percent_decode("é%"), "é%");
    }
}
