//! LDAP logins against a real berth in enforced mode and Debian's real `slapd`, started
//! by the test as a child process on a free loopback port with its configuration and
//! data (loaded with `slapadd`) in a temporary folder, and stopped by PID at the end:
//! the right password and a group bound to Developer push (Basic on /v2/ and the
//! token endpoint); a wrong password is 401; a user in no bound group gets no project
//! rights; a Reader group cannot push; a directory that is down gives 503, not a 5xx
//! crash; logins and failures are audited.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use berth_tests::server::free_port;
use berth_tests::{Server, ServerOptions, sha256_digest};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin-secret-1";
const SUFFIX: &str = "dc=berth,dc=test";
/// How long slapd may take to answer after it is started.
const SLAPD_STARTUP: Duration = Duration::from_secs(15);
/// How long an audit entry may take to be flushed through Raft.
const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// A slapd child process serving `dc=berth,dc=test` on loopback.
struct Slapd {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|c| c.is_file())
        .unwrap_or_else(|| panic!("`{name}` is missing (./scripts/test.sh installs slapd)"))
}

/// The directory: people alice (devs), bob (others), carol (viewers), dave (devs);
/// each one's password is `<name>-password`.
fn seed_ldif() -> String {
    let mut s = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: berth\ndc: berth\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for user in ["alice", "bob", "carol", "dave"] {
        s.push_str(&format!(
            "dn: uid={user},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {user}\n\
             cn: {user}\nsn: {user}\nuserPassword: {user}-password\n\n"
        ));
    }
    for (group, members) in [
        ("devs", &["alice", "dave"][..]),
        ("others", &["bob"][..]),
        ("viewers", &["carol"][..]),
    ] {
        s.push_str(&format!(
            "dn: cn={group},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {group}\n"
        ));
        for m in members {
            s.push_str(&format!("member: uid={m},ou=people,{SUFFIX}\n"));
        }
        s.push('\n');
    }
    s
}

