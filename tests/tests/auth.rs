//! Tenancy and access control against a real berth in enforced mode: the Docker token
//! flow with skopeo and oras-py using credentials, anonymous pulls on public and
//! private projects, roles, robots limited to one repository, cross-project mounts
//! that reveal nothing, expired and tampered tokens, the audit log, rate limits (per
//! address, identity and project) and failed-login throttling, the bootstrap
//! administrator, and `berth admin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::oci::{OCI_CONFIG, OCI_MANIFEST, expect_error, header, manifest_bytes};
use berth_tests::server::berth_binary;
use berth_tests::{Server, ServerOptions, random_bytes, sha256_digest};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin-secret-1";
/// How long an audit entry may take to be flushed through Raft.
const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// Credentials: user (or robot) name and password (or secret).
#[derive(Clone)]
struct Creds(String, String);

impl Creds {
    fn new(u: &str, p: &str) -> Creds {
        Creds(u.to_owned(), p.to_owned())
    }
    fn admin() -> Creds {
        Creds::new("admin", ADMIN_PASSWORD)
    }
}

/// An enforcing berth and an HTTP client.
struct Registry {
    server: Server,
    http: Client,
}

impl Registry {
    async fn start(extra: &[&str]) -> Registry {
        let server = Server::start(ServerOptions::enforced(ADMIN_PASSWORD, extra))
            .await
            .unwrap_or_else(|e| panic!("could not start berth: {e:#}"));
        Registry {
            server,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    fn req(&self, method: Method, path: &str, who: Option<&Creds>) -> RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match who {
            Some(c) => r.basic_auth(&c.0, Some(&c.1)),
            None => r,
        }
    }

    /// A management call as `who`; returns status and JSON body (`Null` if none).
    async fn api(
        &self,
        method: Method,
        path: &str,
        who: &Creds,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut r = self.req(method, path, Some(who));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self
            .api(method.clone(), path, &Creds::admin(), body)
            .await?;
        ensure!(status.is_success(), "{method} {path}: {status} {v}");
        Ok(v)
    }

    async fn project(&self, name: &str, public: bool) -> Result<()> {
        self.ok(
            Method::POST,
            "/api/v1/projects",
            Some(json!({ "name": name, "public": public })),
        )
        .await
        .map(drop)
    }

    async fn user(&self, name: &str, project: &str, role: &str) -> Result<Creds> {
        let password = format!("{name}-password");
        self.ok(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "name": name, "password": password })),
        )
        .await?;
        self.ok(
            Method::PUT,
            &format!("/api/v1/projects/{project}/members/{name}"),
            Some(json!({ "role": role })),
        )
        .await?;
        Ok(Creds::new(name, &password))
    }

    async fn robot(
        &self,
        name: &str,
        project: &str,
        grants: Value,
        expires: Option<u64>,
    ) -> Result<Creds> {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/robots",
                Some(json!({ "name": name, "project": project, "grants": grants, "expires_in_secs": expires })),
            )
            .await?;
        Ok(Creds::new(
            v["name"].as_str().context("robot name")?,
            v["secret"].as_str().context("robot secret")?,
        ))
    }

    /// Pushes one blob with a single `POST ?digest=` as `who`; returns the status.
    async fn push_blob(&self, who: Option<&Creds>, repo: &str, data: &[u8]) -> Result<StatusCode> {
        let d = sha256_digest(data);
        Ok(self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                who,
            )
            .body(data.to_vec())
            .send()
            .await?
            .status())
    }

    /// Pushes a one-layer image tagged `tag` as `who` with Basic auth on /v2/.
    async fn push_image(&self, who: &Creds, repo: &str, tag: &str) -> Result<(String, String)> {
        let layer = random_bytes(2048);
        let config = serde_json::to_vec(
            &json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] } }),
        )?;
        for data in [&layer, &config] {
            let s = self.push_blob(Some(who), repo, data).await?;
            ensure!(s == StatusCode::CREATED, "push blob to {repo}: {s}");
        }
        let manifest = manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len() }],
        }));
        let resp = self
            .req(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(who),
            )
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "push manifest {repo}:{tag}: {}",
            resp.status()
        );
        Ok((sha256_digest(&manifest), sha256_digest(&layer)))
    }

    /// A token from `GET /token` for `scope`.
    async fn token(&self, who: Option<&Creds>, scope: &str) -> Result<String> {
        let resp = self
            .req(
                Method::GET,
                &format!("/token?service=berth&scope={scope}"),
                who,
            )
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        ensure!(status == StatusCode::OK, "token: {status} {v}");
        Ok(v["token"].as_str().context("token in answer")?.to_owned())
    }

    /// The audit entries, waiting until `want` holds.
    async fn audit_until(
        &self,
        query: &str,
        want: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + AUDIT_WAIT;
        loop {
            let resp = self
                .req(
                    Method::GET,
                    &format!("/api/v1/audit?{query}"),
                    Some(&Creds::admin()),
                )
                .send()
                .await?;
            ensure!(resp.status() == StatusCode::OK, "audit: {}", resp.status());
            let text = resp.text().await?;
            let entries: Vec<Value> = text
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .context("audit lines are JSON")?;
            if want(&entries) {
                return Ok(entries);
            }
            if Instant::now() > deadline {
                bail!("audit entries for {query:?} never matched: {text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn has(entries: &[Value], action: &str, identity: &str, outcome: &str) -> bool {
    entries
        .iter()
        .any(|e| e["action"] == action && e["identity"] == identity && e["outcome"] == outcome)
}

fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!("required tool `{tool}` is not on PATH (./scripts/test.sh installs it)")
        })
}

fn run(program: &Path, args: &[&str], env: &[(&str, &str)], what: &str) -> Result<Output> {
    let output = Command::new("timeout")
        .arg("300")
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// An OCI layout with one image tagged `v1`; returns its manifest digest.
fn oci_layout(dir: &Path) -> Result<String> {
    let layer = random_bytes(300 * 1024);
    let config = serde_json::to_vec(
        &json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] } }),
    )?;
    let manifest = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len() }],
    }));
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    for data in [&layer, &config, &manifest] {
        let d = sha256_digest(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let digest = sha256_digest(&manifest);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
                            "annotations": { "org.opencontainers.image.ref.name": "v1" } }],
        }))?,
    )?;
    Ok(digest)
}

