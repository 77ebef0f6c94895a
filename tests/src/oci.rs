//! A tiny OCI Distribution client on reqwest, for the conformance and crash tests: blob
//! uploads (single POST, POST then PUT, chunked PATCH), manifest push and fetch, image
//! builders with non-canonical JSON bytes, and checks of the OCI error envelope.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::data::{random_bytes, random_suffix, sha256_digest};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Accept header listing every manifest type the tests push.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Appends `key=value` (value percent-encoded) to `url`, which may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode_query(value))
}

/// A header's value as a string, or `""` when absent or not text.
pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A descriptor `{mediaType, digest, size}` for `data`.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(data), "size": data.len() })
}

/// Serializes a manifest the way a hand-written file would look (indented, trailing
/// newline), so a registry that re-serializes instead of storing bytes is caught.
pub fn manifest_bytes(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("a Value always serializes");
    bytes.extend_from_slice(b"\n");
    bytes
}

/// A blob with its media type and digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    /// A blob of `data` with `media_type`.
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// Its descriptor.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.data.len() })
    }
}

/// A pushed manifest and every blob it references, for read-back checks.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub tag: Option<String>,
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<Blob>,
}

impl Image {
    /// Its descriptor, for an index or a `subject`.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.manifest.len() })
    }

    /// Reads the manifest back by digest and by tag (GET and HEAD) and every blob, and
    /// fails unless everything is byte-identical with the right headers.
    pub async fn verify(&self, oci: &Oci) -> Result<()> {
        let mut refs = vec![self.digest.clone()];
        refs.extend(self.tag.clone());
        for reference in refs {
            let what = format!("GET /v2/{}/manifests/{reference}", self.repo);
            let resp = oci.get_manifest(&self.repo, &reference).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            ensure!(
                status == StatusCode::OK,
                "{what}: expected 200, got {status}: {}",
                String::from_utf8_lossy(&body)
            );
            ensure!(
                body.as_ref() == self.manifest.as_slice(),
                "{what}: body differs from the pushed manifest ({} vs {} bytes)",
                body.len(),
                self.manifest.len()
            );
            ensure!(
                header(&headers, "docker-content-digest") == self.digest,
                "{what}: Docker-Content-Digest {:?}, expected {}",
                header(&headers, "docker-content-digest"),
                self.digest
            );
            ensure!(
                header(&headers, "content-type") == self.media_type,
                "{what}: Content-Type {:?}, expected {}",
                header(&headers, "content-type"),
                self.media_type
            );
        }
        for blob in &self.blobs {
            let got = oci.fetch_blob(&self.repo, &blob.digest).await?;
            ensure!(
                got == blob.data,
                "GET /v2/{}/blobs/{}: {} bytes differ from the {} pushed",
                self.repo,
                blob.digest,
                got.len(),
                blob.data.len()
            );
        }
        Ok(())
    }
}

/// The client.
#[derive(Clone, Debug)]
pub struct Oci {
    http: Client,
    base: String,
}

impl Oci {
    /// A client for the registry at `base` (`http://host:port`).
    pub fn new(base: &str) -> Oci {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(8)
            .build()
            .expect("the reqwest client builds");
        Oci {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// The registry's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An absolute URL for a `Location` header value.
    pub fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{}", self.base, location)
        } else {
            format!("{}/{}", self.base, location)
        }
    }

    /// `/v2/<repo>/blobs/<digest>` as a URL.
    pub fn blob_url(&self, repo: &str, digest: &str) -> String {
        self.url(&format!("/v2/{repo}/blobs/{digest}"))
    }

    /// `/v2/<repo>/manifests/<reference>` as a URL.
    pub fn manifest_url(&self, repo: &str, reference: &str) -> String {
        self.url(&format!("/v2/{repo}/manifests/{reference}"))
    }

    /// `/v2/<repo>/blobs/uploads/` as a URL.
    pub fn uploads_url(&self, repo: &str) -> String {
        self.url(&format!("/v2/{repo}/blobs/uploads/"))
    }

