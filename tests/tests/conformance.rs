//! OCI Distribution Spec v1.1 conformance, written from the spec: pull, push, content
//! discovery and content management, plus the error codes and their JSON envelope.
//! Each test talks to a fresh berth process, or to `BERTH_TEST_REGISTRY` when set, and
//! uses its own repositories so the tests can share one registry and run in parallel.

use anyhow::{Context, Result, ensure};
use berth_tests::data::{EMPTY_CONFIG, EMPTY_MEDIA_TYPE, random_suffix};
use berth_tests::oci::{
    Blob, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST, Image, OCI_CONFIG,
    OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, expect_error, expect_error_for, header,
    manifest_bytes, upload_location, with_query,
};
use berth_tests::raw::raw_request;
use berth_tests::{Target, random_bytes, sha256_digest, sha512_digest, unique_repo};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Digest of the two bytes `{}`, the OCI empty descriptor's content.
const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Upper bound on pages walked in a paginated listing.
const PAGES_MAX: usize = 1000;

async fn status_of(req: reqwest::RequestBuilder) -> Result<StatusCode> {
    Ok(req.send().await?.status())
}

/// Pushes a small image tagged `canary` that every error test reads back after each bad
/// request, to prove the bad request damaged nothing.
async fn canary(t: &Target, prefix: &str) -> Result<Image> {
    let repo = unique_repo(prefix);
    t.oci
        .push_image(&repo, Some("canary"), &[1024, 70_000])
        .await
}

/// Sends a bad request, checks its OCI error and that the canary still reads back.
async fn bad(
    t: &Target,
    canary: &Image,
    what: &str,
    req: reqwest::RequestBuilder,
    status: u16,
    code: &str,
) -> Result<()> {
    expect_error_for(what, req, status, code).await?;
    canary
        .verify(&t.oci)
        .await
        .with_context(|| format!("the canary image no longer reads back after {what}"))
}

/// The URL in a `Link: <url>; rel="next"` header, resolved against the registry.
fn next_link(t: &Target, link: &str) -> Option<String> {
    if !link.contains("rel=\"next\"") && !link.contains("rel=next") {
        return None;
    }
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    Some(t.oci.resolve(&link[start..end]))
}

fn string_list(value: &Value, key: &str) -> Result<Vec<String>> {
    let list = value
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("no {key:?} array in {value}"))?;
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .with_context(|| format!("non-string in {key:?}: {v}"))
        })
        .collect()
}

/// A valid OCI manifest body for `blobs` (first is the config), for error tests.
fn oci_manifest_for(config: &Blob, layers: &[&Blob]) -> Vec<u8> {
    manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(|b| b.descriptor()).collect::<Vec<_>>(),
    }))
}

// ---------------------------------------------------------------- pull