impl Slapd {
    fn start() -> Result<Slapd> {
        let dir = tempfile::Builder::new().prefix("berth-slapd-").tempdir()?;
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db)?;
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {pid}\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{SUFFIX}\"\n\
                 rootdn \"cn=admin,{SUFFIX}\"\n\
                 rootpw admin-secret\n\
                 directory {db}\n\
                 access to attrs=userPassword by anonymous auth by self write by * none\n\
                 access to * by users read by * none\n",
                pid = dir.path().join("slapd.pid").display(),
                db = db.display(),
            ),
        )?;
        let ldif = dir.path().join("seed.ldif");
        std::fs::write(&ldif, seed_ldif())?;
        let out = Command::new(tool("slapadd"))
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif)
            .output()
            .context("running slapadd")?;
        ensure!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("slapd.log"))?;
        // `-d 0` keeps slapd in the foreground as our child, so we stop it by PID.
        let child = Command::new(tool("slapd"))
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .arg("-f")
            .arg(&conf)
            .arg("-d")
            .arg("0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting slapd")?;
        let mut slapd = Slapd {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + SLAPD_STARTUP;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(c) = slapd.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("slapd exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("slapd did not listen on {port} within {SLAPD_STARTUP:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(slapd)
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Stops slapd (SIGKILL by PID) and reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Registry {
    server: Server,
    http: Client,
}

impl Registry {
    async fn start(ldap_url: &str) -> Registry {
        let user_dn = format!("uid={{user}},ou=people,{SUFFIX}");
        let group_base = format!("ou=groups,{SUFFIX}");
        let server = Server::start(ServerOptions::enforced(
            ADMIN_PASSWORD,
            &[
                "--ldap-url",
                ldap_url,
                "--ldap-user-dn",
                &user_dn,
                "--ldap-group-base",
                &group_base,
                "--failed-logins-per-minute",
                "1000",
            ],
        ))
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

    async fn admin(&self, method: Method, path: &str, body: Value) -> Result<()> {
        let resp = self
            .http
            .request(method.clone(), self.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&body)
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
        Ok(())
    }

    async fn push_blob(&self, user: &str, password: &str, data: &[u8]) -> StatusCode {
        let d = sha256_digest(data);
        self.http
            .post(self.url(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
            .basic_auth(user, Some(password))
            .body(data.to_vec())
            .send()
            .await
            .expect("push")
            .status()
    }

    /// `GET /token` for pull,push on team/app: status and the granted actions.
    async fn token(&self, user: &str, password: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url("/token?service=berth&scope=repository:team/app:pull,push"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("token");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let claims = body["token"]
            .as_str()
            .and_then(|t| t.split('.').nth(1))
            .and_then(|p| B64URL.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        (status, claims)
    }

    async fn audit_until(&self, want: impl Fn(&[Value]) -> bool) -> Result<()> {
        let deadline = Instant::now() + AUDIT_WAIT;
        loop {
            let text = self
                .http
                .get(self.url("/api/v1/audit"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .await?
                .text()
                .await?;
            let entries: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if want(&entries) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("audit entries never matched: {text}");
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

#[tokio::test]
async fn ldap_binds_and_groups_decide_access() {
    // Proves: with slapd up, alice (group devs -> developer) pushes with Basic on /v2/
    // and gets pull,push in a berth token for `ldap:alice`; a wrong password is 401;
    // bob (group others, unbound) gets no rights; carol (viewers -> reader) cannot
    // push; with slapd down, dave's login is 503 (never a 500), the local admin still
    // works; logins and failures are audited.
    let mut slapd = Slapd::start().unwrap();
    let r = Registry::start(&slapd.url()).await;
    r.admin(
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "team", "public": false }),
    )
    .await
    .unwrap();
    for (group, role) in [("devs", "developer"), ("viewers", "reader")] {
        r.admin(
            Method::PUT,
            &format!("/api/v1/projects/team/groups/ldap/{group}"),
            json!({ "role": role }),
        )
        .await
        .unwrap();
    }

    assert_eq!(
        r.push_blob("alice", "alice-password", b"alice bytes").await,
        StatusCode::CREATED
    );
    let (status, claims) = r.token("alice", "alice-password").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims["sub"], "ldap:alice");
    assert_eq!(claims["access"][0]["actions"], json!(["pull", "push"]));

    assert_eq!(
        r.push_blob("alice", "wrong-password", b"x").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.token("alice", "wrong-password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.push_blob("nobody", "nobody-password", b"x").await,
        StatusCode::UNAUTHORIZED
    );

    let (status, claims) = r.token("bob", "bob-password").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims["access"][0]["actions"], json!([]));
    assert_eq!(
        r.push_blob("bob", "bob-password", b"bob bytes").await,
        StatusCode::FORBIDDEN
    );

    let (_, claims) = r.token("carol", "carol-password").await;
    assert_eq!(claims["access"][0]["actions"], json!(["pull"]));
    assert_eq!(
        r.push_blob("carol", "carol-password", b"carol bytes").await,
        StatusCode::FORBIDDEN
    );

    slapd.stop();
    let status = r.push_blob("dave", "dave-password", b"dave bytes").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.token("dave", "dave-password").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let resp = r
        .http
        .get(r.url("/api/v1/projects"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    r.audit_until(|e| {
        has(e, "login", "ldap:alice", "success")
            && has(e, "auth-failure", "alice", "denied")
            && has(e, "push", "ldap:carol", "denied")
            && has(e, "auth-failure", "dave", "failure")
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
async fn ldap_settings_made_through_one_node_are_used_by_every_node() {
    // Proves: in a 3-node cluster started without LDAP flags, an administrator sets
    // the directory with PUT /api/v1/identity-providers through node 1 (stored
    // through Raft) and an LDAP login through node 3 then works without a restart;
    // turning LDAP off through node 2 makes node 3 refuse the same login; invalid
    // settings are refused with 400 and change nothing.
    let _heavy = berth_tests::heavy().await;
    let slapd = Slapd::start().unwrap();
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
    let alice_v2 = |node: u16| {
        let request = http
            .get(format!("{}/v2/", cluster.url(node)))
            .basic_auth("alice", Some("alice-password"));
        async move { request.send().await.map(|r| r.status()).ok() }
    };
    let providers = admin(3, Method::GET, "/api/v1/identity-providers", json!(null))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(providers["ldap"], Value::Null);
    assert_eq!(alice_v2(3).await, Some(StatusCode::UNAUTHORIZED));

    let ldap = json!({
        "url": slapd.url(),
        "user_dn": format!("uid={{user}},ou=people,{SUFFIX}"),
        "group_base": format!("ou=groups,{SUFFIX}"),
    });
    for bad in [
        json!({ "ldap": { "url": "http://127.0.0.1:1", "user_dn": "uid={user}", "group_base": "b" } }),
        json!({ "ldap": { "url": slapd.url(), "user_dn": "uid=alice", "group_base": "b" } }),
        json!({ "ldap": { "url": slapd.url() } }),
        json!({ "ldapp": ldap }),
    ] {
        let resp = admin(1, Method::PUT, "/api/v1/identity-providers", bad.clone())
            .await
            .unwrap();
        assert!(
            resp.status().is_client_error(),
            "{bad} answered {}",
            resp.status()
        );
    }
    let resp = admin(
        1,
        Method::PUT,
        "/api/v1/identity-providers",
        json!({ "ldap": ldap }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["ldap"]["url"], slapd.url());
    assert_eq!(view["ldap"]["source"], "cluster");
    assert_eq!(view["oidc"], Value::Null);
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
        "/api/v1/projects/team/groups/ldap/devs",
        json!({ "role": "developer" }),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success());

    eventually(
        Duration::from_secs(20),
        "an LDAP login through node 3",
        || async { alice_v2(3).await == Some(StatusCode::OK) },
    )
    .await
    .unwrap();
    let data = b"alice through node 3";
    let resp = http
        .post(format!(
            "{}/v2/team/app/blobs/uploads/?digest={}",
            cluster.url(3),
            sha256_digest(data)
        ))
        .basic_auth("alice", Some("alice-password"))
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
    assert_eq!(view["ldap"]["source"], "cluster");

    let resp = admin(
        2,
        Method::PUT,
        "/api/v1/identity-providers",
        json!({ "ldap": null }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The login cache of node 3 goes with the directory's old setting.
    eventually(
        Duration::from_secs(20),
        "node 3 refusing LDAP logins",
        || async { alice_v2(3).await == Some(StatusCode::UNAUTHORIZED) },
    )
    .await
    .unwrap();
}