    /// A request builder for `method` on `url`.
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// `POST /v2/<repo>/blobs/uploads/`; expects 202 and returns the absolute location.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        let resp = self
            .http
            .post(self.uploads_url(repo))
            .header(CONTENT_LENGTH, "0")
            .send()
            .await?;
        upload_location(
            self,
            resp,
            StatusCode::ACCEPTED,
            &format!("POST /v2/{repo}/blobs/uploads/"),
        )
        .await
    }

    /// Pushes `data` with POST then PUT `?digest=`; returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let digest = sha256_digest(data);
        self.push_blob_with_digest(repo, data, &digest).await?;
        Ok(digest)
    }

    /// Pushes `data` with POST then PUT `?digest=<digest>` (any algorithm); expects 201.
    pub async fn push_blob_with_digest(&self, repo: &str, data: &[u8], digest: &str) -> Result<()> {
        let location = self.start_upload(repo).await?;
        let resp = self
            .http
            .put(with_query(&location, "digest", digest))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        expect_created(resp, &format!("PUT upload of {digest} to {repo}")).await
    }

    /// Pushes `data` in PATCH chunks of `chunk` bytes with `Content-Range`, then closes
    /// with an empty PUT; checks `Range` on every 202. Returns the sha256 digest.
    pub async fn push_blob_chunked(&self, repo: &str, data: &[u8], chunk: usize) -> Result<String> {
        let digest = sha256_digest(data);
        let mut location = self.start_upload(repo).await?;
        let mut offset = 0usize;
        for piece in data.chunks(chunk.max(1)) {
            let end = offset + piece.len() - 1;
            let resp = self
                .http
                .patch(&location)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("{offset}-{end}"))
                .body(piece.to_vec())
                .send()
                .await?;
            let what = format!("PATCH {offset}-{end} of {digest} to {repo}");
            let range = header(resp.headers(), "range");
            location = upload_location(self, resp, StatusCode::ACCEPTED, &what).await?;
            ensure!(
                range == format!("0-{end}"),
                "{what}: Range {range:?}, expected 0-{end}"
            );
            offset = end + 1;
        }
        let resp = self
            .http
            .put(with_query(&location, "digest", &digest))
            .header(CONTENT_LENGTH, "0")
            .send()
            .await?;
        expect_created(resp, &format!("closing PUT of chunked {digest} to {repo}")).await?;
        Ok(digest)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Response> {
        Ok(self
            .http
            .put(self.manifest_url(repo, reference))
            .header(CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await?)
    }

    /// Pushes a manifest and expects 201 with the right `Docker-Content-Digest` and a
    /// `Location`; returns the digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let digest = sha256_digest(body);
        let resp = self.put_manifest(repo, reference, media_type, body).await?;
        let what = format!("PUT /v2/{repo}/manifests/{reference} ({media_type})");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        ensure!(
            status == StatusCode::CREATED,
            "{what}: expected 201, got {status}: {text}"
        );
        ensure!(
            header(&headers, "docker-content-digest") == digest,
            "{what}: Docker-Content-Digest {:?}, expected {digest}",
            header(&headers, "docker-content-digest")
        );
        ensure!(
            headers.contains_key(LOCATION),
            "{what}: 201 without Location"
        );
        Ok(digest)
    }

    /// A `GET /v2/<repo>/manifests/<reference>` request accepting every manifest type.
    pub fn get_manifest_request(&self, repo: &str, reference: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.manifest_url(repo, reference))
            .header("Accept", ACCEPT_MANIFESTS)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Response> {
        Ok(self.get_manifest_request(repo, reference).send().await?)
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Response> {
        Ok(self.http.get(self.blob_url(repo, digest)).send().await?)
    }

    /// The bytes of a blob; fails unless 200.
    pub async fn fetch_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let resp = self.get_blob(repo, digest).await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status != StatusCode::OK {
            bail!(
                "GET /v2/{repo}/blobs/{digest}: expected 200, got {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            );
        }
        Ok(body.to_vec())
    }

    /// Pushes an OCI image: a unique config and random layers of `layer_sizes` bytes,
    /// the manifest by `tag` (or by digest when `None`).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        layer_sizes: &[usize],
    ) -> Result<Image> {
        let layers: Vec<Blob> = layer_sizes
            .iter()
            .map(|&n| Blob::new(OCI_LAYER_GZIP, random_bytes(n)))
            .collect();
        let config = Blob::new(OCI_CONFIG, image_config(&layers));
        let manifest = manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.title": format!("berth-test-{}", random_suffix(6)) },
        }));
        let mut blobs = vec![config];
        blobs.extend(layers);
        for blob in &blobs {
            self.push_blob(repo, &blob.data).await?;
        }
        let digest = sha256_digest(&manifest);
        let reference = tag.map(str::to_string).unwrap_or_else(|| digest.clone());
        self.push_manifest(repo, &reference, OCI_MANIFEST, &manifest)
            .await?;
        Ok(Image {
            repo: repo.to_string(),
            tag: tag.map(str::to_string),
            media_type: OCI_MANIFEST.to_string(),
            manifest,
            digest,
            blobs,
        })
    }

    /// `GET /v2/<repo>/tags/list` (with an optional query); returns status, `Link`
    /// header and the parsed body (`Null` when not JSON).
    pub async fn tags_list(&self, repo: &str, query: &str) -> Result<(StatusCode, String, Value)> {
        let url = self.url(&format!("/v2/{repo}/tags/list{query}"));
        self.get_json(&url).await
    }

    /// GETs `url`; returns status, `Link` header and the parsed body (`Null` if not JSON).
    pub async fn get_json(&self, url: &str) -> Result<(StatusCode, String, Value)> {
        let resp = self.http.get(url).send().await?;
        let status = resp.status();
        let link = header(resp.headers(), "link");
        let body = resp.bytes().await?;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, link, value))
    }
}