#[tokio::test]
async fn api_version_check_answers_200_with_registry_2_0_header() {
    // Proves: GET /v2/ answers 200 and announces Docker-Distribution-API-Version: registry/2.0.
    Target::conformance()
        .await
        .run(async |t| {
            let resp = t.oci.http().get(t.oci.url("/v2/")).send().await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET /v2/: expected 200, got {}",
                resp.status()
            );
            let version = header(resp.headers(), "docker-distribution-api-version");
            ensure!(
                version == "registry/2.0",
                "GET /v2/: Docker-Distribution-API-Version {version:?}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn blob_get_and_head_return_bytes_length_and_digest() {
    // Proves: a pushed blob reads back byte-identical, and GET and HEAD both carry the
    // exact Content-Length and Docker-Content-Digest; HEAD has no body.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/blob-get");
            let data = random_bytes(300_000);
            let digest = t.oci.push_blob(&repo, &data).await?;
            let resp = t.oci.get_blob(&repo, &digest).await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET blob: {}",
                resp.status()
            );
            let len = header(resp.headers(), "content-length");
            let dcd = header(resp.headers(), "docker-content-digest");
            let body = resp.bytes().await?;
            ensure!(body.as_ref() == data.as_slice(), "GET blob: bytes differ");
            ensure!(
                len == data.len().to_string(),
                "GET blob: Content-Length {len:?}"
            );
            ensure!(
                dcd == digest,
                "GET blob: Docker-Content-Digest {dcd:?}, expected {digest}"
            );

            let resp = t
                .oci
                .request(Method::HEAD, &t.oci.blob_url(&repo, &digest))
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "HEAD blob: {}",
                resp.status()
            );
            let len = header(resp.headers(), "content-length");
            let dcd = header(resp.headers(), "docker-content-digest");
            ensure!(
                len == data.len().to_string(),
                "HEAD blob: Content-Length {len:?}"
            );
            ensure!(dcd == digest, "HEAD blob: Docker-Content-Digest {dcd:?}");
            ensure!(resp.bytes().await?.is_empty(), "HEAD blob: non-empty body");
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn blob_range_requests_return_206_with_content_range() {
    // Proves: Range requests (closed, open-ended, suffix) on a blob answer 206 with the
    // right Content-Range and exactly the requested bytes.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/range");
            let data = random_bytes(100_000);
            let digest = t.oci.push_blob(&repo, &data).await?;
            let cases: [(&str, usize, usize); 3] = [
                ("bytes=1000-1999", 1000, 1999),
                ("bytes=99500-", 99_500, 99_999),
                ("bytes=-100", 99_900, 99_999),
            ];
            for (range, first, last) in cases {
                let resp = t
                    .oci
                    .http()
                    .get(t.oci.blob_url(&repo, &digest))
                    .header("Range", range)
                    .send()
                    .await?;
                let what = format!("GET blob with Range: {range}");
                ensure!(
                    resp.status() == StatusCode::PARTIAL_CONTENT,
                    "{what}: expected 206, got {}",
                    resp.status()
                );
                let content_range = header(resp.headers(), "content-range");
                let expected = format!("bytes {first}-{last}/{}", data.len());
                ensure!(
                    content_range == expected,
                    "{what}: Content-Range {content_range:?}, expected {expected:?}"
                );
                let body = resp.bytes().await?;
                ensure!(
                    body.as_ref() == &data[first..=last],
                    "{what}: wrong bytes ({} bytes)",
                    body.len()
                );
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn blob_unsatisfiable_range_returns_416() {
    // Proves: a Range starting past the end of the blob answers 416 with
    // Content-Range: bytes */<size> (RFC 9110), not 200 or a 5xx.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/range416");
            let data = random_bytes(10_000);
            let digest = t.oci.push_blob(&repo, &data).await?;
            let resp = t
                .oci
                .http()
                .get(t.oci.blob_url(&repo, &digest))
                .header("Range", "bytes=20000-20100")
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::RANGE_NOT_SATISFIABLE,
                "GET blob with Range bytes=20000-20100 of 10000: expected 416, got {}",
                resp.status()
            );
            let content_range = header(resp.headers(), "content-range");
            ensure!(
                content_range == "bytes */10000",
                "416 Content-Range {content_range:?}, expected \"bytes */10000\""
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn manifest_get_and_head_by_tag_and_digest_are_byte_identical() {
    // Proves: an OCI image manifest pushed by tag reads back by tag and by digest with
    // the exact pushed bytes, its media type as Content-Type and Docker-Content-Digest;
    // HEAD gives the same headers and Content-Length, without a body.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/manifest");
            let image = t.oci.push_image(&repo, Some("v1"), &[2000, 50_000]).await?;
            image.verify(&t.oci).await?;
            for reference in ["v1", image.digest.as_str()] {
                let url = t.oci.manifest_url(&repo, reference);
                let resp = t
                    .oci
                    .request(Method::HEAD, &url)
                    .header("Accept", berth_tests::oci::ACCEPT_MANIFESTS)
                    .send()
                    .await?;
                let what = format!("HEAD /v2/{repo}/manifests/{reference}");
                ensure!(resp.status() == StatusCode::OK, "{what}: {}", resp.status());
                let h = resp.headers().clone();
                ensure!(
                    header(&h, "content-length") == image.manifest.len().to_string(),
                    "{what}: Content-Length {:?}, expected {}",
                    header(&h, "content-length"),
                    image.manifest.len()
                );
                ensure!(
                    header(&h, "docker-content-digest") == image.digest,
                    "{what}: Docker-Content-Digest"
                );
                ensure!(
                    header(&h, "content-type") == OCI_MANIFEST,
                    "{what}: Content-Type {:?}",
                    header(&h, "content-type")
                );
                ensure!(resp.bytes().await?.is_empty(), "{what}: non-empty body");
            }
            Ok(())
        })
        .await;
}

// ---------------------------------------------------------------- push: blobs

#[tokio::test]
async fn single_post_with_digest_creates_the_blob() {
    // Proves: POST /blobs/uploads/?digest= with the whole body completes the upload in
    // one request (201 + Location + Docker-Content-Digest) and the blob reads back.
    // (The spec lets a registry answer 202 instead; berth commits to single POST.)
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/single-post");
            let data = random_bytes(120_000);
            let digest = sha256_digest(&data);
            let resp = t
                .oci
                .http()
                .post(with_query(&t.oci.uploads_url(&repo), "digest", &digest))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(data.clone())
                .send()
                .await?;
            let what = "POST /blobs/uploads/?digest= with body";
            ensure!(
                resp.status() == StatusCode::CREATED,
                "{what}: expected 201, got {}",
                resp.status()
            );
            let location = header(resp.headers(), "location");
            ensure!(!location.is_empty(), "{what}: no Location");
            let dcd = header(resp.headers(), "docker-content-digest");
            ensure!(dcd == digest, "{what}: Docker-Content-Digest {dcd:?}");
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == data,
                "blob bytes differ after single POST"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn post_then_put_creates_the_blob_at_its_location() {
    // Proves: POST (202 + Location) then PUT ?digest= with the body answers 201 with a
    // Location that serves the blob and the blob's Docker-Content-Digest.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/post-put");
            let data = random_bytes(200_000);
            let digest = sha256_digest(&data);
            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .put(with_query(&location, "digest", &digest))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(data.clone())
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::CREATED,
                "PUT ?digest=: expected 201, got {}",
                resp.status()
            );
            let blob_location = header(resp.headers(), "location");
            ensure!(!blob_location.is_empty(), "PUT ?digest=: no Location");
            ensure!(
                header(resp.headers(), "docker-content-digest") == digest,
                "PUT ?digest=: Docker-Content-Digest"
            );
            let resp = t
                .oci
                .http()
                .get(t.oci.resolve(&blob_location))
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET {blob_location}: {}",
                resp.status()
            );
            ensure!(
                resp.bytes().await?.as_ref() == data.as_slice(),
                "GET {blob_location}: bytes differ"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn chunked_upload_reports_range_and_location_and_accepts_last_chunk_in_put() {
    // Proves: PATCH chunks with Content-Range each answer 202 with Location and
    // Range: 0-<end>; the last chunk may ride on the closing PUT; the blob is exact.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/chunked");
            let data = random_bytes(3 * 65_536 + 1000);
            let digest = sha256_digest(&data);
            let mut location = t.oci.start_upload(&repo).await?;
            let chunk = 65_536;
            let mut offset = 0;
            for _ in 0..3 {
                let end = offset + chunk - 1;
                let resp = t
                    .oci
                    .http()
                    .patch(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", format!("{offset}-{end}"))
                    .body(data[offset..=end].to_vec())
                    .send()
                    .await?;
                let what = format!("PATCH Content-Range {offset}-{end}");
                let range = header(resp.headers(), "range");
                location = upload_location(&t.oci, resp, StatusCode::ACCEPTED, &what).await?;
                ensure!(
                    range == format!("0-{end}"),
                    "{what}: Range {range:?}, expected 0-{end}"
                );
                offset = end + 1;
            }
            let resp = t
                .oci
                .http()
                .put(with_query(&location, "digest", &digest))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("{offset}-{}", data.len() - 1))
                .body(data[offset..].to_vec())
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::CREATED,
                "closing PUT with last chunk: {}",
                resp.status()
            );
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == data,
                "chunked blob bytes differ"
            );

            let again = random_bytes(300_001);
            let digest = t.oci.push_blob_chunked(&repo, &again, 100_000).await?;
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == again,
                "chunked blob (empty PUT) bytes differ"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn out_of_order_chunk_is_rejected_with_416_and_upload_continues() {
    // Proves: a PATCH whose Content-Range does not start at the current offset answers
    // 416, leaves the session intact (GET still reports 0-999), and the upload can then
    // continue in order and complete with the exact bytes.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/ooo");
            let data = random_bytes(2000);
            let digest = sha256_digest(&data);
            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "0-999")
                .body(data[..1000].to_vec())
                .send()
                .await?;
            let location =
                upload_location(&t.oci, resp, StatusCode::ACCEPTED, "PATCH 0-999").await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "1500-2499")
                .body(random_bytes(1000))
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::RANGE_NOT_SATISFIABLE,
                "PATCH 1500-2499 after 0-999: expected 416, got {}",
                resp.status()
            );
            let resp = t.oci.http().get(&location).send().await?;
            ensure!(
                resp.status() == StatusCode::NO_CONTENT,
                "GET upload after 416: {}",
                resp.status()
            );
            let range = header(resp.headers(), "range");
            ensure!(
                range == "0-999",
                "GET upload after 416: Range {range:?}, expected 0-999"
            );
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "1000-1999")
                .body(data[1000..].to_vec())
                .send()
                .await?;
            let location =
                upload_location(&t.oci, resp, StatusCode::ACCEPTED, "PATCH 1000-1999").await?;
            let resp = t
                .oci
                .http()
                .put(with_query(&location, "digest", &digest))
                .header(CONTENT_LENGTH, "0")
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::CREATED,
                "closing PUT: {}",
                resp.status()
            );
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == data,
                "bytes differ after 416 recovery"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn upload_status_get_returns_204_with_range_and_location() {
    // Proves: GET on an upload session answers 204 with Location and Range: 0-<last byte>.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/status");
            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "0-4095")
                .body(random_bytes(4096))
                .send()
                .await?;
            let location =
                upload_location(&t.oci, resp, StatusCode::ACCEPTED, "PATCH 0-4095").await?;
            let resp = t.oci.http().get(&location).send().await?;
            ensure!(
                resp.status() == StatusCode::NO_CONTENT,
                "GET upload: expected 204, got {}",
                resp.status()
            );
            let range = header(resp.headers(), "range");
            ensure!(
                range == "0-4095",
                "GET upload: Range {range:?}, expected 0-4095"
            );
            ensure!(
                !header(resp.headers(), "location").is_empty(),
                "GET upload: no Location"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn cancelled_upload_is_unknown_afterwards() {
    // Proves: DELETE on an upload session answers 204, after which the session answers
    // 404 BLOB_UPLOAD_UNKNOWN to GET, PATCH and PUT, and nothing was stored.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/cancel");
            let data = random_bytes(5000);
            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "0-4999")
                .body(data.clone())
                .send()
                .await?;
            let location =
                upload_location(&t.oci, resp, StatusCode::ACCEPTED, "PATCH 0-4999").await?;
            let status = status_of(t.oci.http().delete(&location)).await?;
            ensure!(
                status == StatusCode::NO_CONTENT,
                "DELETE upload: expected 204, got {status}"
            );
            expect_error_for(
                "GET cancelled upload",
                t.oci.http().get(&location),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            expect_error_for(
                "PATCH cancelled upload",
                t.oci
                    .http()
                    .patch(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", "5000-5009")
                    .body(random_bytes(10)),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            expect_error_for(
                "PUT cancelled upload",
                t.oci
                    .http()
                    .put(with_query(&location, "digest", &sha256_digest(&data)))
                    .header(CONTENT_LENGTH, "0"),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            let status = status_of(
                t.oci
                    .request(Method::HEAD, &t.oci.blob_url(&repo, &sha256_digest(&data))),
            )
            .await?;
            ensure!(
                status == StatusCode::NOT_FOUND,
                "HEAD blob of a cancelled upload: {status}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn streamed_patch_without_content_range_is_accepted() {
    // Proves: PATCH bodies without Content-Range (Docker's streamed upload) append in
    // order, each 202 reports the growing Range, and the closing PUT commits them.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/stream");
            let data = random_bytes(80_000);
            let digest = sha256_digest(&data);
            let mut location = t.oci.start_upload(&repo).await?;
            for (part, end) in [(&data[..50_000], 49_999), (&data[50_000..], 79_999)] {
                let resp = t
                    .oci
                    .http()
                    .patch(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(part.to_vec())
                    .send()
                    .await?;
                let range = header(resp.headers(), "range");
                location =
                    upload_location(&t.oci, resp, StatusCode::ACCEPTED, "streamed PATCH").await?;
                ensure!(
                    range == format!("0-{end}"),
                    "streamed PATCH: Range {range:?}, expected 0-{end}"
                );
            }
            let resp = t
                .oci
                .http()
                .put(with_query(&location, "digest", &digest))
                .header(CONTENT_LENGTH, "0")
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::CREATED,
                "closing PUT: {}",
                resp.status()
            );
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == data,
                "streamed blob bytes differ"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn digest_mismatch_is_digest_invalid_and_stores_nothing() {
    // Proves: closing an upload (monolithic or chunked) with a digest that does not match
    // the bytes answers 400 DIGEST_INVALID and neither digest becomes readable.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/mismatch");
            let canary = t.oci.push_image(&repo, Some("canary"), &[3000]).await?;
            let data = random_bytes(40_000);
            let claimed = sha256_digest(&random_bytes(40_000));
            let location = t.oci.start_upload(&repo).await?;
            bad(
                t,
                &canary,
                "PUT ?digest=<other> with body",
                t.oci
                    .http()
                    .put(with_query(&location, "digest", &claimed))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone()),
                400,
                "DIGEST_INVALID",
            )
            .await?;

            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("0-{}", data.len() - 1))
                .body(data.clone())
                .send()
                .await?;
            let location = upload_location(&t.oci, resp, StatusCode::ACCEPTED, "PATCH").await?;
            bad(
                t,
                &canary,
                "chunked upload closed with PUT ?digest=<other>",
                t.oci
                    .http()
                    .put(with_query(&location, "digest", &claimed))
                    .header(CONTENT_LENGTH, "0"),
                400,
                "DIGEST_INVALID",
            )
            .await?;
            for digest in [claimed.as_str(), &sha256_digest(&data)] {
                let status =
                    status_of(t.oci.request(Method::HEAD, &t.oci.blob_url(&repo, digest))).await?;
                ensure!(
                    status == StatusCode::NOT_FOUND,
                    "HEAD {digest} after a rejected upload: {status}"
                );
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn cross_repo_mount_links_the_blob_into_the_target() {
    // Proves: POST ?mount=<digest>&from=<repo> of a blob the source links answers 201
    // with Location and Docker-Content-Digest, and the blob then reads back in the
    // target repository, which did not link it before.
    Target::conformance()
        .await
        .run(async |t| {
            let source = unique_repo("conf/mount-src");
            let target = unique_repo("conf/mount-dst");
            let data = random_bytes(150_000);
            let digest = t.oci.push_blob(&source, &data).await?;
            t.oci.push_image(&target, Some("seed"), &[100]).await?;
            let status = status_of(
                t.oci
                    .request(Method::HEAD, &t.oci.blob_url(&target, &digest)),
            )
            .await?;
            ensure!(
                status == StatusCode::NOT_FOUND,
                "HEAD in target before mount: expected 404, got {status}"
            );
            let url = with_query(
                &with_query(&t.oci.uploads_url(&target), "mount", &digest),
                "from",
                &source,
            );
            let resp = t
                .oci
                .http()
                .post(url)
                .header(CONTENT_LENGTH, "0")
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::CREATED,
                "mount: expected 201, got {}",
                resp.status()
            );
            ensure!(
                !header(resp.headers(), "location").is_empty(),
                "mount: no Location"
            );
            let dcd = header(resp.headers(), "docker-content-digest");
            ensure!(dcd == digest, "mount: Docker-Content-Digest {dcd:?}");
            ensure!(
                t.oci.fetch_blob(&target, &digest).await? == data,
                "mounted blob bytes differ"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn mount_of_an_unknown_or_unlinked_blob_falls_back_to_an_upload() {
    // Proves: a mount of a digest the registry does not have, or that the `from`
    // repository does not link, answers 202 with an upload Location (no 201, no error),
    // and that session completes a normal upload.
    Target::conformance()
        .await
        .run(async |t| {
            let source = unique_repo("conf/mount-src");
            let other = unique_repo("conf/mount-other");
            let target = unique_repo("conf/mount-dst");
            t.oci.push_image(&source, Some("seed"), &[100]).await?;
            let elsewhere = t.oci.push_blob(&other, &random_bytes(1000)).await?;
            let data = random_bytes(10_000);
            let unknown = sha256_digest(&data);
            for digest in [unknown.as_str(), elsewhere.as_str()] {
                let url = with_query(
                    &with_query(&t.oci.uploads_url(&target), "mount", digest),
                    "from",
                    &source,
                );
                let resp = t
                    .oci
                    .http()
                    .post(url)
                    .header(CONTENT_LENGTH, "0")
                    .send()
                    .await?;
                let location = upload_location(
                    &t.oci,
                    resp,
                    StatusCode::ACCEPTED,
                    &format!("mount of {digest}"),
                )
                .await?;
                if digest == unknown {
                    let resp = t
                        .oci
                        .http()
                        .put(with_query(&location, "digest", digest))
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(data.clone())
                        .send()
                        .await?;
                    ensure!(
                        resp.status() == StatusCode::CREATED,
                        "upload after mount fallback: {}",
                        resp.status()
                    );
                }
            }
            ensure!(
                t.oci.fetch_blob(&target, &unknown).await? == data,
                "fallback upload bytes differ"
            );
            let status = status_of(
                t.oci
                    .request(Method::HEAD, &t.oci.blob_url(&target, &elsewhere)),
            )
            .await?;
            ensure!(
                status == StatusCode::NOT_FOUND,
                "unlinked blob readable in target after refused mount: {status}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn sha512_blob_round_trips() {
    // Proves: a blob uploaded with a sha512 digest is verified, committed and readable
    // (GET and HEAD) by its sha512 digest.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/sha512");
            let data = random_bytes(70_000);
            let digest = sha512_digest(&data);
            t.oci.push_blob_with_digest(&repo, &data, &digest).await?;
            ensure!(
                t.oci.fetch_blob(&repo, &digest).await? == data,
                "sha512 blob bytes differ"
            );
            let resp = t
                .oci
                .request(Method::HEAD, &t.oci.blob_url(&repo, &digest))
                .send()
                .await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "HEAD sha512 blob: {}",
                resp.status()
            );
            ensure!(
                header(resp.headers(), "content-length") == "70000",
                "HEAD sha512 blob: Content-Length"
            );
            let location = t.oci.start_upload(&repo).await?;
            let wrong = sha512_digest(&random_bytes(10));
            expect_error_for(
                "PUT ?digest=<wrong sha512>",
                t.oci
                    .http()
                    .put(with_query(&location, "digest", &wrong))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone()),
                400,
                "DIGEST_INVALID",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_blob_all_succeed() {
    // Proves: eight concurrent uploads of the same bytes to the same repository all answer
    // 201 and the blob then reads back exactly (commits of one digest do not race).
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/same-blob");
            let data = random_bytes(700_000);
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let oci = t.oci.clone();
                let (repo, data) = (repo.clone(), data.clone());
                tasks.push(tokio::spawn(
                    async move { oci.push_blob(&repo, &data).await },
                ));
            }
            for task in tasks {
                task.await??;
            }
            ensure!(
                t.oci.fetch_blob(&repo, &sha256_digest(&data)).await? == data,
                "blob bytes differ after concurrent uploads"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn patch_whose_content_range_disagrees_with_its_body_is_rejected() {
    // Proves: a PATCH whose Content-Range announces 100 bytes but carries 50 is refused
    // (400 or 416, never 202 or a 5xx), so the upload offset cannot drift from the bytes.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/range-mismatch");
            let location = t.oci.start_upload(&repo).await?;
            let resp = t
                .oci
                .http()
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", "0-99")
                .body(random_bytes(50))
                .send()
                .await?;
            let status = resp.status().as_u16();
            ensure!(
                status == 400 || status == 416,
                "PATCH Content-Range 0-99 with a 50-byte body: expected 400 or 416, got {status}: {}",
                resp.text().await.unwrap_or_default()
            );
            Ok(())
        })
        .await;
}

// ---------------------------------------------------------------- push: manifests

#[tokio::test]
async fn manifest_pushed_by_digest_reads_back() {
    // Proves: PUT /manifests/<digest> answers 201 and the manifest reads back by digest.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/by-digest");
            let image = t.oci.push_image(&repo, None, &[500]).await?;
            image.verify(&t.oci).await
        })
        .await;
}

#[tokio::test]
async fn pushing_a_tag_again_moves_it() {
    // Proves: a second manifest pushed under an existing tag replaces it, while the first
    // manifest stays readable by digest.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/retag");
            let mut first = t.oci.push_image(&repo, Some("latest"), &[500]).await?;
            let second = t.oci.push_image(&repo, Some("latest"), &[600]).await?;
            second.verify(&t.oci).await?;
            first.tag = None;
            first.verify(&t.oci).await
        })
        .await;
}

#[tokio::test]
async fn oci_index_round_trips() {
    // Proves: an OCI image index over two pushed manifests is accepted by tag and reads
    // back byte-identical with Content-Type application/vnd.oci.image.index.v1+json.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/index");
            let amd = t.oci.push_image(&repo, None, &[700]).await?;
            let arm = t.oci.push_image(&repo, None, &[800]).await?;
            let mut d_amd = amd.descriptor();
            d_amd["platform"] = json!({ "architecture": "amd64", "os": "linux" });
            let mut d_arm = arm.descriptor();
            d_arm["platform"] = json!({ "architecture": "arm64", "os": "linux", "variant": "v8" });
            let body = manifest_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [d_amd, d_arm],
            }));
            let digest = t
                .oci
                .push_manifest(&repo, "multi", OCI_INDEX, &body)
                .await?;
            let index = Image {
                repo: repo.clone(),
                tag: Some("multi".into()),
                media_type: OCI_INDEX.into(),
                manifest: body,
                digest,
                blobs: vec![],
            };
            index.verify(&t.oci).await?;
            amd.verify(&t.oci).await?;
            arm.verify(&t.oci).await
        })
        .await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list_round_trip() {
    // Proves: Docker schema2 manifests and a Docker manifest list over them are accepted
    // and read back byte-identical with their Docker media types.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/docker");
            let mut images = Vec::new();
            for (arch, tag) in [("amd64", "amd64"), ("arm64", "arm64")] {
                let layers = vec![
                    Blob::new(DOCKER_LAYER_GZIP, random_bytes(3000)),
                    Blob::new(DOCKER_LAYER_GZIP, random_bytes(4000)),
                ];
                let config = Blob::new(
                    DOCKER_CONFIG,
                    serde_json::to_vec(&json!({
                        "architecture": arch, "os": "linux", "config": {},
                        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>() },
                    }))?,
                );
                let body = manifest_bytes(&json!({
                    "schemaVersion": 2,
                    "mediaType": DOCKER_MANIFEST,
                    "config": config.descriptor(),
                    "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
                }));
                let mut blobs = vec![config];
                blobs.extend(layers);
                for blob in &blobs {
                    t.oci.push_blob(&repo, &blob.data).await?;
                }
                let digest = t.oci.push_manifest(&repo, tag, DOCKER_MANIFEST, &body).await?;
                images.push((
                    arch,
                    Image { repo: repo.clone(), tag: Some(tag.into()), media_type: DOCKER_MANIFEST.into(), manifest: body, digest, blobs },
                ));
            }
            let list = manifest_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_LIST,
                "manifests": images.iter().map(|(arch, image)| {
                    let mut d = image.descriptor();
                    d["platform"] = json!({ "architecture": arch, "os": "linux" });
                    d
                }).collect::<Vec<_>>(),
            }));
            let digest = t.oci.push_manifest(&repo, "multi", DOCKER_LIST, &list).await?;
            let list = Image { repo: repo.clone(), tag: Some("multi".into()), media_type: DOCKER_LIST.into(), manifest: list, digest, blobs: vec![] };
            list.verify(&t.oci).await?;
            for (_, image) in &images {
                image.verify(&t.oci).await?;
            }
            Ok(())
        })
        .await;
}

