//! OIDC logins against a real berth in enforced mode and a test issuer run by the
//! test itself (an axum server on loopback serving discovery and a JWKS, signing ID
//! tokens with RS256 and ES256 keys generated here): group bindings decide who pushes
//! and who only pulls (with Basic credentials on /v2/, the ID token as a Bearer, the
//! token endpoint and skopeo); expired, wrong-audience, wrong-issuer, foreign-key and
//! unsigned tokens are refused; forged key ids do not make berth hammer the issuer; a
//! key rotation at the issuer is picked up; an unreachable issuer gives 503; logins
//! and failures are audited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use berth_tests::oci::{OCI_CONFIG, OCI_MANIFEST, manifest_bytes};
use berth_tests::{Server, ServerOptions, random_bytes, sha256_digest};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin-secret-1";
const AUDIENCE: &str = "berth-client";
/// How long an audit entry may take to be flushed through Raft.
const AUDIT_WAIT: Duration = Duration::from_secs(10);
/// `--oidc-jwks-refresh-min-secs` of the servers in these tests.
const REFRESH_MIN_SECS: u64 = 2;

/// A signing key of the test issuer.
enum Key {
    Rsa { kid: String, pair: RsaKeyPair },
    Ec { kid: String, pair: EcdsaKeyPair },
}

impl Key {
    fn rsa(kid: &str) -> Key {
        Key::Rsa {
            kid: kid.into(),
            pair: RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key"),
        }
    }

    fn ec(kid: &str) -> Key {
        Key::Ec {
            kid: kid.into(),
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
        }
    }

    fn kid(&self) -> &str {
        match self {
            Key::Rsa { kid, .. } | Key::Ec { kid, .. } => kid,
        }
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        match self {
            Key::Rsa { kid, pair } => {
                let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": B64URL.encode(&c.n), "e": B64URL.encode(&c.e) })
            }
            Key::Ec { kid, pair } => {
                let p = pair.public_key().as_ref();
                json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65]) })
            }
        }
    }

    /// A signed JWT with `claims`, naming this key's id (or `kid` if given).
    fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let alg = match self {
            Key::Rsa { .. } => "RS256",
            Key::Ec { .. } => "ES256",
        };
        let header = json!({ "alg": alg, "typ": "JWT", "kid": kid.unwrap_or(self.kid()) });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Key::Rsa { pair, .. } => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA signature");
                sig
            }
            Key::Ec { pair, .. } => pair
                .sign(&rng, input.as_bytes())
                .expect("EC signature")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64URL.encode(sig))
    }
}

struct IssuerState {
    url: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// The test issuer: discovery and JWKS on a loopback port.
struct Issuer {
    state: Arc<IssuerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start(keys: &[&Key]) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind issuer");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(IssuerState {
            url: format!("http://{addr}/realms/test"),
            keys: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                get(|State(s): State<Arc<IssuerState>>| async move {
                    Json(json!({
                        "issuer": s.url,
                        "jwks_uri": format!("{}/keys", s.url),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }))
                }),
            )
            .route(
                "/realms/test/keys",
                get(|State(s): State<Arc<IssuerState>>| async move {
                    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    Json(json!({ "keys": s.keys.lock().unwrap().clone() }))
                }),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("issuer serves");
        });
        Issuer { state, task }
    }

    fn url(&self) -> &str {
        &self.state.url
    }

    fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: &[&Key]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    /// ID token claims for `sub` in `groups`, valid for five minutes.
    fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = now_secs();
        json!({ "iss": self.url(), "aud": AUDIENCE, "sub": sub, "groups": groups,
                "iat": now, "nbf": now, "exp": now + 300 })
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An enforcing berth that trusts `issuer`, and an HTTP client.
struct Registry {
    server: Server,
    http: Client,
}

