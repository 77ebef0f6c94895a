//! `berth admin ...`: tenancy management against a running node's `/api/v1/` with
//! Basic credentials: projects, members, users, robots, OIDC/LDAP group roles, the
//! identity providers, the audit log, and a
//! Kubernetes `dockerconfigjson` pull secret for a robot.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The node's HTTP URL.
    #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// User name to authenticate as.
    #[arg(long, env = "BERTH_USER", default_value = "admin")]
    pub user: String,
    /// Password (or robot secret) to authenticate with.
    #[arg(long, env = "BERTH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Projects: the first path component of a repository.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Project members and their roles.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Local users.
    #[command(subcommand)]
    User(UserCommand),
    /// Robot accounts.
    #[command(subcommand)]
    Robot(RobotCommand),
    /// Roles of OIDC and LDAP groups in projects.
    #[command(subcommand)]
    Group(GroupCommand),
    /// The cluster's external identity providers (OIDC issuer, LDAP directory).
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Audit entries (JSON lines, or CSV with --csv).
    Audit {
        /// Milliseconds since the epoch.
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        until: Option<u64>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        csv: bool,
    },
    /// One-time tokens for a single CI push.
    #[command(subcommand)]
    OneTimeToken(OneTimeTokenCommand),
    /// Token signing keys.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

#[derive(clap::Subcommand)]
pub enum OneTimeTokenCommand {
    /// Create a one-time token in PROJECT; prints its name and secret (shown only
    /// once). The secret is exchanged once at the token service (e.g. by
    /// `docker login` / `skopeo --dest-creds NAME:SECRET`) for one push.
    Create {
        project: String,
        /// `*`, `NAME` or `NAME/*` below the project.
        #[arg(long, default_value = "*")]
        repositories: String,
        /// `pull`, `push` or `pull,push`.
        #[arg(long, default_value = "pull,push")]
        actions: String,
        /// Seconds until it can no longer be redeemed.
        #[arg(long, default_value_t = 600)]
        expires_in_secs: u64,
    },
    List {
        project: String,
    },
}

#[derive(clap::Subcommand)]
pub enum SigningKeyCommand {
    /// A new key signs from now on; tokens signed before verify for the overlap.
    Rotate {
        /// Seconds the previous keys keep verifying.
        #[arg(long, default_value_t = 3600)]
        overlap_secs: u64,
    },
    List,
}