/// Pushes an artifact manifest with the empty config and one layer, optionally with an
/// `artifactType`, a `subject` and annotations.
async fn push_artifact(
    t: &Target,
    repo: &str,
    tag: Option<&str>,
    artifact_type: Option<&str>,
    subject: Option<&Image>,
    annotations: Value,
) -> Result<(Image, reqwest::header::HeaderMap)> {
    let empty = t.oci.push_blob(repo, EMPTY_CONFIG).await?;
    ensure!(empty == EMPTY_CONFIG_DIGEST, "digest of {{}} is {empty}");
    let layer = Blob::new("application/vnd.berth.test.file.v1", random_bytes(1500));
    t.oci.push_blob(repo, &layer.data).await?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_CONFIG_DIGEST, "size": 2, "data": "e30=" },
        "layers": [layer.descriptor()],
        "annotations": annotations,
    });
    if let Some(artifact_type) = artifact_type {
        manifest["artifactType"] = json!(artifact_type);
    }
    if let Some(subject) = subject {
        manifest["subject"] = subject.descriptor();
    }
    let body = manifest_bytes(&manifest);
    let digest = sha256_digest(&body);
    let reference = tag.map(str::to_string).unwrap_or_else(|| digest.clone());
    let resp = t
        .oci
        .put_manifest(repo, &reference, OCI_MANIFEST, &body)
        .await?;
    let headers = resp.headers().clone();
    let status = resp.status();
    ensure!(
        status == StatusCode::CREATED,
        "PUT artifact manifest: expected 201, got {status}: {}",
        resp.text().await?
    );
    ensure!(
        header(&headers, "docker-content-digest") == digest,
        "PUT artifact: Docker-Content-Digest"
    );
    let image = Image {
        repo: repo.to_string(),
        tag: tag.map(str::to_string),
        media_type: OCI_MANIFEST.into(),
        manifest: body,
        digest,
        blobs: vec![Blob::new(EMPTY_MEDIA_TYPE, EMPTY_CONFIG.to_vec()), layer],
    };
    Ok((image, headers))
}