/// An OCI image config JSON naming `layers` (unique per call).
pub fn image_config(layers: &[Blob]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "berth.test.nonce": random_suffix(12) } },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
        },
    }))
    .expect("a Value always serializes")
}

/// Checks an upload response has `expected` status and a Location; returns it resolved.
pub async fn upload_location(
    oci: &Oci,
    resp: Response,
    expected: StatusCode,
    what: &str,
) -> Result<String> {
    let status = resp.status();
    let location = header(resp.headers(), "location");
    let text = resp.text().await.unwrap_or_default();
    ensure!(
        status == expected,
        "{what}: expected {expected}, got {status}: {text}"
    );
    ensure!(
        !location.is_empty(),
        "{what}: {status} without a Location header"
    );
    Ok(oci.resolve(&location))
}

/// Fails unless `resp` is 201 Created.
pub async fn expect_created(resp: Response, what: &str) -> Result<()> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    ensure!(
        status == StatusCode::CREATED,
        "{what}: expected 201, got {status}: {text}"
    );
    Ok(())
}

/// Checks that `resp` is the OCI error `code` with `status`: never a 5xx, and a JSON body
/// `{"errors":[{"code":…,"message":…},…]}` in which every entry has a string code and
/// message and one entry has `code`. `what` names the request in failure messages.
pub async fn expect_error(what: &str, resp: Response, status: u16, code: &str) -> Result<()> {
    let got = resp.status().as_u16();
    let body = resp.bytes().await.context("reading the error body")?;
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
    ensure!(
        got < 500,
        "{what}: server error {got} (expected {status} {code}): {text}"
    );
    ensure!(
        got == status,
        "{what}: expected {status} {code}, got {got}: {text}"
    );
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{what}: error body is not JSON: {text:?}"))?;
    let errors = value
        .get("errors")
        .and_then(Value::as_array)
        .with_context(|| format!("{what}: no \"errors\" array in {text}"))?;
    ensure!(!errors.is_empty(), "{what}: empty \"errors\" array");
    for error in errors {
        ensure!(
            error.get("code").and_then(Value::as_str).is_some(),
            "{what}: error without a string code: {error}"
        );
        ensure!(
            error.get("message").and_then(Value::as_str).is_some(),
            "{what}: error without a string message: {error}"
        );
    }
    ensure!(
        errors.iter().any(|e| e["code"] == code),
        "{what}: expected code {code}, got {text}"
    );
    Ok(())
}

/// Sends `req` and checks the OCI error like [`expect_error`].
pub async fn expect_error_for(
    what: &str,
    req: reqwest::RequestBuilder,
    status: u16,
    code: &str,
) -> Result<()> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: request failed"))?;
    expect_error(what, resp, status, code).await
}