enum Who<'a> {
    Admin,
    /// An ID token as the password of the `oidc` user.
    Basic(&'a str),
    /// A token (ID token or berth token) as a Bearer.
    Bearer(&'a str),
}

impl Registry {
    async fn start(issuer_url: &str, extra: &[&str]) -> Registry {
        let refresh = REFRESH_MIN_SECS.to_string();
        let mut args = vec![
            "--oidc-issuer",
            issuer_url,
            "--oidc-audience",
            AUDIENCE,
            "--oidc-jwks-refresh-min-secs",
            &refresh,
        ];
        args.extend_from_slice(extra);
        let server = Server::start(ServerOptions::enforced(ADMIN_PASSWORD, &args))
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

    fn req(&self, method: Method, path: &str, who: &Who) -> RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.server.url()));
        match who {
            Who::Admin => r.basic_auth("admin", Some(ADMIN_PASSWORD)),
            Who::Basic(t) => r.basic_auth("oidc", Some(t)),
            Who::Bearer(t) => r.bearer_auth(t),
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut r = self.req(method.clone(), path, &Who::Admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.is_success(), "{method} {path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A private project `name` whose OIDC `groups` hold the given roles.
    async fn project(&self, name: &str, groups: &[(&str, &str)]) -> Result<()> {
        self.admin(
            Method::POST,
            "/api/v1/projects",
            Some(json!({ "name": name, "public": false })),
        )
        .await?;
        for (group, role) in groups {
            self.admin(
                Method::PUT,
                &format!("/api/v1/projects/{name}/groups/oidc/{group}"),
                Some(json!({ "role": role })),
            )
            .await?;
        }
        Ok(())
    }

    async fn push_blob(&self, who: &Who<'_>, repo: &str, data: &[u8]) -> Result<StatusCode> {
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

    /// Pushes a one-layer image; returns the manifest digest.
    async fn push_image(&self, who: &Who<'_>, repo: &str, tag: &str) -> Result<String> {
        let layer = random_bytes(2048);
        let config = serde_json::to_vec(
            &json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] } }),
        )?;
        for data in [&layer, &config] {
            let s = self.push_blob(who, repo, data).await?;
            ensure!(s == StatusCode::CREATED, "push blob to {repo}: {s}");
        }
        let manifest = manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len() }],
        }));
        let resp = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), who)
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "push manifest {repo}:{tag}: {}",
            resp.status()
        );
        Ok(sha256_digest(&manifest))
    }

    async fn status(&self, method: Method, path: &str, who: &Who<'_>) -> StatusCode {
        self.req(method, path, who)
            .send()
            .await
            .expect("request")
            .status()
    }

    /// `GET /token` for `scope` with the ID token as the `oidc` user's password:
    /// status and body.
    async fn token(&self, id_token: &str, scope: &str) -> (StatusCode, Value) {
        let resp = self
            .req(
                Method::GET,
                &format!("/token?service=berth&scope={scope}"),
                &Who::Basic(id_token),
            )
            .send()
            .await
            .expect("token request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The audit entries, waiting until `want` holds.
    async fn audit_until(&self, query: &str, want: impl Fn(&[Value]) -> bool) -> Result<()> {
        let deadline = Instant::now() + AUDIT_WAIT;
        loop {
            let resp = self
                .req(Method::GET, &format!("/api/v1/audit?{query}"), &Who::Admin)
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
                return Ok(());
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

/// The payload of a JWT, unverified.
fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&B64URL.decode(part).expect("base64url")).expect("JSON payload")
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

fn run(program: &Path, args: &[&str], what: &str) -> Result<Output> {
    let output = Command::new("timeout")
        .arg("300")
        .arg(program)
        .args(args)
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
    let layer = random_bytes(100 * 1024);
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
async fn oidc_groups_decide_who_pushes_and_who_pulls() {
    // Proves: an ID token whose group is bound to Developer pushes and pulls with
    // Basic credentials on /v2/, as a Bearer on /v2/, through the token endpoint (GET
    // and the OAuth2 password grant, without a refresh token) and with skopeo; a
    // token whose group is bound to Reader pulls but cannot push and gets only pull
    // in its berth token; a token in no bound group gets nothing; the identity is
    // `oidc:<sub>`; logins and failures are audited; group bindings are listed.
    let rsa = Key::rsa("rsa-1");
    let ec = Key::ec("ec-1");
    let issuer = Issuer::start(&[&rsa, &ec]).await;
    let r = Registry::start(issuer.url(), &[]).await;
    r.project("team", &[("devs", "developer"), ("viewers", "reader")])
        .await
        .unwrap();
    let groups = r
        .admin(Method::GET, "/api/v1/projects/team/groups", None)
        .await
        .unwrap();
    assert_eq!(
        groups,
        json!([{ "provider": "oidc", "group": "devs", "role": "developer" },
               { "provider": "oidc", "group": "viewers", "role": "reader" }])
    );

    let dev = rsa.sign(&issuer.claims("alice", &["devs", "other"]), None);
    let viewer = ec.sign(&issuer.claims("bob", &["viewers"]), None);
    let stranger = rsa.sign(&issuer.claims("carol", &["nobody"]), None);

    // Basic credentials on /v2/.
    let digest = r
        .push_image(&Who::Basic(&dev), "team/app", "v1")
        .await
        .unwrap();
    let manifest = format!("/v2/team/app/manifests/{digest}");
    assert_eq!(
        r.status(Method::GET, &manifest, &Who::Basic(&dev)).await,
        StatusCode::OK
    );
    // The ID token itself as a Bearer.
    assert_eq!(
        r.status(Method::GET, &manifest, &Who::Bearer(&dev)).await,
        StatusCode::OK
    );
    assert_eq!(
        r.push_blob(&Who::Bearer(&dev), "team/app", b"bearer bytes")
            .await
            .unwrap(),
        StatusCode::CREATED
    );

    // The token endpoint issues a berth token carrying what the groups grant.
    let (status, body) = r.token(&dev, "repository:team/app:pull,push").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let claims = payload(&token);
    assert_eq!(claims["sub"], "oidc:alice");
    assert_eq!(claims["access"][0]["actions"], json!(["pull", "push"]));
    assert_eq!(
        r.push_blob(&Who::Bearer(&token), "team/app", b"token bytes")
            .await
            .unwrap(),
        StatusCode::CREATED
    );
    // The OAuth2 password grant (`docker login`), without a refresh token.
    let resp = r
        .http
        .post(format!("{}/token", r.server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=oidc&password={dev}&service=berth&client_id=docker\
             &access_type=offline&scope=repository%3Ateam%2Fapp%3Apull"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");

    // A Reader group pulls, cannot push, and its berth token holds only pull.
    assert_eq!(
        r.status(Method::GET, &manifest, &Who::Basic(&viewer)).await,
        StatusCode::OK
    );
    assert_eq!(
        r.push_blob(&Who::Basic(&viewer), "team/app", b"viewer bytes")
            .await
            .unwrap(),
        StatusCode::FORBIDDEN
    );
    let (status, body) = r.token(&viewer, "repository:team/app:pull,push").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(payload(&token)["access"][0]["actions"], json!(["pull"]));
    assert_eq!(
        r.push_blob(&Who::Bearer(&token), "team/app", b"viewer bytes")
            .await
            .unwrap(),
        StatusCode::FORBIDDEN
    );

    // No bound group: nothing in the private project, not even its existence.
    let s = r
        .status(Method::GET, &manifest, &Who::Basic(&stranger))
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "stranger pull: {s}"
    );
    let (status, body) = r.token(&stranger, "repository:team/app:pull,push").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        payload(body["token"].as_str().unwrap())["access"][0]["actions"],
        json!([])
    );

    // Unbinding the group takes the rights away from tokens already issued.
    let (_, body) = r.token(&viewer, "repository:team/app:pull").await;
    let viewer_token = body["token"].as_str().unwrap().to_owned();
    r.admin(
        Method::DELETE,
        "/api/v1/projects/team/groups/oidc/viewers",
        None,
    )
    .await
    .unwrap();
    let s = r
        .status(Method::GET, &manifest, &Who::Bearer(&viewer_token))
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND || s == StatusCode::UNAUTHORIZED,
        "pull after unbinding: {s}"
    );

    // skopeo follows the token flow with the ID token as the password.
    let skopeo = require_tool("skopeo");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let image = oci_layout(&src).unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let policy = policy.to_string_lossy().into_owned();
    let remote = format!("docker://{}/team/skopeo:v1", r.server.addr());
    let creds = format!("oidc:{dev}");
    let src_ref = format!("oci:{}:v1", src.display());
    let dst = work.path().join("dst");
    let dst_ref = format!("oci:{}:v1", dst.display());
    for (args, what) in [
        (
            vec![
                "--dest-tls-verify=false",
                "--dest-creds",
                creds.as_str(),
                src_ref.as_str(),
                remote.as_str(),
            ],
            "skopeo push with an ID token",
        ),
        (
            vec![
                "--src-tls-verify=false",
                "--src-creds",
                creds.as_str(),
                remote.as_str(),
                dst_ref.as_str(),
            ],
            "skopeo pull with an ID token",
        ),
    ] {
        let mut all = vec!["--policy", policy.as_str(), "copy", "--preserve-digests"];
        all.extend(args);
        run(&skopeo, &all, what).unwrap();
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], image.as_str());

    // A garbage password for the oidc user fails and is audited.
    assert_eq!(
        r.status(Method::GET, &manifest, &Who::Basic("not-a-jwt"))
            .await,
        StatusCode::UNAUTHORIZED
    );
    r.audit_until("", |e| {
        has(e, "login", "oidc:alice", "success")
            && has(e, "tag", "oidc:alice", "success")
            && has(e, "push", "oidc:bob", "denied")
            && has(e, "auth-failure", "oidc", "denied")
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_id_tokens_are_refused_and_do_not_hammer_the_issuer() {
    // Proves: expired, not-yet-valid, wrong-audience, wrong-issuer, foreign-key,
    // tampered, unsigned and HS256 tokens get 401 on /v2/ and at the token endpoint;
    // tokens naming unknown key ids make berth fetch the issuer's keys at most once
    // per refresh interval.
    let rsa = Key::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let r = Registry::start(issuer.url(), &["--failed-logins-per-minute", "10000"]).await;
    r.project("team", &[("devs", "developer")]).await.unwrap();
    let good = issuer.claims("alice", &["devs"]);
    let ok = rsa.sign(&good, None);
    assert_eq!(
        r.push_blob(&Who::Basic(&ok), "team/app", b"good")
            .await
            .unwrap(),
        StatusCode::CREATED
    );

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let now = now_secs();
    let foreign = Key::rsa("rsa-1");
    let mut tampered: Vec<String> = ok.split('.').map(String::from).collect();
    tampered[1] = B64URL.encode(with("sub", json!("mallory")).to_string());
    let unsigned = format!(
        "{}.{}.",
        B64URL.encode(json!({ "alg": "none", "kid": "rsa-1" }).to_string()),
        B64URL.encode(good.to_string())
    );
    let hs_input = format!(
        "{}.{}",
        B64URL.encode(json!({ "alg": "HS256", "kid": "rsa-1" }).to_string()),
        B64URL.encode(good.to_string())
    );
    let hs256 = format!("{hs_input}.{}", B64URL.encode([7u8; 32]));
    let bad = [
        ("expired", rsa.sign(&with("exp", json!(now - 600)), None)),
        (
            "not yet valid",
            rsa.sign(&with("nbf", json!(now + 600)), None),
        ),
        (
            "another audience",
            rsa.sign(&with("aud", json!("other")), None),
        ),
        (
            "another issuer",
            rsa.sign(&with("iss", json!("http://127.0.0.1:1/evil")), None),
        ),
        ("a foreign key under a known kid", foreign.sign(&good, None)),
        ("tampered", tampered.join(".")),
        ("unsigned", unsigned),
        ("HS256", hs256),
    ];
    for (what, token) in &bad {
        assert_eq!(
            r.push_blob(&Who::Basic(token), "team/app", what.as_bytes())
                .await
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "{what} with Basic on /v2/"
        );
        assert_eq!(
            r.status(Method::GET, "/v2/team/app/tags/list", &Who::Bearer(token))
                .await,
            StatusCode::UNAUTHORIZED,
            "{what} as a Bearer on /v2/"
        );
        let (status, body) = r.token(token, "repository:team/app:pull").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} at /token: {body}");
    }

    // A burst of tokens naming unknown key ids: at most one fetch per interval.
    tokio::time::sleep(Duration::from_secs(REFRESH_MIN_SECS + 1)).await;
    let before = issuer.fetches();
    let started = Instant::now();
    for i in 0..30 {
        let t = foreign.sign(&good, Some(&format!("forged-{i}")));
        assert_eq!(
            r.status(Method::GET, "/v2/team/app/tags/list", &Who::Bearer(&t))
                .await,
            StatusCode::UNAUTHORIZED
        );
    }
    let intervals = started.elapsed().as_secs() / REFRESH_MIN_SECS + 1;
    let fetched = issuer.fetches() - before;
    assert!(
        fetched >= 1 && fetched as u64 <= intervals,
        "{fetched} key fetches for 30 forged key ids in {:?}",
        started.elapsed()
    );
    // The good token still works.
    assert_eq!(
        r.push_blob(&Who::Bearer(&ok), "team/app", b"still good")
            .await
            .unwrap(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_key_rotation_at_the_issuer_is_picked_up() {
    // Proves: when the issuer publishes a new key (new kid) and drops the old one,
    // tokens signed with the new key are accepted once berth refetches (no restart),
    // and tokens signed with the dropped key are refused from then on.
    let old = Key::rsa("2026-old");
    let issuer = Issuer::start(&[&old]).await;
    let r = Registry::start(issuer.url(), &[]).await;
    r.project("team", &[("devs", "developer")]).await.unwrap();
    let claims = issuer.claims("alice", &["devs"]);
    let old_token = old.sign(&claims, None);
    assert_eq!(
        r.push_blob(&Who::Basic(&old_token), "team/app", b"old key")
            .await
            .unwrap(),
        StatusCode::CREATED
    );

    let new = Key::ec("2026-new");
    issuer.publish(&[&new]);
    let new_token = new.sign(&claims, None);
    let deadline = Instant::now() + Duration::from_secs(REFRESH_MIN_SECS * 5);
    loop {
        let s = r
            .push_blob(&Who::Basic(&new_token), "team/app", b"new key")
            .await
            .unwrap();
        if s == StatusCode::CREATED {
            break;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(Instant::now() < deadline, "the new key was never picked up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        r.push_blob(&Who::Basic(&old_token), "team/app", b"old key again")
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_unreachable_issuer_gives_503_not_a_crash() {
    // Proves: when the issuer cannot be reached, OIDC logins get 503 with a clear
    // message (not 500, not a crash), local users still log in, and the failure is
    // audited.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/realms/gone", closed.local_addr().unwrap());
    drop(closed);
    let key = Key::rsa("k");
    let claims = json!({ "iss": url, "aud": AUDIENCE, "sub": "alice",
                         "exp": now_secs() + 300, "nbf": now_secs() });
    let token = key.sign(&claims, None);
    let r = Registry::start(&url, &[]).await;
    let resp = r
        .req(
            Method::GET,
            "/token?service=berth&scope=repository:team/app:pull",
            &Who::Basic(&token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("oidc identity provider cannot be reached"),
        "{text}"
    );
    assert_eq!(
        r.status(Method::GET, "/v2/", &Who::Bearer(&token)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        r.status(Method::GET, "/api/v1/projects", &Who::Admin).await,
        StatusCode::OK
    );
    let providers = r
        .admin(Method::GET, "/api/v1/identity-providers", None)
        .await
        .unwrap();
    assert_eq!(providers["oidc"]["issuer"], url.as_str());
    r.audit_until("action=auth-failure", |e| {
        has(e, "auth-failure", "oidc", "failure")
    })
    .await
    .unwrap();
}

/// Polls `check` every 200 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        ensure!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn oidc_settings_made_through_one_node_are_used_by_every_node() {
    // Proves: in a 3-node cluster started without OIDC flags, an administrator sets
    // the issuer with PUT /api/v1/identity-providers through node 1 (stored through
    // Raft) and an ID token then logs in and pushes through node 3 without a
    // restart; an issuer that is not https off loopback is refused with 400.
    let _heavy = berth_tests::heavy().await;
    let key = Key::ec("ec-cluster");
    let issuer = Issuer::start(&[&key]).await;
    let cluster = berth_tests::cluster::Cluster::up_with_env(
        3,
        vec![
            ("BERTH_AUTH".into(), "enforced".into()),
            ("BERTH_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ],
    )
    .unwrap_or_else(|e| panic!("cluster: {e:#}"));
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = |node: u16, method: Method, path: &str, body: Value| {
        http.request(method, format!("{}{path}", cluster.url(node)))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&body)
            .send()
    };
    let token = key.sign(&issuer.claims("alice", &["devs"]), None);
    let v2 = |node: u16| {
        let request = http
            .get(format!("{}/v2/", cluster.url(node)))
            .bearer_auth(&token);
        async move { request.send().await.map(|r| r.status()).ok() }
    };
    assert_eq!(v2(3).await, Some(StatusCode::UNAUTHORIZED));

    let resp = admin(
        1,
        Method::PUT,
        "/api/v1/identity-providers",
        json!({ "oidc": { "issuer": "http://id.example/realm", "audience": AUDIENCE } }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = admin(
        1,
        Method::PUT,
        "/api/v1/identity-providers",
        json!({ "oidc": { "issuer": issuer.url(), "audience": AUDIENCE,
                          "jwks_refresh_min_secs": REFRESH_MIN_SECS } }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["oidc"]["issuer"], issuer.url());
    assert_eq!(view["oidc"]["groups_claim"], "groups");
    assert_eq!(view["oidc"]["source"], "cluster");
    assert_eq!(view["ldap"], Value::Null);
    let resp = admin(
        1,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "team", "public": false }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = admin(
        1,
        Method::PUT,
        "/api/v1/projects/team/groups/oidc/devs",
        json!({ "role": "developer" }),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success());

    eventually(
        Duration::from_secs(20),
        "an OIDC login through node 3",
        || async { v2(3).await == Some(StatusCode::OK) },
    )
    .await
    .unwrap();
    let data = b"alice's bytes through node 3";
    let resp = http
        .post(format!(
            "{}/v2/team/app/blobs/uploads/?digest={}",
            cluster.url(3),
            sha256_digest(data)
        ))
        .bearer_auth(&token)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let view: Value = admin(3, Method::GET, "/api/v1/identity-providers", json!(null))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["oidc"]["issuer"], issuer.url());
}

#[tokio::test]
async fn flags_seed_the_cluster_setting_and_never_overwrite_it() {
    // Proves: a node started with --oidc-* flags seeds the cluster setting (source
    // `cluster`); once an administrator turns OIDC off through the API, the node
    // refuses ID tokens at once and still after a restart with the same flags.
    let key = Key::ec("ec-seed");
    let issuer = Issuer::start(&[&key]).await;
    let mut r = Registry::start(issuer.url(), &[]).await;
    let token = key.sign(&issuer.claims("alice", &["devs"]), None);
    assert_eq!(
        r.status(Method::GET, "/v2/", &Who::Bearer(&token)).await,
        StatusCode::OK
    );
    let view = r
        .admin(Method::GET, "/api/v1/identity-providers", None)
        .await
        .unwrap();
    assert_eq!(view["oidc"]["issuer"], issuer.url());
    assert_eq!(view["oidc"]["source"], "cluster");

    let view = r
        .admin(
            Method::PUT,
            "/api/v1/identity-providers",
            Some(json!({ "oidc": null })),
        )
        .await
        .unwrap();
    assert_eq!(view["oidc"], Value::Null);
    assert_eq!(
        r.status(Method::GET, "/v2/", &Who::Bearer(&token)).await,
        StatusCode::UNAUTHORIZED
    );
    r.audit_until("action=policy", |e| {
        e.iter().any(|x| {
            x["resource"]
                .as_str()
                .is_some_and(|s| s.contains("identity provider oidc off"))
        })
    })
    .await
    .unwrap();
    r.server.restart().await.unwrap();
    assert_eq!(
        r.status(Method::GET, "/v2/", &Who::Bearer(&token)).await,
        StatusCode::UNAUTHORIZED
    );
    let view = r
        .admin(Method::GET, "/api/v1/identity-providers", None)
        .await
        .unwrap();
    assert_eq!(view["oidc"], Value::Null);
}