#[tokio::test]
async fn artifact_manifest_with_empty_config_round_trips() {
    // Proves: an artifact (image manifest with artifactType and the empty config `{}`
    // of type application/vnd.oci.empty.v1+json) is accepted and reads back exactly.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/artifact");
            let (artifact, _) = push_artifact(
                t,
                &repo,
                Some("sbom"),
                Some("application/vnd.berth.test.sbom.v1+json"),
                None,
                json!({ "org.example.kind": "sbom" }),
            )
            .await?;
            artifact.verify(&t.oci).await
        })
        .await;
}

#[tokio::test]
async fn manifest_with_subject_answers_oci_subject_header() {
    // Proves: PUT of a manifest with a `subject` answers 201 with OCI-Subject: <subject
    // digest>, which tells clients the registry maintains the referrers list itself.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/subject");
            let image = t.oci.push_image(&repo, Some("v1"), &[900]).await?;
            let (_, headers) = push_artifact(
                t,
                &repo,
                None,
                Some("application/vnd.berth.test.sig.v1"),
                Some(&image),
                json!({}),
            )
            .await?;
            let subject = header(&headers, "oci-subject");
            ensure!(
                subject == image.digest,
                "PUT manifest with subject: OCI-Subject {subject:?}, expected {}",
                image.digest
            );
            Ok(())
        })
        .await;
}