#[derive(clap::Subcommand)]
pub enum ProjectCommand {
    Create {
        name: String,
        /// Anyone, also anonymous clients, may pull.
        #[arg(long)]
        public: bool,
    },
    List,
    Delete {
        name: String,
    },
    /// Shows the project's request limit, or sets it with --rps (and --burst), or
    /// removes it with --off (administrators). Each node enforces it on its own.
    Limits {
        name: String,
        /// Registry requests per second for the project's repositories, per node.
        #[arg(long, conflicts_with = "off")]
        rps: Option<u32>,
        /// Requests allowed at once above the rate (default: one second's worth).
        #[arg(long, requires = "rps")]
        burst: Option<u32>,
        /// Removes the limit.
        #[arg(long)]
        off: bool,
    },
    /// Shows the erasure-coding profile of the project's new blobs, or sets it with
    /// --ec K+M, or returns to the cluster's default with --default (administrators).
    Profile {
        name: String,
        /// K data shards and M parity shards per stripe, for example 3+2.
        #[arg(long, conflicts_with = "default")]
        ec: Option<String>,
        /// Use the cluster's default profile again.
        #[arg(long)]
        default: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum MemberCommand {
    /// Bind USER to ROLE (owner, maintainer, developer, reader) in PROJECT.
    Set {
        project: String,
        user: String,
        role: String,
    },
    Remove {
        project: String,
        user: String,
    },
    List {
        project: String,
    },
}

// Parsed once per command line: the size of `Set` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum ProvidersCommand {
    /// The providers in use and where their settings come from.
    Show,
    /// Set the cluster's providers; every node uses them within seconds. A provider
    /// not named stays as it is.
    Set {
        /// OIDC issuer URL (https, or http on loopback); needs --oidc-audience.
        #[arg(long, requires = "oidc_audience", conflicts_with = "no_oidc")]
        oidc_issuer: Option<String>,
        /// The client id the ID tokens are issued to.
        #[arg(long, requires = "oidc_issuer")]
        oidc_audience: Option<String>,
        #[arg(long, requires = "oidc_issuer", default_value = "groups")]
        oidc_groups_claim: String,
        #[arg(long, requires = "oidc_issuer", default_value = "sub")]
        oidc_username_claim: String,
        #[arg(long, requires = "oidc_issuer", default_value_t = 60)]
        oidc_jwks_refresh_min_secs: u64,
        /// Turn OIDC off.
        #[arg(long)]
        no_oidc: bool,
        /// LDAP directory (`ldap://host:port`); needs --ldap-user-dn and
        /// --ldap-group-base.
        #[arg(long, requires_all = ["ldap_user_dn", "ldap_group_base"], conflicts_with = "no_ldap")]
        ldap_url: Option<String>,
        /// The DN a user binds as, `{user}` standing for the user name.
        #[arg(long, requires = "ldap_url")]
        ldap_user_dn: Option<String>,
        #[arg(long, requires = "ldap_url")]
        ldap_group_base: Option<String>,
        #[arg(
            long,
            requires = "ldap_url",
            default_value = "(&(objectClass=groupOfNames)(member={dn}))"
        )]
        ldap_group_filter: String,
        #[arg(long, requires = "ldap_url", default_value = "cn")]
        ldap_group_attribute: String,
        /// Turn LDAP off.
        #[arg(long)]
        no_ldap: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// Give the members of GROUP at PROVIDER (oidc or ldap) ROLE (owner, maintainer,
    /// developer, reader) in PROJECT.
    Set {
        project: String,
        provider: String,
        group: String,
        role: String,
    },
    Remove {
        project: String,
        provider: String,
        group: String,
    },
    List {
        project: String,
    },
}