#[tokio::test]
async fn skopeo_and_oras_push_and_pull_through_the_token_flow() {
    // Proves: skopeo (--dest-creds/--src-creds) and oras-py (Basic credentials) follow
    // the Bearer challenge to /token and push and pull with the tokens; without
    // credentials skopeo's push is refused.
    let skopeo = require_tool("skopeo");
    let python = require_tool("python3");
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = oci_layout(&src).unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let policy = policy.to_string_lossy().into_owned();
    let remote = format!("docker://{}/team/app:v1", r.server.addr());
    let src_ref = format!("oci:{}:v1", src.display());
    let creds = format!("{}:{}", dev.0, dev.1);
    let refused = run(
        &skopeo,
        &[
            "--policy",
            &policy,
            "copy",
            "--dest-tls-verify=false",
            &src_ref,
            &remote,
        ],
        &[],
        "anonymous skopeo copy",
    );
    assert!(refused.is_err(), "an anonymous push succeeded");
    run(
        &skopeo,
        &[
            "--policy",
            &policy,
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src_ref,
            &remote,
        ],
        &[],
        "skopeo copy with --dest-creds",
    )
    .unwrap();
    let dst = work.path().join("dst");
    let dst_ref = format!("oci:{}:v1", dst.display());
    run(
        &skopeo,
        &[
            "--policy",
            &policy,
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &remote,
            &dst_ref,
        ],
        &[],
        "skopeo copy with --src-creds",
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("oras_roundtrip.py");
    let script = script.to_string_lossy().into_owned();
    let out = run(
        &python,
        &[
            &script,
            &r.server.addr(),
            "team/oras",
            &work.path().to_string_lossy(),
        ],
        &[("ORAS_USER", &dev.0), ("ORAS_PASSWORD", &dev.1)],
        "oras_roundtrip.py with credentials",
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["a2"]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );

    // The token service was used (not Basic on /v2/): logins are audited.
    r.audit_until("action=login", |e| has(e, "login", "dev", "success"))
        .await
        .unwrap();
}

#[tokio::test]
async fn anonymous_pulls_public_projects_only_and_learns_nothing_else() {
    // Proves: anonymous clients pull from a public project without logging in; a
    // private project, an unknown repository in it and an unknown project all answer
    // the same 401 with a Bearer challenge naming the scope; an authenticated user
    // without rights gets 403 DENIED for existing and missing repositories alike; the
    // catalog shows each caller only what it may pull.
    let r = Registry::start(&[]).await;
    r.project("pub", true).await.unwrap();
    r.project("priv", false).await.unwrap();
    let (pub_digest, _) = r
        .push_image(&Creds::admin(), "pub/app", "v1")
        .await
        .unwrap();
    r.push_image(&Creds::admin(), "priv/app", "v1")
        .await
        .unwrap();
    r.project("other", false).await.unwrap();
    let stranger = r.user("stranger", "other", "owner").await.unwrap();

    let resp = r
        .req(Method::GET, "/v2/pub/app/manifests/v1", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "docker-content-digest"), pub_digest);

    for repo in ["priv/app", "priv/missing", "nope/app"] {
        let resp = r
            .req(Method::GET, &format!("/v2/{repo}/manifests/v1"), None)
            .send()
            .await
            .unwrap();
        let challenge = header(resp.headers(), "www-authenticate");
        assert!(
            challenge.starts_with("Bearer realm=\"http://")
                && challenge.contains("/token\",service=\"berth\"")
                && challenge.contains(&format!("scope=\"repository:{repo}:pull\"")),
            "{repo}: {challenge}"
        );
        expect_error(repo, resp, 401, "UNAUTHORIZED").await.unwrap();
        let resp = r
            .req(
                Method::GET,
                &format!("/v2/{repo}/manifests/v1"),
                Some(&stranger),
            )
            .send()
            .await
            .unwrap();
        expect_error(repo, resp, 403, "DENIED").await.unwrap();
    }
    let resp = r.req(Method::GET, "/v2/", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(header(resp.headers(), "www-authenticate").starts_with("Bearer realm="));

    // An anonymous token names no right on the private repository.
    let t = r.token(None, "repository:priv/app:pull").await.unwrap();
    let resp = r
        .http
        .get(r.url("/v2/priv/app/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let catalog = |who: Option<Creds>| {
        let r = &r;
        async move {
            let v: Value = r
                .req(Method::GET, "/v2/_catalog", who.as_ref())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["repositories"].clone()
        }
    };
    assert_eq!(catalog(None).await, json!(["pub/app"]));
    assert_eq!(catalog(Some(stranger.clone())).await, json!(["pub/app"]));
    assert_eq!(
        catalog(Some(Creds::admin())).await,
        json!(["priv/app", "pub/app"])
    );
}

#[tokio::test]
async fn roles_decide_who_pulls_pushes_and_deletes() {
    // Proves: a Reader pulls but cannot push or delete (403 DENIED), a Developer pushes
    // but cannot delete, a Maintainer deletes; an administrator cannot push into a
    // project that does not exist and is told so.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let reader = r.user("reader", "team", "reader").await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    let maint = r.user("maint", "team", "maintainer").await.unwrap();
    let (digest, layer) = r.push_image(&dev, "team/app", "v1").await.unwrap();

    let resp = r
        .req(Method::GET, "/v2/team/app/manifests/v1", Some(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = r
        .req(Method::GET, "/v2/team/app/tags/list", Some(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["tags"], json!(["v1"]));
    assert_eq!(
        r.push_blob(Some(&reader), "team/app", b"reader bytes")
            .await
            .unwrap(),
        StatusCode::FORBIDDEN
    );
    for who in [&reader, &dev] {
        let resp = r
            .req(
                Method::DELETE,
                &format!("/v2/team/app/manifests/{digest}"),
                Some(who),
            )
            .send()
            .await
            .unwrap();
        expect_error("delete manifest", resp, 403, "DENIED")
            .await
            .unwrap();
        let resp = r
            .req(
                Method::DELETE,
                &format!("/v2/team/app/blobs/{layer}"),
                Some(who),
            )
            .send()
            .await
            .unwrap();
        expect_error("delete blob", resp, 403, "DENIED")
            .await
            .unwrap();
    }
    let resp = r
        .req(
            Method::DELETE,
            &format!("/v2/team/app/manifests/{digest}"),
            Some(&maint),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let resp = r
        .req(
            Method::POST,
            "/v2/ghost/app/blobs/uploads/",
            Some(&Creds::admin()),
        )
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("DENIED") && text.contains("project ghost does not exist"),
        "{text}"
    );

    // Denied writes and the delete are audited.
    r.audit_until("project=team", |e| {
        has(e, "push", "reader", "denied") && has(e, "delete", "maint", "success")
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_robot_limited_to_one_repository_touches_nothing_else() {
    // Proves: a project robot with pull,push on team/app pushes and pulls there, is
    // refused on team/other (push and pull) and everywhere else, works through the
    // token flow too, and stops working once it expires.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    r.push_image(&Creds::admin(), "team/other", "v1")
        .await
        .unwrap();
    let robot = r
        .robot(
            "ci",
            "team",
            json!([{ "repositories": "app", "actions": ["pull", "push"] }]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(robot.0, "robot$team+ci");
    r.push_image(&robot, "team/app", "v1").await.unwrap();
    assert_eq!(
        r.push_blob(Some(&robot), "team/other", b"robot bytes")
            .await
            .unwrap(),
        StatusCode::FORBIDDEN
    );
    let resp = r
        .req(Method::GET, "/v2/team/other/manifests/v1", Some(&robot))
        .send()
        .await
        .unwrap();
    expect_error("robot pull other", resp, 403, "DENIED")
        .await
        .unwrap();
    let resp = r
        .req(Method::DELETE, "/v2/team/app/manifests/v1", Some(&robot))
        .send()
        .await
        .unwrap();
    expect_error("robot delete", resp, 403, "DENIED")
        .await
        .unwrap();

    // Its token carries only what it holds.
    let t = r
        .token(
            Some(&robot),
            "repository:team/app:pull,push,delete repository:team/other:pull",
        )
        .await
        .unwrap();
    let ok = r
        .http
        .get(r.url("/v2/team/app/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = r
        .http
        .get(r.url("/v2/team/other/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    expect_error("token for other", refused, 403, "DENIED")
        .await
        .unwrap();

    let short = r
        .robot(
            "brief",
            "team",
            json!([{ "repositories": "*", "actions": ["pull"] }]),
            Some(1),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = r
        .req(Method::GET, "/v2/team/app/manifests/v1", Some(&short))
        .send()
        .await
        .unwrap();
    expect_error("expired robot", resp, 401, "UNAUTHORIZED")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cross_project_mount_of_an_unreadable_blob_reveals_and_links_nothing() {
    // Proves: mounting a blob from a repository the caller cannot read answers 202 (a
    // plain upload session), exactly like a mount of a blob that exists nowhere, and
    // the target repository does not link the blob; with pull rights the same mount
    // answers 201.
    let r = Registry::start(&[]).await;
    r.project("secret", false).await.unwrap();
    r.project("team", false).await.unwrap();
    let (_, layer) = r
        .push_image(&Creds::admin(), "secret/app", "v1")
        .await
        .unwrap();
    let alice = r.user("alice", "team", "developer").await.unwrap();
    let missing = sha256_digest(b"exists nowhere");
    for d in [&layer, &missing] {
        let resp = r
            .req(
                Method::POST,
                &format!("/v2/team/app/blobs/uploads/?mount={d}&from=secret/app"),
                Some(&alice),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "mount of {d}");
        assert!(header(resp.headers(), "location").starts_with("/v2/team/app/blobs/uploads/"));
    }
    let resp = r
        .req(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{layer}"),
            Some(&alice),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "the blob was linked");

    r.ok(
        Method::PUT,
        "/api/v1/projects/secret/members/alice",
        Some(json!({ "role": "reader" })),
    )
    .await
    .unwrap();
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={layer}&from=secret/app"),
            Some(&alice),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn expired_tampered_and_refreshed_tokens() {
    // Proves: a token works until it expires (2 s here) and is refused after; a token
    // with a changed payload or signature is refused; the OAuth2 password grant returns
    // a refresh token whose refresh grant issues working tokens; wrong passwords get
    // 401 from the token service.
    let r = Registry::start(&["--token-ttl-secs", "2"]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    r.push_image(&dev, "team/app", "v1").await.unwrap();
    let scope = "repository:team/app:pull";
    let t = r.token(Some(&dev), scope).await.unwrap();
    let get = |tok: String| {
        let r = &r;
        async move {
            r.http
                .get(r.url("/v2/team/app/manifests/v1"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(t.clone()).await, StatusCode::OK);

    let parts: Vec<&str> = t.split('.').collect();
    // A character in the middle carries six signature bits (the last one carries
    // padding bits a decoder may ignore).
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let sig: String = sig.into_iter().collect();
    assert_eq!(
        get(format!("{}.{}.{sig}", parts[0], parts[1])).await,
        StatusCode::UNAUTHORIZED
    );
    let payload = base64_url(br#"{"iss":"berth","sub":"admin","aud":"berth","exp":99999999999,"nbf":0,"iat":0,"jti":"x","access":[{"type":"repository","name":"team/app","actions":["pull","push","delete"]}],"use":"access"}"#);
    assert_eq!(
        get(format!("{}.{payload}.{}", parts[0], parts[2])).await,
        StatusCode::UNAUTHORIZED
    );

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = r
        .http
        .get(r.url("/v2/team/app/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert!(header(expired.headers(), "www-authenticate").starts_with("Bearer realm="));
    expect_error("expired token", expired, 401, "UNAUTHORIZED")
        .await
        .unwrap();

    let form = format!(
        "grant_type=password&service=berth&client_id=test&access_type=offline&scope={scope}&username={}&password={}",
        dev.0, dev.1
    );
    let v: Value = r
        .http
        .post(r.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = v["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    assert_eq!(
        get(v["access_token"].as_str().unwrap().to_owned()).await,
        StatusCode::OK
    );
    let v: Value = r
        .http
        .post(r.url("/token"))
        .body(format!(
            "grant_type=refresh_token&service=berth&scope={scope}&refresh_token={refresh}"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        get(v["access_token"].as_str().expect("refreshed").to_owned()).await,
        StatusCode::OK
    );
    // A refresh token is not an access token.
    assert_eq!(get(refresh).await, StatusCode::UNAUTHORIZED);
    let bad = r
        .req(
            Method::GET,
            &format!("/token?service=berth&scope={scope}"),
            Some(&Creds::new("dev", "wrong-password")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    r.audit_until("action=auth-failure", |e| {
        has(e, "auth-failure", "dev", "denied")
    })
    .await
    .unwrap();
}

fn base64_url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn the_audit_log_records_changes_and_exports_csv() {
    // Proves: pushes, tag moves, deletes, policy changes and failed logins are in the
    // audit log with identity, client and outcome; filters by identity and action work;
    // the CSV export has a header and the same entries.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "maintainer").await.unwrap();
    let (digest, _) = r.push_image(&dev, "team/app", "v1").await.unwrap();
    let resp = r
        .req(
            Method::DELETE,
            &format!("/v2/team/app/manifests/{digest}"),
            Some(&dev),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r
        .req(Method::GET, "/v2/", Some(&Creds::new("dev", "nope-nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let entries = r
        .audit_until("", |e| {
            has(e, "tag", "dev", "success")
                && has(e, "delete", "dev", "success")
                && has(e, "policy", "admin", "success")
                && has(e, "auth-failure", "dev", "denied")
        })
        .await
        .unwrap();
    let tag = entries.iter().find(|e| e["action"] == "tag").unwrap();
    assert_eq!(tag["resource"], "team/app:v1");
    assert_eq!(tag["project"], "team");
    assert_eq!(tag["client"], "127.0.0.1");
    let only_dev = r
        .audit_until("identity=dev&action=delete", |e| !e.is_empty())
        .await
        .unwrap();
    assert!(
        only_dev
            .iter()
            .all(|e| e["identity"] == "dev" && e["action"] == "delete")
    );

    let csv = r
        .req(
            Method::GET,
            "/api/v1/audit?format=csv&action=tag",
            Some(&Creds::admin()),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("time_ms,identity,client,action,resource,project,outcome,count")
    );
    assert!(
        lines.any(|l| l.contains(",dev,127.0.0.1,tag,team/app:v1,team,success,1")),
        "{csv}"
    );
    // Only administrators read it.
    let resp = r
        .req(Method::GET, "/api/v1/audit", Some(&dev))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_burst_above_the_rate_limit_gets_429_then_recovers() {
    // Proves: at 5 requests/s (bursts of 10) per address, a burst of 40 requests gets
    // 429 TOOMANYREQUESTS with Retry-After, and requests pass again after a pause;
    // repeated failed logins are throttled too.
    let r = Registry::start(&["--rate-limit-rps", "5", "--failed-logins-per-minute", "3"]).await;
    let mut limited = 0;
    let mut retry_after = String::new();
    for _ in 0..40 {
        let resp = r
            .req(Method::GET, "/v2/", Some(&Creds::admin()))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            retry_after = header(resp.headers(), "retry-after");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
        }
    }
    assert!(
        limited >= 20,
        "only {limited} of 40 burst requests were limited"
    );
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = r
        .req(Method::GET, "/v2/", Some(&Creds::admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "no recovery after the pause");

    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = r
            .req(
                Method::GET,
                "/v2/",
                Some(&Creds::new("admin", "wrong-guess")),
            )
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(statuses[0], 401);
    assert_eq!(
        *statuses.last().unwrap(),
        429,
        "failed logins not throttled: {statuses:?}"
    );
    // While throttled even the right password waits.
    let resp = r
        .req(Method::GET, "/v2/", Some(&Creds::admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn cluster_endpoints_need_an_administrator() {
    // Proves: /api/v1/cluster/* admits nodes, so in enforced mode anonymous callers get
    // 401 and users 403, administrators 200.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let owner = r.user("owner", "team", "owner").await.unwrap();
    let status = |who: Option<Creds>| {
        let r = &r;
        async move {
            r.req(Method::GET, "/api/v1/cluster/status", who.as_ref())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(Some(owner.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Some(Creds::admin())).await, StatusCode::OK);
    let join = r
        .req(Method::POST, "/api/v1/cluster/members", Some(&owner))
        .json(&json!({ "id": 9, "addr": "127.0.0.1:1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(join.status(), StatusCode::FORBIDDEN);
    // An owner manages members of its own project only.
    let (s, _) = r
        .api(
            Method::POST,
            "/api/v1/projects",
            &owner,
            Some(json!({ "name": "mine" })),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_generated_bootstrap_password_is_written_once_for_its_owner() {
    // Proves: without BERTH_ADMIN_PASSWORD the first start writes a generated password
    // to <data>/admin-password with mode 0600, it logs in, and a restart keeps it.
    use std::os::unix::fs::PermissionsExt;
    let mut server = Server::start(ServerOptions {
        args: vec!["--auth".into(), "enforced".into()],
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let file = server.data_dir().join("admin-password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(password.len() >= 16);
    assert!(server.log_tail().contains("admin-password"));
    let http = Client::new();
    let get = |p: String| {
        let http = http.clone();
        let url = format!("{}/v2/", server.url());
        async move {
            http.get(url)
                .basic_auth("admin", Some(p))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(password.clone()).await, StatusCode::OK);
    assert_eq!(get("wrong-password".into()).await, StatusCode::UNAUTHORIZED);
    server.restart().await.unwrap();
    let url = format!("{}/v2/", server.url());
    let again = Client::new()
        .get(url)
        .basic_auth("admin", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_project_over_its_request_limit_gets_429_then_recovers_and_others_pass() {
    // Proves: a project limit set with `berth admin project limits` (2 requests/s,
    // bursts of 4) turns a burst of registry requests for that project's repositories
    // into 429 TOOMANYREQUESTS with Retry-After, requests pass again after waiting
    // that long, another project's requests pass meanwhile, and removing the limit or
    // the project removes it. CLI errors are one `error: ...` line with exit status 1.
    let r = Registry::start(&[]).await;
    r.project("limited", false).await.unwrap();
    r.project("free", false).await.unwrap();
    let bin = berth_binary().unwrap();
    let url = r.server.url();
    let admin = |args: &[&str]| -> Output {
        let mut all = vec![
            "admin",
            "--url",
            &url,
            "--user",
            "admin",
            "--password",
            ADMIN_PASSWORD,
        ];
        all.extend_from_slice(args);
        Command::new(&bin)
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .expect("running berth admin")
    };
    let set = admin(&["project", "limits", "limited", "--rps", "2", "--burst", "4"]);
    assert!(set.status.success(), "{set:?}");
    let shown: Value = serde_json::from_slice(&admin(&["project", "limits", "limited"]).stdout)
        .expect("limits as JSON");
    assert_eq!(shown, json!({ "requests_per_second": 2, "burst": 4 }));

    // Admin requests that pass authorization and answer 404 (no such repository).
    let burst = async |project: &str| -> (Vec<u16>, String) {
        let mut statuses = Vec::new();
        let mut retry_after = String::new();
        for _ in 0..20 {
            let resp = r
                .req(
                    Method::GET,
                    &format!("/v2/{project}/app/tags/list"),
                    Some(&Creds::admin()),
                )
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                retry_after = header(resp.headers(), "retry-after");
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
                statuses.push(429);
            } else {
                statuses.push(resp.status().as_u16());
            }
        }
        (statuses, retry_after)
    };
    let (statuses, retry_after) = burst("limited").await;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(statuses[0], 404, "the first request is within the burst");
    assert!(
        limited >= 10,
        "only {limited} of 20 were limited: {statuses:?}"
    );
    let wait: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?}"));
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let (others, _) = burst("free").await;
    assert!(
        others.iter().all(|s| *s == 404),
        "another project was limited: {others:?}"
    );
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    let resp = r
        .req(
            Method::GET,
            "/v2/limited/app/tags/list",
            Some(&Creds::admin()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "no recovery after Retry-After"
    );

    let off = admin(&["project", "limits", "limited", "--off"]);
    assert!(off.status.success(), "{off:?}");
    let (statuses, _) = burst("limited").await;
    assert!(
        statuses.iter().all(|s| *s == 404),
        "still limited: {statuses:?}"
    );

    // Out-of-range limits are refused; a deleted project's limit is gone with it.
    for bad in [json!({ "burst": 3 }), json!({ "requests_per_second": 0 })] {
        let (status, v) = r
            .api(
                Method::PUT,
                "/api/v1/projects/limited/limits",
                &Creds::admin(),
                Some(bad),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }
    r.ok(
        Method::PUT,
        "/api/v1/projects/limited/limits",
        Some(json!({ "requests_per_second": 1 })),
    )
    .await
    .unwrap();
    r.ok(Method::DELETE, "/api/v1/projects/limited", None)
        .await
        .unwrap();
    r.project("limited", false).await.unwrap();
    let v = r
        .ok(Method::GET, "/api/v1/projects/limited/limits", None)
        .await
        .unwrap();
    assert_eq!(v, json!({ "requests_per_second": null, "burst": null }));

    let failed = admin(&["project", "limits", "nosuch", "--rps", "5"]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("404")
            && stderr.contains("project not found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn berth_admin_creates_a_project_user_and_robot_and_prints_a_pull_secret() {
    // Proves: the CLI drives the management API with Basic credentials: it creates and
    // lists a project, creates a user and a robot whose secret pulls, and prints a
    // Kubernetes dockerconfigjson Secret whose credentials work.
    let r = Registry::start(&[]).await;
    let bin = berth_binary().unwrap();
    let url = r.server.url();
    let admin = |args: &[&str]| -> Result<String> {
        let mut all = vec![
            "admin",
            "--url",
            &url,
            "--user",
            "admin",
            "--password",
            ADMIN_PASSWORD,
        ];
        all.extend_from_slice(args);
        let out = run(&bin, &all, &[], &format!("berth admin {}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    admin(&["project", "create", "team"]).unwrap();
    let list: Value = serde_json::from_str(&admin(&["project", "list"]).unwrap()).unwrap();
    assert_eq!(list[0]["name"], "team");
    admin(&[
        "user",
        "create",
        "carol",
        "--new-password",
        "carol-password",
    ])
    .unwrap();
    admin(&["member", "set", "team", "carol", "developer"]).unwrap();
    let carol = Creds::new("carol", "carol-password");
    r.push_image(&carol, "team/app", "v1").await.unwrap();
    let robot: Value = serde_json::from_str(
        &admin(&[
            "robot",
            "create",
            "puller",
            "--project",
            "team",
            "--grant",
            "team:*:pull",
        ])
        .unwrap(),
    )
    .unwrap();
    let name = robot["name"].as_str().unwrap();
    let secret = robot["secret"].as_str().unwrap();
    let manifest: Value =
        serde_json::from_str(&admin(&["robot", "pull-secret", name, "--secret", secret]).unwrap())
            .unwrap();
    assert_eq!(manifest["type"], "kubernetes.io/dockerconfigjson");
    let b64 = manifest["data"][".dockerconfigjson"].as_str().unwrap();
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let config: Value = serde_json::from_slice(&decoded.stdout).unwrap();
    let entry = &config["auths"][r.server.addr()];
    let creds = Creds::new(
        entry["username"].as_str().unwrap(),
        entry["password"].as_str().unwrap(),
    );
    let resp = r
        .req(Method::GET, "/v2/team/app/manifests/v1", Some(&creds))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        r.push_blob(Some(&creds), "team/app", b"puller bytes")
            .await
            .unwrap(),
        StatusCode::FORBIDDEN
    );
}

/// A one-time token for `repositories` in `project`, made by the administrator.
async fn one_time_token(r: &Registry, project: &str, repositories: &str) -> Result<Creds> {
    let v = r
        .ok(
            Method::POST,
            &format!("/api/v1/projects/{project}/one-time-tokens"),
            Some(json!({ "repositories": repositories, "expires_in_secs": 300 })),
        )
        .await?;
    Ok(Creds::new(
        v["name"].as_str().context("one-time token name")?,
        v["secret"].as_str().context("one-time token secret")?,
    ))
}

/// The status of `GET /token` for `scope` with Basic `who` against `base`.
async fn token_status(http: &Client, base: &str, who: &Creds, scope: &str) -> StatusCode {
    http.get(format!("{base}/token?service=berth&scope={scope}"))
        .basic_auth(&who.0, Some(&who.1))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[tokio::test]
async fn a_one_time_token_pushes_once_with_skopeo_and_never_again() {
    // Proves: skopeo pushes an image with a one-time token's name and secret (one
    // exchange at /token for a push-long access token); a second push with it is
    // refused, as are a second exchange, Basic auth with it on /v2/ and a push
    // outside its repository; a Developer may not create one, a Maintainer may.
    let skopeo = require_tool("skopeo");
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    let maint = r.user("maint", "team", "maintainer").await.unwrap();
    let (s, _) = r
        .api(
            Method::POST,
            "/api/v1/projects/team/one-time-tokens",
            &dev,
            Some(json!({ "repositories": "app" })),
        )
        .await
        .unwrap();
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a developer made a one-time token"
    );
    let (s, v) = r
        .api(
            Method::POST,
            "/api/v1/projects/team/one-time-tokens",
            &maint,
            Some(json!({ "repositories": "app" })),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ci = Creds::new(v["name"].as_str().unwrap(), v["secret"].as_str().unwrap());
    assert!(ci.0.starts_with("onetime$team+"), "{}", ci.0);

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = oci_layout(&src).unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let policy = policy.to_string_lossy().into_owned();
    let src_ref = format!("oci:{}:v1", src.display());
    let push = |tag: &str, creds: &Creds| {
        let remote = format!("docker://{}/team/app:{tag}", r.server.addr());
        let creds = format!("{}:{}", creds.0, creds.1);
        let args = [
            "--policy",
            &policy,
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src_ref,
            &remote,
        ]
        .map(String::from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&skopeo, &args, &[], "skopeo copy with a one-time token")
    };
    push("v1", &ci).unwrap();
    let got = r
        .req(
            Method::HEAD,
            "/v2/team/app/manifests/v1",
            Some(&Creds::admin()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(header(got.headers(), "docker-content-digest"), digest);

    assert!(push("v2", &ci).is_err(), "a one-time token pushed twice");
    assert_eq!(
        token_status(
            &r.http,
            &r.server.url(),
            &ci,
            "repository:team/app:pull,push"
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    // Never a password on /v2/, not even right after its exchange.
    let fresh = one_time_token(&r, "team", "app").await.unwrap();
    assert_eq!(
        r.push_blob(Some(&fresh), "team/app", b"basic")
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED
    );
    // Its token carries nothing outside its repository.
    let t = r
        .token(Some(&fresh), "repository:team/other:pull,push")
        .await
        .unwrap();
    let data = b"outside".to_vec();
    let resp = r
        .http
        .post(r.url(&format!(
            "/v2/team/other/blobs/uploads/?digest={}",
            sha256_digest(&data)
        )))
        .bearer_auth(&t)
        .body(data)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN,
        "push outside the token's repository: {}",
        resp.status()
    );
    let listed = r
        .ok(Method::GET, "/api/v1/projects/team/one-time-tokens", None)
        .await
        .unwrap();
    let redeemed = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["redeemed_at_ms"].is_u64())
        .count();
    assert_eq!(redeemed, 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["secret"].is_null())
    );
    r.audit_until("action=auth-failure", |e| {
        has(e, "auth-failure", &ci.0, "denied")
    })
    .await
    .unwrap();
}

/// A 3-node cluster in enforced mode with the administrator's password set.
fn enforced_cluster() -> berth_tests::cluster::Cluster {
    berth_tests::cluster::Cluster::up_with_env(
        3,
        vec![
            ("BERTH_AUTH".into(), "enforced".into()),
            ("BERTH_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ],
    )
    .unwrap_or_else(|e| panic!("cluster: {e:#}"))
}

#[tokio::test]
async fn a_one_time_token_is_accepted_by_one_node_of_a_cluster_only() {
    // Proves: a one-time token exchanged through node 1 is refused by nodes 2 and 3
    // (its redemption is in Raft), the access token from node 1 pushes through
    // node 2; and when three nodes are asked for the same fresh token at once,
    // exactly one of them accepts it.
    let _heavy = berth_tests::heavy().await;
    let cluster = enforced_cluster();
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = Creds::admin();
    let call = |node: u16, method: Method, path: &str, body: Value| {
        http.request(method, format!("{}{path}", cluster.url(node)))
            .basic_auth(&admin.0, Some(&admin.1))
            .json(&body)
            .send()
    };
    let resp = call(
        1,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "team", "public": false }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let mint = |node: u16| {
        let call = &call;
        async move {
            let v: Value = call(
                node,
                Method::POST,
                "/api/v1/projects/team/one-time-tokens",
                json!({ "repositories": "app" }),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            Creds::new(v["name"].as_str().unwrap(), v["secret"].as_str().unwrap())
        }
    };
    let scope = "repository:team/app:pull,push";
    let ci = mint(1).await;
    let resp = http
        .get(format!(
            "{}/token?service=berth&scope={scope}",
            cluster.url(1)
        ))
        .basic_auth(&ci.0, Some(&ci.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    let jwt = v["token"].as_str().unwrap().to_owned();
    assert!(v["refresh_token"].is_null());
    for node in [2, 3] {
        assert_eq!(
            token_status(&http, &cluster.url(node), &ci, scope).await,
            StatusCode::UNAUTHORIZED,
            "node {node} accepted a used one-time token"
        );
    }
    let data = random_bytes(1000);
    let resp = http
        .post(format!(
            "{}/v2/team/app/blobs/uploads/?digest={}",
            cluster.url(2),
            sha256_digest(&data)
        ))
        .bearer_auth(&jwt)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let race = mint(2).await;
    let urls = [1u16, 2, 3].map(|n| cluster.url(n));
    let statuses =
        futures::future::join_all(urls.iter().map(|u| token_status(&http, u, &race, scope))).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_rotated_robot_secret_replaces_the_old_one_at_once() {
    // Proves: after POST /api/v1/robots/{name}/secret the new secret works and the
    // old one is refused at once (also right after it was used, when its check is
    // cached); only the project's owners and administrators may rotate.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    let ci = r
        .robot(
            "ci",
            "team",
            json!([{ "repositories": "*", "actions": ["pull", "push"] }]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        r.push_blob(Some(&ci), "team/app", b"before").await.unwrap(),
        StatusCode::CREATED
    );
    let path = format!(
        "/api/v1/robots/{}/secret",
        ci.0.replace('$', "%24").replace('+', "%2B")
    );
    let (s, _) = r.api(Method::POST, &path, &dev, None).await.unwrap();
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a developer rotated a robot secret"
    );
    let v = r.ok(Method::POST, &path, None).await.unwrap();
    let new = Creds::new(&ci.0, v["secret"].as_str().unwrap());
    assert_ne!(new.1, ci.1);
    assert_eq!(
        r.push_blob(Some(&ci), "team/app", b"old").await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token_status(&r.http, &r.server.url(), &ci, "repository:team/app:pull").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.push_blob(Some(&new), "team/app", b"new").await.unwrap(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn tokens_of_a_rotated_signing_key_verify_until_the_overlap_ends() {
    // Proves: after a rotation with a 3 s overlap, new tokens carry the new key id,
    // a token signed by the previous key still works during the overlap and is
    // refused after it, while tokens of the new key keep working; only an
    // administrator may rotate.
    let r = Registry::start(&["--token-ttl-secs", "60"]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    r.push_image(&dev, "team/app", "v1").await.unwrap();
    let scope = "repository:team/app:pull";
    let kid = |t: &str| -> String {
        let h = t.split('.').next().unwrap();
        let v: Value = serde_json::from_slice(&base64_url_decode(h)).unwrap();
        v["kid"].as_str().unwrap().to_owned()
    };
    let old = r.token(Some(&dev), scope).await.unwrap();
    let (s, _) = r
        .api(
            Method::POST,
            "/api/v1/system/signing-keys/rotate",
            &dev,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
    let v = r
        .ok(
            Method::POST,
            "/api/v1/system/signing-keys/rotate",
            Some(json!({ "overlap_secs": 3 })),
        )
        .await
        .unwrap();
    let new_kid = v["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, kid(&old));
    let new = r.token(Some(&dev), scope).await.unwrap();
    assert_eq!(kid(&new), new_kid);
    let get = |tok: String| {
        let r = &r;
        async move {
            r.http
                .get(r.url("/v2/team/app/manifests/v1"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let rotated_at = Instant::now();
    assert_eq!(get(old.clone()).await, StatusCode::OK);
    assert_eq!(get(new.clone()).await, StatusCode::OK);
    let keys = r
        .ok(Method::GET, "/api/v1/system/signing-keys", None)
        .await
        .unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(rotated_at.elapsed()) + Duration::from_millis(500),
    )
    .await;
    assert_eq!(get(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(new).await, StatusCode::OK);
}

#[tokio::test]
async fn the_leader_rotates_the_signing_key_on_its_period_and_older_tokens_still_verify() {
    // Proves: with a 4 s rotation period (the test-only seconds flag) the node rotates
    // the signing key by itself; a token issued before the rotation still verifies,
    // new tokens carry a new key id, and the previous key stays for the overlap (one
    // refresh-token lifetime, 30 days), not just until the next period; the rotation
    // is audited as `berth:upkeep`.
    let r = Registry::start(&["--token-ttl-secs", "120", "--signing-key-rotate-secs", "4"]).await;
    r.project("team", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    r.push_image(&dev, "team/app", "v1").await.unwrap();
    let scope = "repository:team/app:pull";
    let kid = |t: &str| -> String {
        let h = t.split('.').next().unwrap();
        let v: Value = serde_json::from_slice(&base64_url_decode(h)).unwrap();
        v["kid"].as_str().unwrap().to_owned()
    };
    let old = r.token(Some(&dev), scope).await.unwrap();
    let first = kid(&old);
    let deadline = Instant::now() + Duration::from_secs(30);
    let keys = loop {
        let keys = r
            .ok(Method::GET, "/api/v1/system/signing-keys", None)
            .await
            .unwrap();
        let signing = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["retires_at_ms"].is_null())
            .map(|k| k["kid"].as_str().unwrap().to_owned());
        if signing.is_some_and(|k| k != first) {
            break keys;
        }
        assert!(Instant::now() < deadline, "never rotated: {keys}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let retired = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == first.as_str())
        .unwrap_or_else(|| panic!("the first key is gone: {keys}"));
    let retires = retired["retires_at_ms"].as_u64().unwrap();
    assert!(
        retires > now_ms + 29 * 86_400_000,
        "the first key retires at {retires}, not a refresh-token lifetime from now"
    );
    let new = r.token(Some(&dev), scope).await.unwrap();
    assert_ne!(kid(&new), first, "a new token is signed by the old key");
    for token in [old, new] {
        let status = r
            .http
            .get(r.url("/v2/team/app/manifests/v1"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    r.audit_until("action=policy", |e| {
        has(e, "policy", "berth:upkeep", "success")
    })
    .await
    .unwrap();
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes() {
        let v = A.iter().position(|a| *a == c).expect("base64url character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Runs `berth cluster ARGS` with `env` (and no inherited credentials).
fn berth_cluster(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(berth_binary().unwrap())
        .arg("cluster")
        .args(args)
        .env_remove("BERTH_USER")
        .env_remove("BERTH_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running berth cluster")
}

#[tokio::test]
async fn berth_cluster_status_sends_the_administrators_credentials() {
    // Proves: against an enforcing node `berth cluster status` without credentials
    // gets 401, and succeeds with the password from BERTH_PASSWORD or from the
    // bootstrap `<data>/admin-password` (--data).
    let server = Server::start(ServerOptions {
        args: vec!["--auth".into(), "enforced".into()],
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let url = server.url();
    let data = server.data_dir().to_string_lossy().into_owned();
    let answer = |out: Output| -> Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    };
    let none = answer(berth_cluster(&["status", "--json", "--url", &url], &[]));
    assert!(
        none["error"].as_str().is_some_and(|e| e.contains("401")),
        "{none}"
    );
    let from_file = answer(berth_cluster(
        &["status", "--json", "--url", &url, "--data", &data],
        &[],
    ));
    assert!(from_file["error"].is_null(), "{from_file}");
    assert!(from_file["term"].is_u64(), "{from_file}");
    let password = std::fs::read_to_string(server.data_dir().join("admin-password")).unwrap();
    let from_env = answer(berth_cluster(
        &["status", "--json", "--url", &url],
        &[("BERTH_PASSWORD", password.trim())],
    ));
    assert!(from_env["term"].is_u64(), "{from_env}");
    let wrong = answer(berth_cluster(
        &["status", "--json", "--url", &url],
        &[("BERTH_PASSWORD", "wrong-password")],
    ));
    assert!(
        wrong["error"].as_str().is_some_and(|e| e.contains("401")),
        "{wrong}"
    );
}

#[tokio::test]
async fn audit_entries_survive_a_kill_of_the_node_that_took_them() {
    // Proves: in an enforcing 3-node cluster, entries audited through node 1 (a
    // project created, a failed login), once flushed, are read back through node 2
    // after node 1 is killed with SIGKILL; `berth cluster remove` with the
    // administrator's password then takes node 1 out (and is refused without it).
    let _heavy = berth_tests::heavy().await;
    let cluster = enforced_cluster();
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = Creds::admin();
    let resp = http
        .post(format!("{}/api/v1/projects", cluster.url(1)))
        .basic_auth(&admin.0, Some(&admin.1))
        .json(&json!({ "name": "audited", "public": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = http
        .get(format!("{}/v2/", cluster.url(1)))
        .basic_auth("intruder", Some("not-a-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let audit = |node: u16| {
        let (http, admin, url) = (&http, &admin, cluster.url(node));
        async move {
            let resp = http
                .get(format!("{url}/api/v1/audit"))
                .basic_auth(&admin.0, Some(&admin.1))
                .send()
                .await?;
            ensure!(resp.status() == StatusCode::OK, "audit: {}", resp.status());
            let text = resp.text().await?;
            text.lines()
                .map(|l| Ok(serde_json::from_str::<Value>(l)?))
                .collect::<Result<Vec<Value>>>()
        }
    };
    let both = |e: &[Value]| {
        has(e, "auth-failure", "intruder", "denied")
            && e.iter()
                .any(|x| x["action"] == "policy" && x["project"] == "audited")
    };
    // Flushed: node 1 itself reads them from the replicated log.
    let deadline = Instant::now() + AUDIT_WAIT;
    loop {
        let entries = audit(1).await.unwrap();
        if both(&entries) {
            break;
        }
        assert!(Instant::now() < deadline, "never flushed: {entries:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.signal(1, "-9").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        match audit(2).await {
            Ok(e) => break e,
            Err(e) => {
                assert!(Instant::now() < deadline, "node 2 never answered: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(both(&entries), "lost with node 1: {entries:?}");

    let refused = berth_cluster(&["remove", "--url", &cluster.url(2), "1"], &[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let removed = berth_cluster(
        &["remove", "--url", &cluster.url(2), "1"],
        &[("BERTH_PASSWORD", ADMIN_PASSWORD)],
    );
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
}

/// Files below `dir` whose path contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(needle) {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn deleting_a_project_deletes_its_repositories_and_its_blobs_are_collected() {
    // Proves: DELETE /api/v1/projects/{p} on a project holding images removes its
    // repositories (catalog, manifests, tags, links), its members' access, and the
    // project; a blob only it linked is collected from disk by the upkeep; another
    // project's image and a blob it shares stay intact.
    let mut opts = ServerOptions::enforced(ADMIN_PASSWORD, &[]);
    opts.env.push(("BERTH_UPLOAD_TTL_SECS".into(), "4".into()));
    let r = Registry {
        server: Server::start(opts).await.unwrap(),
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let admin = Creds::admin();
    r.project("team", false).await.unwrap();
    r.project("other", false).await.unwrap();
    let dev = r.user("dev", "team", "developer").await.unwrap();
    r.push_image(&dev, "team/app", "v1").await.unwrap();
    let unique = random_bytes(300 * 1024);
    let shared = random_bytes(300 * 1024);
    for (repo, data) in [
        ("team/app", &unique),
        ("team/app/sub", &shared),
        ("other/app", &shared),
    ] {
        assert_eq!(
            r.push_blob(Some(&admin), repo, data).await.unwrap(),
            StatusCode::CREATED
        );
    }
    let (other_manifest, _) = r.push_image(&admin, "other/app", "v1").await.unwrap();
    let unique_hex = sha256_digest(&unique)
        .trim_start_matches("sha256:")
        .to_owned();
    let disks = r.server.data_dir().to_path_buf();
    assert!(
        !files_named(&disks, &unique_hex).is_empty(),
        "no shard files"
    );

    let (s, v) = r
        .api(Method::DELETE, "/api/v1/projects/team", &admin, None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let catalog: Value = r
        .req(Method::GET, "/v2/_catalog", Some(&admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], json!(["other/app"]), "{catalog}");
    let (s, _) = r
        .api(Method::GET, "/api/v1/projects/team", &admin, None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    let gone = r
        .req(Method::GET, "/v2/team/app/manifests/v1", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let denied = r
        .req(Method::GET, "/v2/team/app/tags/list", Some(&dev))
        .send()
        .await
        .unwrap();
    assert!(
        denied.status() == StatusCode::FORBIDDEN || denied.status() == StatusCode::NOT_FOUND,
        "{}",
        denied.status()
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_named(&disks, &unique_hex).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the deleted project's blob was not collected in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kept = r
        .req(
            Method::GET,
            &format!("/v2/other/app/blobs/{}", sha256_digest(&shared)),
            Some(&admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
    assert_eq!(kept.bytes().await.unwrap()[..], shared[..]);
    let manifest = r
        .req(Method::HEAD, "/v2/other/app/manifests/v1", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), StatusCode::OK);
    assert_eq!(
        header(manifest.headers(), "docker-content-digest"),
        other_manifest
    );
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_429_until_one_finishes() {
    // Proves: with --concurrent-requests-max 2, two uploads whose PATCH bodies are
    // still streaming hold both slots of the address and the identity: a third
    // request gets 429 TOOMANYREQUESTS with Retry-After; once the bodies end, the
    // uploads complete and requests pass again.
    let r = Registry::start(&["--concurrent-requests-max", "2"]).await;
    r.project("team", false).await.unwrap();
    let admin = Creds::admin();
    let mut senders = Vec::new();
    let mut patches = Vec::new();
    for _ in 0..2 {
        let resp = r
            .req(Method::POST, "/v2/team/app/blobs/uploads/", Some(&admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let location = header(resp.headers(), "location");
        let url = if location.starts_with("http") {
            location
        } else {
            r.url(&location)
        };
        let (tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let mut tx = tx;
        futures::SinkExt::send(&mut tx, Ok(vec![7u8; 1024]))
            .await
            .unwrap();
        senders.push(tx);
        let req = r
            .http
            .patch(url)
            .basic_auth(&admin.0, Some(&admin.1))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(rx));
        patches.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    // Both PATCHes are in their handlers once their first bytes are read.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let resp = r
            .req(Method::GET, "/v2/", Some(&admin))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "no 429 while two requests are in flight: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!header(refused.headers(), "retry-after").is_empty());
    expect_error(
        "over the concurrency limit",
        refused,
        429,
        "TOOMANYREQUESTS",
    )
    .await
    .unwrap();
    drop(senders);
    for p in patches {
        assert_eq!(p.await.unwrap().unwrap(), StatusCode::ACCEPTED);
    }
    let resp = r
        .req(Method::GET, "/v2/", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_upkeep_prunes_redeemed_and_expired_one_time_tokens() {
    // Proves: the upkeep removes a one-time token one access-token lifetime after it
    // was redeemed and one that expired unredeemed, and keeps one still redeemable
    // (which then still works).
    // Tokens go one token lifetime (5 s) after redemption or expiry, so the list
    // read right after the redemption still holds all three.
    let r = Registry::start(&["--token-ttl-secs", "5", "--upload-ttl-secs", "4"]).await;
    r.project("team", false).await.unwrap();
    let scope = "repository:team/app:pull,push";
    let used = one_time_token(&r, "team", "*").await.unwrap();
    let short = r
        .ok(
            Method::POST,
            "/api/v1/projects/team/one-time-tokens",
            Some(json!({ "repositories": "*", "expires_in_secs": 1 })),
        )
        .await
        .unwrap();
    let kept = one_time_token(&r, "team", "*").await.unwrap();
    assert_eq!(
        token_status(&r.http, &r.server.url(), &used, scope).await,
        StatusCode::OK
    );
    let names = || async {
        let list = r
            .ok(Method::GET, "/api/v1/projects/team/one-time-tokens", None)
            .await
            .unwrap();
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let mut all = vec![
        used.0.clone(),
        short["name"].as_str().unwrap().to_owned(),
        kept.0.clone(),
    ];
    all.sort();
    assert_eq!(names().await, all);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = names().await;
        if left == [kept.0.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one-time tokens never pruned: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        token_status(&r.http, &r.server.url(), &kept, scope).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_robot_secret_rotated_with_grace_keeps_the_old_one_until_the_grace_ends() {
    // Proves: after POST /api/v1/robots/{name}/secret?grace_secs=3 both the new and
    // the old secret push (Basic on /v2/ and /token), the old one is refused once the
    // grace is over, the new one keeps working; a grace out of range is 400; a later
    // rotation without grace ends any grace at once.
    let r = Registry::start(&[]).await;
    r.project("team", false).await.unwrap();
    let ci = r
        .robot(
            "ci",
            "team",
            json!([{ "repositories": "*", "actions": ["pull", "push"] }]),
            None,
        )
        .await
        .unwrap();
    let path = format!(
        "/api/v1/robots/{}/secret",
        ci.0.replace('$', "%24").replace('+', "%2B")
    );
    for bad in ["0", "604801", "x"] {
        let (s, _) = r
            .api(
                Method::POST,
                &format!("{path}?grace_secs={bad}"),
                &Creds::admin(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST, "grace_secs={bad}");
    }
    let v = r
        .ok(Method::POST, &format!("{path}?grace_secs=3"), None)
        .await
        .unwrap();
    let rotated_at = Instant::now();
    assert!(v["previous_valid_until_ms"].as_u64().is_some());
    let new = Creds::new(&ci.0, v["secret"].as_str().unwrap());
    let scope = "repository:team/app:pull,push";
    assert_eq!(
        r.push_blob(Some(&ci), "team/app", b"old in grace")
            .await
            .unwrap(),
        StatusCode::CREATED
    );
    assert_eq!(
        token_status(&r.http, &r.server.url(), &ci, scope).await,
        StatusCode::OK
    );
    assert_eq!(
        r.push_blob(Some(&new), "team/app", b"new in grace")
            .await
            .unwrap(),
        StatusCode::CREATED
    );
    assert!(
        rotated_at.elapsed() < Duration::from_secs(3),
        "the checks in the grace took too long to prove anything"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(rotated_at.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.push_blob(Some(&ci), "team/app", b"old after grace")
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token_status(&r.http, &r.server.url(), &ci, scope).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.push_blob(Some(&new), "team/app", b"new after grace")
            .await
            .unwrap(),
        StatusCode::CREATED
    );

    // A rotation with grace, then one without: the grace ends with the second.
    let v = r
        .ok(Method::POST, &format!("{path}?grace_secs=600"), None)
        .await
        .unwrap();
    let newer = Creds::new(&ci.0, v["secret"].as_str().unwrap());
    assert_eq!(
        token_status(&r.http, &r.server.url(), &new, scope).await,
        StatusCode::OK
    );
    let v = r.ok(Method::POST, &path, None).await.unwrap();
    assert_eq!(v["previous_valid_until_ms"], Value::Null);
    let newest = Creds::new(&ci.0, v["secret"].as_str().unwrap());
    for old in [&new, &newer] {
        assert_eq!(
            token_status(&r.http, &r.server.url(), old, scope).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        token_status(&r.http, &r.server.url(), &newest, scope).await,
        StatusCode::OK
    );
}