async fn get_referrers(
    t: &Target,
    repo: &str,
    digest: &str,
    query: &str,
) -> Result<(reqwest::header::HeaderMap, Value)> {
    let url = t.oci.url(&format!("/v2/{repo}/referrers/{digest}{query}"));
    let resp = t.oci.http().get(&url).send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?;
    let what = format!("GET /v2/{repo}/referrers/{digest}{query}");
    ensure!(
        status == StatusCode::OK,
        "{what}: expected 200, got {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let content_type = header(&headers, "content-type");
    ensure!(
        content_type == OCI_INDEX,
        "{what}: Content-Type {content_type:?}, expected {OCI_INDEX}"
    );
    let value: Value =
        serde_json::from_slice(&body).with_context(|| format!("{what}: body is not JSON"))?;
    ensure!(
        value["schemaVersion"] == 2,
        "{what}: schemaVersion {}",
        value["schemaVersion"]
    );
    ensure!(
        value["mediaType"] == OCI_INDEX,
        "{what}: mediaType {}",
        value["mediaType"]
    );
    ensure!(
        value["manifests"].is_array(),
        "{what}: manifests is not an array: {value}"
    );
    Ok((headers, value))
}

#[tokio::test]
async fn referrers_api_lists_manifests_with_subject() {
    // Proves: GET /v2/<name>/referrers/<digest> answers an OCI index listing exactly the
    // manifests whose subject is <digest>, each with mediaType, digest, size, its
    // artifactType (the config media type when it has none) and its annotations.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/referrers");
            let image = t.oci.push_image(&repo, Some("v1"), &[900]).await?;
            let unrelated = t.oci.push_image(&repo, Some("v2"), &[901]).await?;
            let (sbom, _) = push_artifact(
                t,
                &repo,
                None,
                Some("application/vnd.berth.test.sbom.v1+json"),
                Some(&image),
                json!({ "org.example.format": "spdx", "org.opencontainers.image.created": "2025-01-01T00:00:00Z" }),
            )
            .await?;
            let (sig, _) = push_artifact(t, &repo, Some("sig"), Some("application/vnd.berth.test.sig.v1"), Some(&image), json!({ "org.example.signer": "ci" })).await?;
            push_artifact(t, &repo, None, Some("application/vnd.berth.test.sig.v1"), Some(&unrelated), json!({})).await?;
            // A referrer without artifactType: the descriptor takes the config media type.
            let config = Blob::new("application/vnd.berth.test.config.v1+json", br#"{"k":"v"}"#.to_vec());
            t.oci.push_blob(&repo, &config.data).await?;
            let plain_body = manifest_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [],
                "subject": image.descriptor(),
            }));
            let plain = t.oci.push_manifest(&repo, &sha256_digest(&plain_body), OCI_MANIFEST, &plain_body).await?;

            let (_, index) = get_referrers(t, &repo, &image.digest, "").await?;
            let listed = index["manifests"].as_array().cloned().unwrap_or_default();
            ensure!(listed.len() == 3, "expected 3 referrers, got {}: {index}", listed.len());
            let expected = [
                (sbom.digest.as_str(), sbom.manifest.len(), "application/vnd.berth.test.sbom.v1+json", serde_json::from_slice::<Value>(&sbom.manifest)?["annotations"].clone()),
                (sig.digest.as_str(), sig.manifest.len(), "application/vnd.berth.test.sig.v1", json!({ "org.example.signer": "ci" })),
                (plain.as_str(), plain_body.len(), "application/vnd.berth.test.config.v1+json", Value::Null),
            ];
            for (digest, size, artifact_type, annotations) in expected {
                let d = listed
                    .iter()
                    .find(|d| d["digest"] == digest)
                    .with_context(|| format!("referrer {digest} missing from {index}"))?;
                ensure!(d["mediaType"] == OCI_MANIFEST, "referrer {digest}: mediaType {}", d["mediaType"]);
                ensure!(d["size"] == size, "referrer {digest}: size {}, expected {size}", d["size"]);
                ensure!(d["artifactType"] == artifact_type, "referrer {digest}: artifactType {}, expected {artifact_type}", d["artifactType"]);
                if let Some(annotations) = annotations.as_object() {
                    for (k, v) in annotations {
                        ensure!(d["annotations"][k] == *v, "referrer {digest}: annotation {k} is {}, expected {v}", d["annotations"][k]);
                    }
                }
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn referrers_artifact_type_filter_is_applied_and_announced() {
    // Proves: ?artifactType= keeps only matching referrers and the response says so with
    // OCI-Filters-Applied: artifactType.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/referrers-filter");
            let image = t.oci.push_image(&repo, Some("v1"), &[900]).await?;
            push_artifact(
                t,
                &repo,
                None,
                Some("application/vnd.berth.test.sbom.v1+json"),
                Some(&image),
                json!({}),
            )
            .await?;
            let (sig, _) = push_artifact(
                t,
                &repo,
                None,
                Some("application/vnd.berth.test.sig.v1"),
                Some(&image),
                json!({}),
            )
            .await?;
            let query = format!(
                "?artifactType={}",
                berth_tests::oci::encode_query("application/vnd.berth.test.sig.v1")
            );
            let (headers, index) = get_referrers(t, &repo, &image.digest, &query).await?;
            let applied = header(&headers, "oci-filters-applied");
            ensure!(
                applied == "artifactType",
                "OCI-Filters-Applied {applied:?}, expected \"artifactType\""
            );
            let listed = index["manifests"].as_array().cloned().unwrap_or_default();
            ensure!(
                listed.len() == 1,
                "expected only the sig referrer, got {index}"
            );
            ensure!(
                listed[0]["digest"] == sig.digest.as_str(),
                "filtered referrer is {}, expected {}",
                listed[0]["digest"],
                sig.digest
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn referrers_of_a_digest_without_referrers_is_an_empty_index() {
    // Proves: the referrers of a digest nothing refers to (known or not) answer 200 with an
    // OCI index whose manifests list is empty, never 404.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/referrers-none");
            let image = t.oci.push_image(&repo, Some("v1"), &[900]).await?;
            for digest in [image.digest.clone(), sha256_digest(&random_bytes(64))] {
                let (_, index) = get_referrers(t, &repo, &digest, "").await?;
                ensure!(
                    index["manifests"] == json!([]),
                    "referrers of {digest}: expected [], got {}",
                    index["manifests"]
                );
            }
            Ok(())
        })
        .await;
}

// ---------------------------------------------------------------- content discovery

#[tokio::test]
async fn tags_list_is_sorted_and_paginates_with_n_last_and_link() {
    // Proves: tags/list returns every tag in lexical order; ?n= returns the first n with a
    // Link rel="next" that, followed, yields the rest in order and ends without a Link;
    // ?last= starts after the given tag, with or without n.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/tags");
            let image = t.oci.push_image(&repo, Some("b"), &[300]).await?;
            for tag in ["a9", "0z", "c", "a10"] {
                t.oci
                    .push_manifest(&repo, tag, OCI_MANIFEST, &image.manifest)
                    .await?;
            }
            let sorted = ["0z", "a10", "a9", "b", "c"];

            let (status, _, body) = t.oci.tags_list(&repo, "").await?;
            ensure!(status == StatusCode::OK, "tags/list: {status}");
            ensure!(
                body["name"] == repo.as_str(),
                "tags/list: name {}",
                body["name"]
            );
            ensure!(string_list(&body, "tags")? == sorted, "tags/list: {body}");

            let (status, link, body) = t.oci.tags_list(&repo, "?n=2").await?;
            ensure!(status == StatusCode::OK, "tags/list?n=2: {status}");
            ensure!(
                string_list(&body, "tags")? == sorted[..2],
                "tags/list?n=2: {body}"
            );
            let mut next = next_link(t, &link)
                .with_context(|| format!("tags/list?n=2: no Link rel=\"next\" (Link: {link:?})"))?;
            let mut all = string_list(&body, "tags")?;
            for _ in 0..PAGES_MAX {
                let (status, link, body) = t.oci.get_json(&next).await?;
                ensure!(status == StatusCode::OK, "GET {next}: {status}");
                let page = string_list(&body, "tags")?;
                ensure!(page.len() <= 2, "GET {next}: {} tags for n=2", page.len());
                all.extend(page);
                match next_link(t, &link) {
                    Some(url) => next = url,
                    None => break,
                }
            }
            ensure!(all == sorted, "tags collected through Link pages: {all:?}");

            let (_, link, body) = t.oci.tags_list(&repo, "?n=2&last=a9").await?;
            ensure!(
                string_list(&body, "tags")? == ["b", "c"],
                "tags/list?n=2&last=a9: {body}"
            );
            // A Link after the last tag is allowed, but must lead to an empty, final page.
            if let Some(url) = next_link(t, &link) {
                let (status, link, body) = t.oci.get_json(&url).await?;
                ensure!(
                    status == StatusCode::OK,
                    "GET {url} (past the last tag): {status}"
                );
                ensure!(
                    string_list(&body, "tags")?.is_empty(),
                    "GET {url} (past the last tag): {body}"
                );
                ensure!(
                    next_link(t, &link).is_none(),
                    "GET {url} (past the last tag): another Link {link:?}"
                );
            }
            let (_, _, body) = t.oci.tags_list(&repo, "?last=a10").await?;
            ensure!(
                string_list(&body, "tags")? == ["a9", "b", "c"],
                "tags/list?last=a10: {body}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn catalog_lists_repositories_in_order_with_n_last_and_link() {
    // Proves: _catalog?n=&last= pages through repositories in lexical order, each page at
    // most n long, linked by Link rel="next", and every pushed repository appears.
    Target::conformance()
        .await
        .run(async |t| {
            let prefix = format!("conf/catalog-{}", random_suffix(8));
            let mut repos: Vec<String> = ["e", "a", "d", "b", "c"]
                .iter()
                .map(|s| format!("{prefix}/{s}"))
                .collect();
            for repo in &repos {
                t.oci.push_image(repo, Some("v1"), &[100]).await?;
            }
            repos.sort();
            let mut url = t.oci.url(&format!(
                "/v2/_catalog?n=2&last={}",
                berth_tests::oci::encode_query(&prefix)
            ));
            let mut seen: Vec<String> = Vec::new();
            for _ in 0..PAGES_MAX {
                let (status, link, body) = t.oci.get_json(&url).await?;
                ensure!(status == StatusCode::OK, "GET {url}: {status}");
                let page = string_list(&body, "repositories")?;
                ensure!(
                    page.len() <= 2,
                    "GET {url}: {} repositories for n=2",
                    page.len()
                );
                seen.extend(page.iter().filter(|r| r.starts_with(&prefix)).cloned());
                let past_prefix = page.iter().any(|r| !r.starts_with(&prefix));
                if past_prefix || seen.len() >= repos.len() && link.is_empty() {
                    break;
                }
                match next_link(t, &link) {
                    Some(next) => url = next,
                    None => break,
                }
            }
            ensure!(
                seen == repos,
                "catalog pages gave {seen:?}, expected {repos:?}"
            );
            let first = t.oci.url(&format!(
                "/v2/_catalog?n=2&last={}",
                berth_tests::oci::encode_query(&prefix)
            ));
            let (_, link, body) = t.oci.get_json(&first).await?;
            ensure!(
                string_list(&body, "repositories")? == repos[..2],
                "first catalog page: {body}"
            );
            ensure!(
                next_link(t, &link).is_some(),
                "first catalog page of 5: no Link rel=\"next\" ({link:?})"
            );
            Ok(())
        })
        .await;
}

// ---------------------------------------------------------------- content management

#[tokio::test]
async fn deleted_blob_is_blob_unknown() {
    // Proves: DELETE of a blob answers 202, after which GET answers 404 BLOB_UNKNOWN,
    // HEAD 404, and a second DELETE 404 BLOB_UNKNOWN.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/delete-blob");
            let digest = t.oci.push_blob(&repo, &random_bytes(5000)).await?;
            let status = status_of(t.oci.http().delete(t.oci.blob_url(&repo, &digest))).await?;
            ensure!(
                status == StatusCode::ACCEPTED,
                "DELETE blob: expected 202, got {status}"
            );
            expect_error_for(
                "GET deleted blob",
                t.oci.http().get(t.oci.blob_url(&repo, &digest)),
                404,
                "BLOB_UNKNOWN",
            )
            .await?;
            let status =
                status_of(t.oci.request(Method::HEAD, &t.oci.blob_url(&repo, &digest))).await?;
            ensure!(
                status == StatusCode::NOT_FOUND,
                "HEAD deleted blob: {status}"
            );
            expect_error_for(
                "DELETE deleted blob",
                t.oci.http().delete(t.oci.blob_url(&repo, &digest)),
                404,
                "BLOB_UNKNOWN",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn deleted_manifest_is_manifest_unknown_and_its_tags_are_gone() {
    // Proves: DELETE /manifests/<digest> answers 202; the manifest then answers 404
    // MANIFEST_UNKNOWN by digest and by every tag that pointed at it, the tags leave the
    // tag list, and another image in the repository is untouched.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/delete-manifest");
            let doomed = t.oci.push_image(&repo, Some("a"), &[400]).await?;
            t.oci
                .push_manifest(&repo, "a2", OCI_MANIFEST, &doomed.manifest)
                .await?;
            let kept = t.oci.push_image(&repo, Some("b"), &[500]).await?;
            let status = status_of(
                t.oci
                    .http()
                    .delete(t.oci.manifest_url(&repo, &doomed.digest)),
            )
            .await?;
            ensure!(
                status == StatusCode::ACCEPTED,
                "DELETE manifest by digest: expected 202, got {status}"
            );
            for reference in [doomed.digest.as_str(), "a", "a2"] {
                let resp = t.oci.get_manifest(&repo, reference).await?;
                expect_error(
                    &format!("GET deleted manifest by {reference}"),
                    resp,
                    404,
                    "MANIFEST_UNKNOWN",
                )
                .await?;
            }
            let (status, _, body) = t.oci.tags_list(&repo, "").await?;
            ensure!(status == StatusCode::OK, "tags/list after delete: {status}");
            ensure!(
                string_list(&body, "tags")? == ["b"],
                "tags/list after delete: {body}"
            );
            kept.verify(&t.oci).await?;
            expect_error_for(
                "DELETE deleted manifest",
                t.oci
                    .http()
                    .delete(t.oci.manifest_url(&repo, &doomed.digest)),
                404,
                "MANIFEST_UNKNOWN",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn deleted_tag_is_gone_but_its_manifest_stays() {
    // Proves: DELETE /manifests/<tag> answers 202 and removes only that tag: the tag then
    // answers 404 MANIFEST_UNKNOWN, while the manifest and its other tag still read back.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/delete-tag");
            let image = t.oci.push_image(&repo, Some("keep"), &[400]).await?;
            t.oci
                .push_manifest(&repo, "drop", OCI_MANIFEST, &image.manifest)
                .await?;
            let status = status_of(t.oci.http().delete(t.oci.manifest_url(&repo, "drop"))).await?;
            ensure!(
                status == StatusCode::ACCEPTED,
                "DELETE /manifests/drop: expected 202, got {status}"
            );
            expect_error(
                "GET deleted tag",
                t.oci.get_manifest(&repo, "drop").await?,
                404,
                "MANIFEST_UNKNOWN",
            )
            .await?;
            image.verify(&t.oci).await?;
            let (_, _, body) = t.oci.tags_list(&repo, "").await?;
            ensure!(
                string_list(&body, "tags")? == ["keep"],
                "tags/list after tag delete: {body}"
            );
            Ok(())
        })
        .await;
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn invalid_repository_names_are_name_invalid() {
    // Proves: repository names with uppercase letters, `..`, bad separators or more than
    // 255 characters answer 400 NAME_INVALID on every endpoint (never 5xx), a `..` path
    // segment included, and nothing else is damaged.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/names").await?;
            let long = format!("n/{}", "a".repeat(254));
            let names = [
                "Upper/case",
                "lower/Case",
                "a..b",
                "-lead",
                "trail-/x",
                "a__-b",
                long.as_str(),
            ];
            let blob = &canary.blobs[0];
            let body = oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1]]);
            for name in names {
                let o = &t.oci;
                let cases = [
                    (
                        "GET tags/list",
                        o.http().get(o.url(&format!("/v2/{name}/tags/list"))),
                    ),
                    ("GET manifest", o.http().get(o.manifest_url(name, "latest"))),
                    (
                        "PUT manifest",
                        o.http()
                            .put(o.manifest_url(name, "v1"))
                            .header(CONTENT_TYPE, OCI_MANIFEST)
                            .body(body.clone()),
                    ),
                    ("GET blob", o.http().get(o.blob_url(name, &blob.digest))),
                    (
                        "POST upload",
                        o.http()
                            .post(o.uploads_url(name))
                            .header(CONTENT_LENGTH, "0"),
                    ),
                ];
                for (what, req) in cases {
                    bad(
                        t,
                        &canary,
                        &format!("{what} with name {name:?}"),
                        req,
                        400,
                        "NAME_INVALID",
                    )
                    .await?;
                }
            }
            for path in [
                "/v2/x/../y/tags/list",
                "/v2/x/./y/manifests/latest",
                "/v2/../blobs/uploads/",
            ] {
                let method = if path.ends_with("uploads/") {
                    "POST"
                } else {
                    "GET"
                };
                let resp = raw_request(t.addr(), method, path, &[], b"")?;
                let what = format!("raw {method} {path}");
                ensure!(resp.status < 500, "{what}: server error {}", resp.status);
                ensure!(
                    resp.status == 400,
                    "{what}: expected 400 NAME_INVALID, got {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
                let value: Value = serde_json::from_slice(&resp.body)
                    .with_context(|| format!("{what}: body not JSON"))?;
                ensure!(
                    value["errors"][0]["code"] == "NAME_INVALID",
                    "{what}: {value}"
                );
                canary.verify(&t.oci).await?;
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn invalid_tags_are_tag_invalid() {
    // Proves: tags that break [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} answer 400 TAG_INVALID on
    // PUT, GET and DELETE of /manifests/<tag>, and nothing is stored or damaged.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/tags-invalid").await?;
            let body = oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1]]);
            let long = "t".repeat(129);
            for tag in ["-lead", ".lead", "a+b", "a~b", long.as_str()] {
                let o = &t.oci;
                let url = o.manifest_url(&canary.repo, tag);
                bad(
                    t,
                    &canary,
                    &format!("PUT manifest tag {tag:?}"),
                    o.http()
                        .put(&url)
                        .header(CONTENT_TYPE, OCI_MANIFEST)
                        .body(body.clone()),
                    400,
                    "TAG_INVALID",
                )
                .await?;
                bad(
                    t,
                    &canary,
                    &format!("GET manifest tag {tag:?}"),
                    o.get_manifest_request(&canary.repo, tag),
                    400,
                    "TAG_INVALID",
                )
                .await?;
                bad(
                    t,
                    &canary,
                    &format!("DELETE manifest tag {tag:?}"),
                    o.http().delete(&url),
                    400,
                    "TAG_INVALID",
                )
                .await?;
            }
            let (_, _, list) = t.oci.tags_list(&canary.repo, "").await?;
            ensure!(
                string_list(&list, "tags")? == ["canary"],
                "tags after invalid pushes: {list}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn malformed_digests_are_digest_invalid() {
    // Proves: malformed digests (too short, too long, uppercase or non-hex, no algorithm
    // separator, missing) answer 400 DIGEST_INVALID on blob, manifest, upload and
    // referrers endpoints, and nothing is damaged.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/digests").await?;
            let repo = canary.repo.clone();
            let o = &t.oci;
            let hex64 = "a".repeat(64);
            let bad_digests = [
                "sha256:abc".to_string(),
                format!("sha256:{}", &hex64[..63]),
                format!("sha256:{hex64}0"),
                format!("sha256:{}", "A".repeat(64)),
                format!("sha256:{}", "z".repeat(64)),
                format!("sha512:{hex64}"),
            ];
            for d in &bad_digests {
                bad(
                    t,
                    &canary,
                    &format!("GET blob {d}"),
                    o.http().get(o.blob_url(&repo, d)),
                    400,
                    "DIGEST_INVALID",
                )
                .await?;
                bad(
                    t,
                    &canary,
                    &format!("DELETE blob {d}"),
                    o.http().delete(o.blob_url(&repo, d)),
                    400,
                    "DIGEST_INVALID",
                )
                .await?;
                bad(
                    t,
                    &canary,
                    &format!("GET manifest {d}"),
                    o.get_manifest_request(&repo, d),
                    400,
                    "DIGEST_INVALID",
                )
                .await?;
                bad(
                    t,
                    &canary,
                    &format!("GET referrers {d}"),
                    o.http().get(o.url(&format!("/v2/{repo}/referrers/{d}"))),
                    400,
                    "DIGEST_INVALID",
                )
                .await?;
                let location = o.start_upload(&repo).await?;
                bad(
                    t,
                    &canary,
                    &format!("PUT upload ?digest={d}"),
                    o.http()
                        .put(with_query(&location, "digest", d))
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(random_bytes(100)),
                    400,
                    "DIGEST_INVALID",
                )
                .await?;
            }
            let location = o.start_upload(&repo).await?;
            bad(
                t,
                &canary,
                "PUT upload without ?digest=",
                o.http()
                    .put(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(random_bytes(100)),
                400,
                "DIGEST_INVALID",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn manifest_that_is_not_json_or_of_unknown_type_is_manifest_invalid() {
    // Proves: a manifest body that is not JSON, is truncated JSON, or has an unknown media
    // type answers 400 MANIFEST_INVALID, stores nothing under the tag, damages nothing.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-invalid").await?;
            let o = &t.oci;
            let good = oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1]]);
            let truncated = good[..good.len() / 2].to_vec();
            let unknown = manifest_bytes(&json!({ "schemaVersion": 2, "mediaType": "application/vnd.berth.unknown.v1+json" }));
            let cases: [(&str, &str, Vec<u8>); 4] = [
                ("not JSON", OCI_MANIFEST, b"this is not json".to_vec()),
                ("truncated JSON", OCI_MANIFEST, truncated),
                ("unknown media type", "application/vnd.berth.unknown.v1+json", unknown),
                ("JSON array", OCI_MANIFEST, b"[1,2,3]".to_vec()),
            ];
            for (what, media_type, body) in cases {
                let req = o.http().put(o.manifest_url(&canary.repo, "broken")).header(CONTENT_TYPE, media_type).body(body);
                bad(t, &canary, &format!("PUT manifest: {what}"), req, 400, "MANIFEST_INVALID").await?;
            }
            expect_error("GET tag of rejected manifests", o.get_manifest(&canary.repo, "broken").await?, 404, "MANIFEST_UNKNOWN").await
        })
        .await;
}

#[tokio::test]
async fn manifest_content_type_mismatching_its_media_type_is_manifest_invalid() {
    // Proves: a manifest whose Content-Type differs from its mediaType field answers 400
    // MANIFEST_INVALID (an OCI manifest sent as Docker schema2, an OCI index sent as an
    // OCI manifest).
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-ct").await?;
            let o = &t.oci;
            let manifest = oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1]]);
            let index = manifest_bytes(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [canary.descriptor()] }));
            let cases = [("OCI manifest as Docker schema2", DOCKER_MANIFEST, manifest), ("OCI index as OCI manifest", OCI_MANIFEST, index)];
            for (what, content_type, body) in cases {
                let req = o.http().put(o.manifest_url(&canary.repo, "mismatch")).header(CONTENT_TYPE, content_type).body(body);
                bad(t, &canary, &format!("PUT {what}"), req, 400, "MANIFEST_INVALID").await?;
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn manifest_referencing_a_missing_blob_is_manifest_blob_unknown() {
    // Proves: a manifest naming a layer or config the repository does not have (also one
    // that only another repository links), or an index naming an unknown manifest,
    // answers 400 MANIFEST_BLOB_UNKNOWN and is not stored.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-blob").await?;
            let o = &t.oci;
            let missing = Blob::new(OCI_LAYER_GZIP, random_bytes(1000));
            let foreign = Blob::new(OCI_LAYER_GZIP, random_bytes(1001));
            o.push_blob(&unique_repo("conf/foreign"), &foreign.data).await?;
            let missing_config = Blob::new(OCI_CONFIG, b"{\"os\":\"linux\"}".to_vec());
            let unknown_manifest = json!({ "mediaType": OCI_MANIFEST, "digest": sha256_digest(&random_bytes(10)), "size": 10 });
            let cases = [
                ("missing layer", OCI_MANIFEST, oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1], &missing])),
                ("layer linked only by another repository", OCI_MANIFEST, oci_manifest_for(&canary.blobs[0], &[&foreign])),
                ("missing config", OCI_MANIFEST, oci_manifest_for(&missing_config, &[&canary.blobs[1]])),
                ("index naming an unknown manifest", OCI_INDEX, manifest_bytes(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [unknown_manifest] }))),
            ];
            for (what, media_type, body) in cases {
                let req = o.http().put(o.manifest_url(&canary.repo, "dangling")).header(CONTENT_TYPE, media_type).body(body);
                bad(t, &canary, &format!("PUT manifest with {what}"), req, 400, "MANIFEST_BLOB_UNKNOWN").await?;
            }
            expect_error("GET tag of rejected manifests", o.get_manifest(&canary.repo, "dangling").await?, 404, "MANIFEST_UNKNOWN").await
        })
        .await;
}

