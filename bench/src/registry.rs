//! The OCI distribution API calls the scenarios make, each checking the status and the
//! content it gets back, and the round-robin list of registry URLs they go to. The
//! error of a failed call names the exact request and the response's status and body.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use sha2::Digest as _;

/// Manifest media types a pull accepts, as a client would send them.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Bytes of an unexpected response's body quoted in an error.
const ERROR_BODY_QUOTED_MAX: usize = 1024;

/// Registry base URLs that requests go to in turn.
#[derive(Debug)]
pub struct Targets {
    urls: Vec<String>,
    next: AtomicUsize,
}

/// Splits a comma-separated list of base URLs, dropping trailing slashes.
pub fn parse_urls(list: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    if urls.is_empty() {
        bail!("no registry URL in {list:?}");
    }
    for url in &urls {
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            bail!("{url:?} is not an http:// or https:// base URL");
        }
    }
    Ok(urls)
}

impl Targets {
    pub fn parse(list: &str) -> anyhow::Result<Targets> {
        Ok(Targets {
            urls: parse_urls(list)?,
            next: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// The URL for item `i` of a sequence. With several URLs, items `i` and `i + 1`
    /// go to different registries: push item `i` and pull it as `i + 1` to read
    /// through another node than the one that took the write.
    pub fn get(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// The next URL in round-robin order.
    pub fn next(&self) -> &str {
        self.get(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Resolves a `Location` header against the base URL the request went to.
pub fn resolve_location(base: &str, location: &str) -> anyhow::Result<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Ok(location.to_owned())
    } else if location.starts_with('/') {
        Ok(format!("{base}{location}"))
    } else {
        bail!("Location {location:?} is neither absolute nor a path")
    }
}

/// Appends a query parameter to a URL that may already carry a query.
pub fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

/// Sends a request, failing with the request named when it cannot be sent.
async fn send(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
    req.send().await.with_context(|| what.to_owned())
}

/// Passes a response with the wanted status; any other becomes an error naming the
/// request, the status and the start of the body.
async fn expect(
    resp: reqwest::Response,
    what: &str,
    want: u16,
) -> anyhow::Result<reqwest::Response> {
    if resp.status().as_u16() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let quoted: String = body.chars().take(ERROR_BODY_QUOTED_MAX).collect();
    bail!("{what} -> {status} (wanted {want}): {quoted}")
}

fn location_of(base: &str, resp: &reqwest::Response, what: &str) -> anyhow::Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .with_context(|| format!("{what}: no Location header"))?
        .to_str()
        .with_context(|| format!("{what}: Location is not text"))?;
    resolve_location(base, loc)
}

/// Pushes one blob: `POST` a session, then either one `PUT` with the whole body or
/// `PATCH`es of `chunk` bytes followed by an empty `PUT ?digest=`.
pub async fn push_blob(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: Bytes,
    digest: &str,
    chunk: Option<u64>,
) -> anyhow::Result<()> {
    let url = format!("{base}/v2/{repo}/blobs/uploads/");
    let what = format!("POST {url}");
    let resp = expect(send(client.post(&url), &what).await?, &what, 202).await?;
    let mut loc = location_of(base, &resp, &what)?;
    let Some(chunk) = chunk else {
        let url = with_query(&loc, &format!("digest={digest}"));
        let what = format!("PUT {url} ({} bytes)", data.len());
        let req = client
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        expect(send(req, &what).await?, &what, 201).await?;
        return Ok(());
    };
    let len = data.len() as u64;
    let mut off = 0u64;
    while off < len {
        let end = (off + chunk.max(1)).min(len);
        let range = format!("{off}-{}", end - 1);
        let what = format!("PATCH {loc} (Content-Range {range})");
        let req = client
            .patch(&loc)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("Content-Range", &range)
            .body(data.slice(off as usize..end as usize));
        let resp = expect(send(req, &what).await?, &what, 202).await?;
        loc = location_of(base, &resp, &what)?;
        off = end;
    }
    let url = with_query(&loc, &format!("digest={digest}"));
    let what = format!("PUT {url} (empty body)");
    expect(send(client.put(&url), &what).await?, &what, 201).await?;
    Ok(())
}

/// Pulls one blob, hashing it as it streams in; fails unless it hashes to `digest`.
/// Returns the bytes read.
pub async fn pull_blob(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    digest: &str,
) -> anyhow::Result<u64> {
    let url = format!("{base}/v2/{repo}/blobs/{digest}");
    let what = format!("GET {url}");
    let resp = expect(send(client.get(&url), &what).await?, &what, 200).await?;
    let mut hasher = sha2::Sha256::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("{what}: reading the body"))?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        bail!("{what}: {n} bytes that hash to {got}");
    }
    Ok(n)
}

/// Puts a manifest under `reference` (a tag or its digest).
pub async fn put_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let what = format!("PUT {url} ({media_type}, {} bytes)", body.len());
    let req = client.put(&url).header(CONTENT_TYPE, media_type).body(body);
    expect(send(req, &what).await?, &what, 201).await?;
    Ok(())
}

/// Gets a manifest by tag or digest; fails unless its bytes hash to `digest`.
pub async fn get_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    digest: &str,
) -> anyhow::Result<Bytes> {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let what = format!("GET {url}");
    let req = client.get(&url).header(ACCEPT, MANIFEST_ACCEPT);
    let resp = expect(send(req, &what).await?, &what, 200).await?;
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: reading the body"))?;
    let got = crate::content::sha256_digest(&body);
    if got != digest {
        bail!("{what}: manifest hashes to {got}, wanted {digest}");
    }
    Ok(body)
}