/// Percent-encodes one URL path segment (group names hold spaces, `=` or `/`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(clap::Subcommand)]
pub enum UserCommand {
    Create {
        name: String,
        /// The new user's password (at least 8 characters).
        #[arg(long, env = "BERTH_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
        /// A system administrator.
        #[arg(long)]
        admin: bool,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(clap::Subcommand)]
pub enum RobotCommand {
    /// Create a robot; prints its name and secret (shown only once).
    Create {
        name: String,
        /// The owning project (omit for a system robot).
        #[arg(long)]
        project: Option<String>,
        /// `PROJECT:PATTERN:ACTIONS`, e.g. `team:app:pull,push` or `team:*:pull`;
        /// repeat for several.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Days until the robot expires.
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    List {
        #[arg(long)]
        project: Option<String>,
    },
    Delete {
        name: String,
    },
    /// Print a Kubernetes Secret of type kubernetes.io/dockerconfigjson for a robot.
    PullSecret {
        /// The robot's full name, e.g. `robot$team+ci`.
        robot: String,
        /// The robot's secret.
        #[arg(long, env = "BERTH_ROBOT_SECRET", hide_env_values = true)]
        secret: String,
        /// The registry host as pods name it (default: the host of --url).
        #[arg(long)]
        server: Option<String>,
        /// The Secret's name.
        #[arg(long, default_value = "berth-pull-secret")]
        secret_name: String,
    },
    /// Give a robot a new secret (printed once); the old one stops working at once, or
    /// after --grace-secs.
    RotateSecret {
        name: String,
        /// Seconds the previous secret keeps working (default: it stops at once).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

/// Parses `PROJECT:PATTERN:ACTIONS`.
pub fn parse_grant(s: &str) -> anyhow::Result<Value> {
    let mut parts = s.splitn(3, ':');
    let (Some(project), Some(pattern), Some(actions)) = (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("grant {s:?} is not PROJECT:PATTERN:ACTIONS");
    };
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    anyhow::ensure!(!actions.is_empty(), "grant {s:?} names no action");
    Ok(json!({ "project": project, "repositories": pattern, "actions": actions }))
}

/// The Kubernetes Secret for `server` with `user`/`secret`.
pub fn pull_secret(name: &str, server: &str, user: &str, secret: &str) -> Value {
    let auth = B64.encode(format!("{user}:{secret}"));
    let config =
        json!({ "auths": { server: { "username": user, "password": secret, "auth": auth } } });
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "type": "kubernetes.io/dockerconfigjson",
        "data": { ".dockerconfigjson": B64.encode(config.to_string()) },
    })
}

struct Api {
    base: String,
    user: String,
    password: Option<String>,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(p) = &self.password {
            req = req.basic_auth(&self.user, Some(p));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{url}: {status}: {}", server_error(&text));
        }
        Ok(text)
    }
}

/// The message of an error answer: its JSON `error` field, else the body on one line.
pub(crate) fn server_error(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v["error"].is_string() => v["error"].as_str().unwrap_or_default().to_owned(),
        Ok(v) if v["errors"][0]["message"].is_string() => v["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn print_json(text: &str) {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => print!("{text}"),
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    let api = Api {
        base: args.url.trim_end_matches('/').to_owned(),
        user: args.user,
        password: args.password,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    match args.command {
        AdminCommand::Project(c) => match c {
            ProjectCommand::Create { name, public } => print_json(
                &api.call(
                    Method::POST,
                    "/api/v1/projects",
                    Some(json!({ "name": name, "public": public })),
                )
                .await?,
            ),
            ProjectCommand::List => {
                print_json(&api.call(Method::GET, "/api/v1/projects", None).await?)
            }
            ProjectCommand::Delete { name } => {
                api.call(Method::DELETE, &format!("/api/v1/projects/{name}"), None)
                    .await?;
                println!("project {name} deleted");
            }
            ProjectCommand::Limits {
                name,
                rps,
                burst,
                off,
            } => {
                let path = format!("/api/v1/projects/{name}/limits");
                let answer = if rps.is_some() || off {
                    let body = json!({ "requests_per_second": rps, "burst": burst });
                    api.call(Method::PUT, &path, Some(body)).await?
                } else {
                    api.call(Method::GET, &path, None).await?
                };
                print_json(&answer);
            }
            ProjectCommand::Profile { name, ec, default } => {
                let path = format!("/api/v1/projects/{name}/profile");
                let answer = if ec.is_some() || default {
                    api.call(Method::PUT, &path, Some(json!({ "profile": ec })))
                        .await?
                } else {
                    api.call(Method::GET, &path, None).await?
                };
                print_json(&answer);
            }
        },
        AdminCommand::Member(c) => match c {
            MemberCommand::Set {
                project,
                user,
                role,
            } => {
                api.call(
                    Method::PUT,
                    &format!("/api/v1/projects/{project}/members/{user}"),
                    Some(json!({ "role": role })),
                )
                .await?;
                println!("{user} is {role} in {project}");
            }
            MemberCommand::Remove { project, user } => {
                api.call(
                    Method::DELETE,
                    &format!("/api/v1/projects/{project}/members/{user}"),
                    None,
                )
                .await?;
                println!("{user} removed from {project}");
            }
            MemberCommand::List { project } => print_json(
                &api.call(
                    Method::GET,
                    &format!("/api/v1/projects/{project}/members"),
                    None,
                )
                .await?,
            ),
        },
        AdminCommand::Group(c) => match c {
            GroupCommand::Set {
                project,
                provider,
                group,
                role,
            } => {
                api.call(
                    Method::PUT,
                    &format!(
                        "/api/v1/projects/{project}/groups/{provider}/{}",
                        segment(&group)
                    ),
                    Some(json!({ "role": role })),
                )
                .await?;
                println!("{provider} group {group} is {role} in {project}");
            }
            GroupCommand::Remove {
                project,
                provider,
                group,
            } => {
                api.call(
                    Method::DELETE,
                    &format!(
                        "/api/v1/projects/{project}/groups/{provider}/{}",
                        segment(&group)
                    ),
                    None,
                )
                .await?;
                println!("{provider} group {group} removed from {project}");
            }
            GroupCommand::List { project } => print_json(
                &api.call(
                    Method::GET,
                    &format!("/api/v1/projects/{project}/groups"),
                    None,
                )
                .await?,
            ),
        },
        AdminCommand::Providers(ProvidersCommand::Show) => print_json(
            &api.call(Method::GET, "/api/v1/identity-providers", None)
                .await?,
        ),
        AdminCommand::Providers(ProvidersCommand::Set {
            oidc_issuer,
            oidc_audience,
            oidc_groups_claim,
            oidc_username_claim,
            oidc_jwks_refresh_min_secs,
            no_oidc,
            ldap_url,
            ldap_user_dn,
            ldap_group_base,
            ldap_group_filter,
            ldap_group_attribute,
            no_ldap,
        }) => {
            let mut body = serde_json::Map::new();
            if no_oidc {
                body.insert("oidc".into(), Value::Null);
            } else if let Some(issuer) = oidc_issuer {
                body.insert(
                    "oidc".into(),
                    json!({
                        "issuer": issuer,
                        "audience": oidc_audience,
                        "groups_claim": oidc_groups_claim,
                        "username_claim": oidc_username_claim,
                        "jwks_refresh_min_secs": oidc_jwks_refresh_min_secs,
                    }),
                );
            }
            if no_ldap {
                body.insert("ldap".into(), Value::Null);
            } else if let Some(url) = ldap_url {
                body.insert(
                    "ldap".into(),
                    json!({
                        "url": url,
                        "user_dn": ldap_user_dn,
                        "group_base": ldap_group_base,
                        "group_filter": ldap_group_filter,
                        "group_attribute": ldap_group_attribute,
                    }),
                );
            }
            anyhow::ensure!(
                !body.is_empty(),
                "name a provider to set (--oidc-issuer, --ldap-url) or turn off (--no-oidc, --no-ldap)"
            );
            print_json(
                &api.call(
                    Method::PUT,
                    "/api/v1/identity-providers",
                    Some(Value::Object(body)),
                )
                .await?,
            )
        }
        AdminCommand::User(c) => match c {
            UserCommand::Create {
                name,
                new_password,
                admin,
            } => print_json(
                &api.call(
                    Method::POST,
                    "/api/v1/users",
                    Some(json!({ "name": name, "password": new_password, "admin": admin })),
                )
                .await?,
            ),
            UserCommand::List => print_json(&api.call(Method::GET, "/api/v1/users", None).await?),
            UserCommand::Delete { name } => {
                api.call(Method::DELETE, &format!("/api/v1/users/{name}"), None)
                    .await?;
                println!("user {name} deleted");
            }
        },
        AdminCommand::Robot(c) => match c {
            RobotCommand::Create {
                name,
                project,
                grants,
                expires_in_days,
            } => {
                let grants = grants
                    .iter()
                    .map(|g| parse_grant(g))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                print_json(
                    &api.call(
                        Method::POST,
                        "/api/v1/robots",
                        Some(json!({
                            "name": name,
                            "project": project,
                            "grants": grants,
                            "expires_in_secs": expires_in_days.map(|d| d * 86_400),
                        })),
                    )
                    .await?,
                );
            }
            RobotCommand::List { project } => {
                let path = match project {
                    Some(p) => format!("/api/v1/robots?project={p}"),
                    None => "/api/v1/robots".into(),
                };
                print_json(&api.call(Method::GET, &path, None).await?);
            }
            RobotCommand::Delete { name } => {
                let encoded = name.replace('$', "%24").replace('+', "%2B");
                api.call(Method::DELETE, &format!("/api/v1/robots/{encoded}"), None)
                    .await?;
                println!("robot {name} deleted");
            }
            RobotCommand::PullSecret {
                robot,
                secret,
                server,
                secret_name,
            } => {
                let server = match server {
                    Some(s) => s,
                    None => reqwest::Url::parse(&api.base)
                        .ok()
                        .and_then(|u| {
                            u.host_str().map(|h| match u.port() {
                                Some(p) => format!("{h}:{p}"),
                                None => h.to_owned(),
                            })
                        })
                        .context("--url has no host; pass --server")?,
                };
                let s = pull_secret(&secret_name, &server, &robot, &secret);
                println!("{}", serde_json::to_string_pretty(&s)?);
            }
            RobotCommand::RotateSecret { name, grace_secs } => {
                let encoded = name.replace('$', "%24").replace('+', "%2B");
                let query = grace_secs
                    .map(|g| format!("?grace_secs={g}"))
                    .unwrap_or_default();
                print_json(
                    &api.call(
                        Method::POST,
                        &format!("/api/v1/robots/{encoded}/secret{query}"),
                        None,
                    )
                    .await?,
                );
            }
        },
        AdminCommand::Audit {
            since,
            until,
            identity,
            project,
            action,
            csv,
        } => {
            let mut q = Vec::new();
            if let Some(v) = since {
                q.push(format!("since={v}"));
            }
            if let Some(v) = until {
                q.push(format!("until={v}"));
            }
            for (k, v) in [
                ("identity", identity),
                ("project", project),
                ("action", action),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", v.replace('$', "%24").replace('+', "%2B")));
                }
            }
            if csv {
                q.push("format=csv".into());
            }
            let path = format!("/api/v1/audit?{}", q.join("&"));
            print!("{}", api.call(Method::GET, &path, None).await?);
        }
        AdminCommand::OneTimeToken(c) => match c {
            OneTimeTokenCommand::Create {
                project,
                repositories,
                actions,
                expires_in_secs,
            } => {
                let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                print_json(
                    &api.call(
                        Method::POST,
                        &format!("/api/v1/projects/{project}/one-time-tokens"),
                        Some(json!({
                            "repositories": repositories,
                            "actions": actions,
                            "expires_in_secs": expires_in_secs,
                        })),
                    )
                    .await?,
                );
            }
            OneTimeTokenCommand::List { project } => print_json(
                &api.call(
                    Method::GET,
                    &format!("/api/v1/projects/{project}/one-time-tokens"),
                    None,
                )
                .await?,
            ),
        },
        AdminCommand::SigningKey(c) => match c {
            SigningKeyCommand::Rotate { overlap_secs } => print_json(
                &api.call(
                    Method::POST,
                    "/api/v1/system/signing-keys/rotate",
                    Some(json!({ "overlap_secs": overlap_secs })),
                )
                .await?,
            ),
            SigningKeyCommand::List => print_json(
                &api.call(Method::GET, "/api/v1/system/signing-keys", None)
                    .await?,
            ),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_and_pull_secrets() {
        let g = parse_grant("team:app/*:pull,push").unwrap();
        assert_eq!(g["repositories"], "app/*");
        assert_eq!(g["actions"], json!(["pull", "push"]));
        assert!(parse_grant("team:app").is_err());
        assert!(parse_grant("team:app:").is_err());
        let s = pull_secret("x", "reg:5000", "robot$team+ci", "s3cret");
        assert_eq!(s["type"], "kubernetes.io/dockerconfigjson");
        let inner = B64
            .decode(s["data"][".dockerconfigjson"].as_str().unwrap())
            .unwrap();
        let v: Value = serde_json::from_slice(&inner).unwrap();
        assert_eq!(v["auths"]["reg:5000"]["username"], "robot$team+ci");
        assert_eq!(
            B64.decode(v["auths"]["reg:5000"]["auth"].as_str().unwrap())
                .unwrap(),
            b"robot$team+ci:s3cret"
        );
    }

    #[test]
    fn server_errors_are_one_line() {
        assert_eq!(
            server_error(r#"{"error":"project not found"}"#),
            "project not found"
        );
        assert_eq!(server_error("bad\n  gateway\n"), "bad gateway");
        assert_eq!(
            server_error(r#"{"errors":[{"code":"DENIED","message":"admins only"}]}"#),
            "admins only"
        );
    }
}