/// An OCI manifest over `canary`'s blobs padded with an annotation to exactly `size` bytes.
fn manifest_of_size(canary: &Image, size: usize) -> Vec<u8> {
    let mut value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": canary.blobs[0].descriptor(),
        "layers": [canary.blobs[1].descriptor()],
        "annotations": { "org.example.padding": "" },
    });
    let base = serde_json::to_vec(&value).expect("serializes").len();
    value["annotations"]["org.example.padding"] = json!("p".repeat(size.saturating_sub(base)));
    serde_json::to_vec(&value).expect("serializes")
}

#[tokio::test]
async fn manifest_larger_than_4_mib_is_413_size_invalid() {
    // Proves: a manifest of 4 MiB + 1 byte answers 413 SIZE_INVALID (not a 5xx, not a
    // truncated store) and nothing is damaged.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-size").await?;
            let body = manifest_of_size(&canary, 4 * 1024 * 1024 + 1);
            ensure!(
                body.len() == 4 * 1024 * 1024 + 1,
                "built {} bytes",
                body.len()
            );
            let o = &t.oci;
            // Raw socket: the registry may answer 413 before reading the whole body and
            // close, which reqwest reports as a write error instead of the response.
            let path = format!("/v2/{}/manifests/huge", canary.repo);
            let what = "PUT manifest of 4 MiB + 1";
            let resp = raw_request(
                t.addr(),
                "PUT",
                &path,
                &[("Content-Type", OCI_MANIFEST)],
                &body,
            )?;
            let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)]).into_owned();
            ensure!(
                resp.status < 500,
                "{what}: server error {}: {text}",
                resp.status
            );
            ensure!(
                resp.status == 413,
                "{what}: expected 413 SIZE_INVALID, got {}: {text}",
                resp.status
            );
            let value: Value = serde_json::from_slice(&resp.body)
                .with_context(|| format!("{what}: body not JSON: {text}"))?;
            ensure!(
                value["errors"].as_array().is_some_and(|e| e
                    .iter()
                    .any(|e| e["code"] == "SIZE_INVALID" && e["message"].is_string())),
                "{what}: expected code SIZE_INVALID with a message, got {value}"
            );
            canary
                .verify(o)
                .await
                .context("the canary image no longer reads back after the oversized PUT")?;
            expect_error(
                "GET tag of the oversized manifest",
                o.get_manifest(&canary.repo, "huge").await?,
                404,
                "MANIFEST_UNKNOWN",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn manifest_of_almost_4_mib_is_accepted() {
    // Proves: the registry accepts and returns exactly a manifest just under 4 MiB (the
    // spec's minimum a registry should support).
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-4m").await?;
            let body = manifest_of_size(&canary, 4 * 1024 * 1024 - 1024);
            let digest = t
                .oci
                .push_manifest(&canary.repo, "big", OCI_MANIFEST, &body)
                .await?;
            let image = Image {
                tag: Some("big".into()),
                manifest: body,
                digest,
                ..canary.clone()
            };
            image.verify(&t.oci).await
        })
        .await;
}