/// Heads a manifest by tag or digest; fails unless it answers 200 and, when it sends
/// `Docker-Content-Digest`, names `digest`.
pub async fn head_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    digest: &str,
) -> anyhow::Result<()> {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let what = format!("HEAD {url}");
    let req = client.head(&url).header(ACCEPT, MANIFEST_ACCEPT);
    let resp = expect(send(req, &what).await?, &what, 200).await?;
    if let Some(got) = resp.headers().get("docker-content-digest") {
        let got = got.to_str().unwrap_or("<not text>");
        if got != digest {
            bail!("{what}: Docker-Content-Digest {got}, wanted {digest}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_parse() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("http://a:1", Some(&["http://a:1"])),
            ("http://a:1/", Some(&["http://a:1"])),
            (
                "http://a:1, https://b:2/,",
                Some(&["http://a:1", "https://b:2"]),
            ),
            ("", None),
            (",", None),
            ("a:1", None),
            ("http://", None),
            ("http://a:1,ftp://b", None),
        ];
        for (input, want) in cases {
            let got = parse_urls(input).ok();
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "parse_urls({input:?})");
        }
    }

    #[test]
    fn round_robin_visits_every_url_in_turn() {
        let t = Targets::parse("http://a,http://b,http://c").unwrap();
        let got: Vec<&str> = (0..7).map(|_| t.next()).collect();
        assert_eq!(
            got,
            [
                "http://a", "http://b", "http://c", "http://a", "http://b", "http://c", "http://a"
            ]
        );
        assert_eq!(t.get(4), "http://b");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn item_and_its_successor_go_to_different_registries() {
        let t = Targets::parse("http://a,http://b").unwrap();
        for i in 0..10 {
            assert_ne!(t.get(i), t.get(i + 1));
        }
        let one = Targets::parse("http://a").unwrap();
        assert_eq!(one.get(0), one.get(1));
    }

    #[test]
    fn locations_resolve() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "/v2/r/blobs/uploads/x",
                Some("http://h:1/v2/r/blobs/uploads/x"),
            ),
            ("http://o:2/v2/x?s=1", Some("http://o:2/v2/x?s=1")),
            ("https://o/v2/x", Some("https://o/v2/x")),
            ("v2/x", None),
        ];
        for (loc, want) in cases {
            assert_eq!(
                resolve_location("http://h:1", loc).ok().as_deref(),
                *want,
                "{loc:?}"
            );
        }
    }

    #[test]
    fn query_is_appended_with_the_right_separator() {
        assert_eq!(with_query("http://h/u", "digest=d"), "http://h/u?digest=d");
        assert_eq!(
            with_query("http://h/u?_state=s", "digest=d"),
            "http://h/u?_state=s&digest=d"
        );
    }
}