#[tokio::test]
async fn concurrent_pushes_to_one_tag_leave_it_on_one_whole_manifest() {
    // Proves: six manifests pushed concurrently under one tag all answer 201 and the tag
    // ends on exactly one of them, read back whole; every one stays readable by digest.
    Target::conformance()
        .await
        .run(async |t| {
            let repo = unique_repo("conf/tag-race");
            let seed = t.oci.push_image(&repo, Some("seed"), &[1000]).await?;
            let mut bodies = Vec::new();
            for i in 0..6 {
                bodies.push(manifest_bytes(&json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": seed.blobs[0].descriptor(),
                    "layers": [seed.blobs[1].descriptor()],
                    "annotations": { "org.example.n": i.to_string() },
                })));
            }
            let mut tasks = Vec::new();
            for body in &bodies {
                let oci = t.oci.clone();
                let (repo, body) = (repo.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    oci.push_manifest(&repo, "race", OCI_MANIFEST, &body).await
                }));
            }
            for task in tasks {
                task.await??;
            }
            let resp = t.oci.get_manifest(&repo, "race").await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET race: {}",
                resp.status()
            );
            let got = resp.bytes().await?;
            ensure!(
                bodies.iter().any(|b| b.as_slice() == got.as_ref()),
                "tag race points at bytes no one pushed"
            );
            for body in &bodies {
                let image = Image {
                    tag: None,
                    manifest: body.clone(),
                    digest: sha256_digest(body),
                    ..seed.clone()
                };
                image.verify(&t.oci).await?;
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn manifest_put_by_a_digest_that_does_not_match_is_digest_invalid() {
    // Proves: PUT /manifests/<digest> whose body hashes to another digest answers 400
    // DIGEST_INVALID and stores nothing under either digest.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-digest").await?;
            let o = &t.oci;
            let body = oci_manifest_for(&canary.blobs[0], &[&canary.blobs[1]]);
            let claimed = sha256_digest(&random_bytes(64));
            let req = o
                .http()
                .put(o.manifest_url(&canary.repo, &claimed))
                .header(CONTENT_TYPE, OCI_MANIFEST)
                .body(body.clone());
            bad(
                t,
                &canary,
                "PUT manifest under a digest that is not its own",
                req,
                400,
                "DIGEST_INVALID",
            )
            .await?;
            for digest in [claimed, sha256_digest(&body)] {
                expect_error(
                    &format!("GET manifest {digest} after the rejected PUT"),
                    o.get_manifest(&canary.repo, &digest).await?,
                    404,
                    "MANIFEST_UNKNOWN",
                )
                .await?;
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn unknown_upload_is_blob_upload_unknown() {
    // Proves: GET, PATCH, PUT and DELETE on an upload id the registry never issued answer
    // 404 BLOB_UPLOAD_UNKNOWN.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/upload-unknown").await?;
            let o = &t.oci;
            let url = o.url(&format!(
                "/v2/{}/blobs/uploads/0c3f8d4e-2b1a-4c5d-9e7f-{}",
                canary.repo,
                random_suffix(12)
            ));
            let digest = sha256_digest(b"x");
            bad(
                t,
                &canary,
                "GET unknown upload",
                o.http().get(&url),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            bad(
                t,
                &canary,
                "PATCH unknown upload",
                o.http()
                    .patch(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", "0-0")
                    .body(b"x".to_vec()),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            bad(
                t,
                &canary,
                "PUT unknown upload",
                o.http()
                    .put(with_query(&url, "digest", &digest))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(b"x".to_vec()),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await?;
            bad(
                t,
                &canary,
                "DELETE unknown upload",
                o.http().delete(&url),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn unknown_blob_is_blob_unknown() {
    // Proves: a digest no one pushed, and one pushed only to another repository, answer
    // 404 BLOB_UNKNOWN on GET (HEAD 404) in this repository.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/blob-unknown").await?;
            let o = &t.oci;
            let foreign = o
                .push_blob(&unique_repo("conf/foreign"), &random_bytes(2000))
                .await?;
            for digest in [sha256_digest(&random_bytes(32)), foreign] {
                bad(
                    t,
                    &canary,
                    &format!("GET blob {digest}"),
                    o.http().get(o.blob_url(&canary.repo, &digest)),
                    404,
                    "BLOB_UNKNOWN",
                )
                .await?;
                let status =
                    status_of(o.request(Method::HEAD, &o.blob_url(&canary.repo, &digest))).await?;
                ensure!(
                    status == StatusCode::NOT_FOUND,
                    "HEAD blob {digest}: expected 404, got {status}"
                );
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn unknown_manifest_is_manifest_unknown() {
    // Proves: an unknown tag or digest in an existing repository answers 404
    // MANIFEST_UNKNOWN to GET and DELETE (HEAD 404).
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/manifest-unknown").await?;
            let o = &t.oci;
            let digest = sha256_digest(&random_bytes(32));
            for reference in ["nope", digest.as_str()] {
                bad(
                    t,
                    &canary,
                    &format!("GET manifest {reference}"),
                    o.get_manifest_request(&canary.repo, reference),
                    404,
                    "MANIFEST_UNKNOWN",
                )
                .await?;
                let status =
                    status_of(o.request(Method::HEAD, &o.manifest_url(&canary.repo, reference)))
                        .await?;
                ensure!(
                    status == StatusCode::NOT_FOUND,
                    "HEAD manifest {reference}: expected 404, got {status}"
                );
            }
            bad(
                t,
                &canary,
                "DELETE unknown manifest digest",
                o.http().delete(o.manifest_url(&canary.repo, &digest)),
                404,
                "MANIFEST_UNKNOWN",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn tag_list_of_unknown_repository_is_name_unknown() {
    // Proves: tags/list of a repository that does not exist answers 404 NAME_UNKNOWN.
    Target::conformance()
        .await
        .run(async |t| {
            let canary = canary(t, "conf/name-unknown").await?;
            let repo = unique_repo("conf/never-pushed");
            bad(
                t,
                &canary,
                "GET tags/list of an unknown repository",
                t.oci
                    .http()
                    .get(t.oci.url(&format!("/v2/{repo}/tags/list"))),
                404,
                "NAME_UNKNOWN",
            )
            .await
        })
        .await;
}
