//! Authentication and authorization: who is calling ([`Caller`], from Basic
//! credentials or a bearer token), what they may do ([`policy`], decided once per
//! request from the parsed endpoint), the Docker token service ([`token`]), password
//! hashing ([`password`]), the audit log ([`audit`]), rate limits ([`ratelimit`]) and
//! external identities: OpenID Connect ID tokens ([`oidc`]) and LDAP bind logins
//! ([`ldap`]), whose groups map to project roles through group bindings in Raft.
//!
//! In [`AuthMode::Open`] every request is allowed as an anonymous administrator (the
//! embedded loopback default); in [`AuthMode::Enforced`] every request is checked.

pub mod access;
pub mod audit;
pub mod ldap;
pub mod oidc;
pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_consensus::tenancy::{
    AuditOutcome, IdentityProvider, ONE_TIME_PREFIX, ProjectName, ProviderSetting, RobotRecord,
    SigningKeyRecord, TenancyCommand, TenancyOutcome, UserRecord,
};
use berth_consensus::{CommandV1, ConsensusError, Metadata, Outcome, StateView};
use berth_types::RepoName;
use sha2::{Digest as _, Sha256};

use crate::oci::error::{Code, OciError};
use crate::uploads::now_ms;
use policy::{Actions, Facts};
use token::{AccessClaim, Keys};

/// The name of the caller without credentials (no user may take it).
pub const ANONYMOUS: &str = "anonymous";
/// The token service name in challenges and tokens.
pub const SERVICE: &str = "berth";
/// How long a verified password stays cached (so a pull of many layers with Basic
/// auth does not pay one argon2 verification per request).
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached credential verifications.
const CREDENTIAL_CACHE_ENTRIES_MAX: usize = 10_000;
/// How long a node uses the signing keys and identity provider settings it loaded
/// before reading them again (so a change through another node takes effect here
/// within this time).
const KEYS_REFRESH: Duration = Duration::from_secs(5);

/// The user name that says "the password is an OIDC ID token" in Basic credentials
/// and the token endpoint's password grant (`docker login -u oidc -p <ID token>`).
pub const OIDC_USER: &str = "oidc";

/// Whether requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anonymous full access.
    Open,
    /// Every request authenticated and authorized.
    Enforced,
}

/// Settings of the auth subsystem.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Lifetime of an access token.
    pub token_ttl: Duration,
    /// Lifetime of a refresh token.
    pub refresh_ttl: Duration,
    /// Requests per second per client address and per identity; `None`: unlimited.
    pub rate_limit_rps: Option<u32>,
    /// Failed logins per minute per address and per account before 429.
    pub failed_logins_per_minute: u32,
    /// Audit entries older than this are pruned.
    pub audit_retention: Duration,
    /// Requests in flight per client address and per identity; `None`: unlimited.
    pub concurrent_requests_max: Option<u32>,
    /// The OIDC issuer of this node's flags: it seeds the cluster setting and is
    /// used while the cluster has none.
    pub oidc: Option<oidc::OidcConfig>,
    /// The LDAP directory of this node's flags (seed, like `oidc`).
    pub ldap: Option<ldap::LdapConfig>,
    /// Age at which the leader replaces the signing key; `None`: never by itself.
    pub key_rotation: Option<Duration>,
}

impl AuthConfig {
    pub fn open() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Open,
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 86_400),
            rate_limit_rps: None,
            failed_logins_per_minute: 10,
            audit_retention: Duration::from_secs(90 * 86_400),
            concurrent_requests_max: None,
            oidc: None,
            ldap: None,
            key_rotation: None,
        }
    }
}

/// The account behind a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    User(UserRecord),
    Robot(RobotRecord),
    /// Someone an external provider vouched for; their roles come from group
    /// bindings.
    External(ExternalIdentity),
}

/// An identity from an external provider: `oidc:<name>` or `ldap:<name>` (local names
/// cannot hold `:`, so they never collide) and the provider's groups of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub name: String,
    pub provider: IdentityProvider,
    pub groups: Vec<String>,
}

/// Who is calling, and how.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The access claims of the bearer token the caller presented, if any.
    pub token: Option<Vec<AccessClaim>>,
    /// The client's address.
    pub client: String,
    /// Open mode: everything is allowed.
    pub open: bool,
}

impl Caller {
    pub fn anonymous(client: String, open: bool) -> Caller {
        Caller {
            principal: Principal::Anonymous,
            token: None,
            client,
            open,
        }
    }

    /// The account name for audit and tokens: user or robot name, or `anonymous`.
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::Anonymous => ANONYMOUS,
            Principal::User(u) => &u.name,
            Principal::Robot(r) => &r.name,
            Principal::External(e) => &e.name,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.principal, Principal::Anonymous)
    }

    /// A system administrator (everyone is one in open mode).
    pub fn is_admin(&self) -> bool {
        self.open || matches!(&self.principal, Principal::User(u) if u.admin)
    }

    /// The facts the policy needs about this caller and `repo`.
    pub fn facts(&self, v: &StateView, repo: &RepoName) -> Result<Facts, ConsensusError> {
        let project = ProjectName::of(repo);
        let record = v.project(&project)?;
        let mut facts = Facts {
            admin: self.is_admin(),
            project_public: record.map(|p| p.public),
            ..Facts::default()
        };
        match &self.principal {
            Principal::Anonymous => {}
            Principal::User(u) => facts.role = v.role(&project, &u.name)?,
            Principal::Robot(r) => {
                if !r.expired(now_ms()) {
                    for g in r.grants.iter().filter(|g| g.covers(repo)) {
                        facts.robot = facts.robot.union(Actions::of_robot(g.actions));
                    }
                }
            }
            Principal::External(e) => {
                facts.role = v.group_role(&project, e.provider, &e.groups)?;
            }
        }
        Ok(facts)
    }

    /// What the caller may do in `repo` (intersected with its token's claims).
    pub fn actions(&self, v: &StateView, repo: &RepoName) -> Result<Actions, ConsensusError> {
        if self.open {
            return Ok(Actions::ALL);
        }
        let held = policy::allowed(&self.facts(v, repo)?);
        Ok(match &self.token {
            Some(claims) => held.intersect(token::claimed(claims, repo)),
            None => held,
        })
    }

    /// The caller of a request as the OCI dispatcher put it there; a request that
    /// did not pass it is anonymous (deny by default).
    pub fn of(req: &Request<Body>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::anonymous(client_addr(req), false))
    }
}

/// The client's address (`ConnectInfo` when served from a socket).
pub fn client_addr<B>(req: &Request<B>) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Why a request could not be authenticated.
#[derive(Debug)]
pub enum AuthFailure {
    /// Wrong, unknown, expired or malformed credentials.
    BadCredentials,
    /// Too many failed logins, or too many requests.
    Throttled {
        retry_after: Duration,
    },
    Metadata(ConsensusError),
    /// The external identity provider that must vouch for the caller cannot be
    /// reached.
    ProviderUnavailable {
        provider: IdentityProvider,
    },
}

impl From<ConsensusError> for AuthFailure {
    fn from(e: ConsensusError) -> AuthFailure {
        AuthFailure::Metadata(e)
    }
}

/// The auth subsystem of one node.
pub struct Auth {
    pub config: AuthConfig,
    keys: RwLock<Option<(Keys, Instant)>>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    pub limits: ratelimit::Limits,
    pub audit: audit::AuditLog,
    /// Requests in flight per address and identity, when limited.
    pub concurrency: Option<ratelimit::Concurrency>,
    /// The request limits of projects and their token buckets on this node.
    pub projects: ratelimit::ProjectLimiter,
    /// The identity providers in force, as last read from metadata.
    providers: RwLock<Providers>,
}

/// The identity providers a node uses: built from the cluster's settings (or, for a
/// provider the cluster never had a setting for, the node's flags) and rebuilt when
/// those change.
#[derive(Clone, Default)]
pub struct Providers {
    /// The OIDC verifier, when an issuer is configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// The LDAP authenticator, when a directory is configured.
    pub ldap: Option<Arc<ldap::Ldap>>,
    /// When the settings were last read from metadata.
    read_at: Option<Instant>,
}

impl Auth {
    pub fn new(config: AuthConfig) -> Auth {
        Auth {
            limits: ratelimit::Limits::new(config.rate_limit_rps, config.failed_logins_per_minute),
            audit: audit::AuditLog::new(),
            concurrency: config
                .concurrent_requests_max
                .map(ratelimit::Concurrency::new),
            projects: ratelimit::ProjectLimiter::default(),
            keys: RwLock::new(None),
            verified: Mutex::new(HashMap::new()),
            providers: RwLock::new(Providers {
                oidc: config.oidc.clone().map(|c| Arc::new(oidc::Oidc::new(c))),
                ldap: config.ldap.clone().map(|c| Arc::new(ldap::Ldap::new(c))),
                read_at: None,
            }),
            config,
        }
    }

    pub fn is_open(&self) -> bool {
        self.config.mode == AuthMode::Open
    }

    /// Counts one registry request for `project` against the project's request
    /// limit (reading the limits from metadata again when they are due); `Some(wait)`
    /// when it is over the limit.
    pub async fn project_limit(&self, meta: &Metadata, project: &str) -> Option<Duration> {
        if self.projects.due(Instant::now()) {
            match meta.read(|v| v.all_project_limits()).await {
                Ok(limits) => self.projects.set_limits(limits),
                Err(e) => tracing::warn!(error = %e, "reading the project request limits"),
            }
        }
        self.projects.check(project, Instant::now())
    }

    /// Makes sure a signing key is in Raft (proposing a fresh one if there is none;
    /// the first one applied cluster-wide wins) and loads it.
    pub async fn init_keys(&self, meta: &Metadata) -> Result<(), ConsensusError> {
        let existing = meta.read(|v| v.signing_keys()).await?;
        let record = match existing.into_iter().next() {
            Some(k) => k,
            None => {
                let fresh = token::generate_key(now_ms());
                match meta
                    .propose(CommandV1::Tenancy(TenancyCommand::InitSigningKey(fresh)))
                    .await?
                {
                    Outcome::Tenancy(TenancyOutcome::SigningKey(k)) => k,
                    other => {
                        return Err(ConsensusError::Malformed {
                            table: if matches!(other, Outcome::Tenancy(_)) {
                                "signing_keys"
                            } else {
                                "outcome"
                            },
                        });
                    }
                }
            }
        };
        tracing::debug!(kid = %record.kid, "signing key in metadata");
        self.reload_keys(meta).await.map(drop)
    }

    fn load_keys(&self, records: &[(SigningKeyRecord, Option<u64>)]) {
        match Keys::with_retirement(records) {
            Ok(k) => {
                *self.keys.write().expect("keys lock poisoned") = Some((k, Instant::now()));
            }
            Err(e) => tracing::error!(error = %e, "signing key in metadata is unusable"),
        }
    }

    /// Reads the signing keys and their retirement from metadata again.
    pub async fn reload_keys(&self, meta: &Metadata) -> Result<Keys, ConsensusError> {
        let records = meta.read(|v| v.signing_keys_with_retirement()).await?;
        self.load_keys(&records);
        self.keys
            .read()
            .expect("keys lock poisoned")
            .as_ref()
            .map(|(k, _)| k.clone())
            .ok_or(ConsensusError::Malformed {
                table: "signing_keys",
            })
    }

    /// The keys, read from metadata on first use and again every [`KEYS_REFRESH`].
    pub async fn keys(&self, meta: &Metadata) -> Result<Keys, ConsensusError> {
        if let Some((k, at)) = self.keys.read().expect("keys lock poisoned").as_ref()
            && at.elapsed() < KEYS_REFRESH
        {
            return Ok(k.clone());
        }
        self.reload_keys(meta).await
    }

    /// The keys, read again if they do not hold the key `token` names (a key made by
    /// a rotation through another node in the last few seconds).
    pub async fn keys_for(&self, meta: &Metadata, token: &str) -> Result<Keys, ConsensusError> {
        let keys = self.keys(meta).await?;
        if keys.knows_kid_of(token) {
            Ok(keys)
        } else {
            self.reload_keys(meta).await
        }
    }

    /// Proposes this node's provider flags as the cluster setting of each provider
    /// the cluster has never had a setting for (the first node to start with flags
    /// seeds it; later flags never overwrite it), then loads the providers in force.
    pub async fn seed_providers(&self, meta: &Metadata) -> Result<(), ConsensusError> {
        let seeds = [
            self.config
                .oidc
                .as_ref()
                .map(|c| ProviderSetting::Oidc(Some(c.record()))),
            self.config
                .ldap
                .as_ref()
                .map(|c| ProviderSetting::Ldap(Some(c.record()))),
        ];
        for setting in seeds.into_iter().flatten() {
            let provider = setting.provider();
            let cmd = TenancyCommand::SetIdentityProvider {
                setting: setting.clone(),
                seed: true,
            };
            match meta.propose(CommandV1::Tenancy(cmd)).await? {
                Outcome::Tenancy(TenancyOutcome::Done) => {
                    tracing::info!(%provider, "seeded the cluster's identity provider setting from this node's flags");
                }
                _ => {
                    let current = meta.read(move |v| v.identity_provider(provider)).await?;
                    if current.as_ref() != Some(&setting) {
                        tracing::warn!(%provider, "this node's identity provider flags are ignored: the cluster has its own setting (see GET /api/v1/identity-providers)");
                    }
                }
            }
        }
        self.reload_providers(meta).await.map(drop)
    }

    /// The identity providers in force, read from metadata on first use and again
    /// every [`KEYS_REFRESH`]. If metadata cannot be read, the ones loaded before
    /// stay in use.
    pub async fn providers(&self, meta: &Metadata) -> Providers {
        {
            let p = self.providers.read().expect("providers lock poisoned");
            if p.read_at.is_some_and(|t| t.elapsed() < KEYS_REFRESH) {
                return p.clone();
            }
        }
        match self.reload_providers(meta).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the identity provider settings");
                self.providers
                    .read()
                    .expect("providers lock poisoned")
                    .clone()
            }
        }
    }

    /// Reads the identity provider settings again and rebuilds a provider whose
    /// settings changed (a rebuilt OIDC verifier fetches the issuer's keys anew; a
    /// rebuilt LDAP authenticator starts with an empty login cache).
    pub async fn reload_providers(&self, meta: &Metadata) -> Result<Providers, ConsensusError> {
        let (o, l) = meta
            .read(|v| {
                Ok((
                    v.identity_provider(IdentityProvider::Oidc)?,
                    v.identity_provider(IdentityProvider::Ldap)?,
                ))
            })
            .await?;
        let oidc_config = match o {
            None => self.config.oidc.clone(),
            Some(ProviderSetting::Oidc(r)) => r.as_ref().map(oidc::OidcConfig::of_record),
            Some(ProviderSetting::Ldap(_)) => {
                return Err(ConsensusError::Malformed {
                    table: "tenancy_meta",
                });
            }
        };
        let ldap_config = match l {
            None => self.config.ldap.clone(),
            Some(ProviderSetting::Ldap(r)) => r.as_ref().map(ldap::LdapConfig::of_record),
            Some(ProviderSetting::Oidc(_)) => {
                return Err(ConsensusError::Malformed {
                    table: "tenancy_meta",
                });
            }
        };
        let mut p = self.providers.write().expect("providers lock poisoned");
        if p.oidc.as_ref().map(|o| &o.config) != oidc_config.as_ref() {
            tracing::info!(issuer = ?oidc_config.as_ref().map(|c| &c.issuer), "OIDC provider setting changed");
            p.oidc = oidc_config.map(|c| Arc::new(oidc::Oidc::new(c)));
        }
        if p.ldap.as_ref().map(|l| &l.config) != ldap_config.as_ref() {
            tracing::info!(url = ?ldap_config.as_ref().map(|c| &c.url), "LDAP provider setting changed");
            p.ldap = ldap_config.map(|c| Arc::new(ldap::Ldap::new(c)));
        }
        p.read_at = Some(Instant::now());
        Ok(p.clone())
    }

    /// Identifies the caller from the `Authorization` header. No header: anonymous.
    pub async fn identify(
        &self,
        meta: &Metadata,
        headers: &HeaderMap,
        client: String,
    ) -> Result<Caller, AuthFailure> {
        let open = self.is_open();
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(Caller::anonymous(client, open));
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let providers = self.providers(meta).await;
        let caller = if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = parse_basic(rest.trim()).ok_or(AuthFailure::BadCredentials)?;
            let principal = self
                .login_with(meta, &providers, &user, &password, &client)
                .await?;
            Caller {
                principal,
                token: None,
                client,
                open,
            }
        } else if scheme.eq_ignore_ascii_case("bearer")
            && let Some(oidc) = &providers.oidc
            && oidc::Oidc::unverified_issuer(rest.trim()).as_deref()
                == Some(oidc.config.issuer.as_str())
        {
            let principal = self.oidc_login(oidc, rest.trim(), &client).await?;
            Caller {
                principal,
                token: None,
                client,
                open,
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let keys = self.keys_for(meta, rest.trim()).await?;
            let claims = keys
                .verify(rest.trim(), token::TokenUse::Access)
                .map_err(|_| AuthFailure::BadCredentials)?;
            let principal = if claims.sub == ANONYMOUS {
                Principal::Anonymous
            } else if let Some(provider) = IdentityProvider::of_identity(&claims.sub) {
                // An external identity holds what its groups hold now; the token
                // carries the groups the provider vouched for at login.
                Principal::External(ExternalIdentity {
                    name: claims.sub.clone(),
                    provider,
                    groups: claims.groups.clone(),
                })
            } else {
                self.principal(meta, &claims.sub).await?
            };
            Caller {
                principal,
                token: Some(claims.access),
                client,
                open,
            }
        } else {
            return Err(AuthFailure::BadCredentials);
        };
        if let Some(wait) = self.limits.identity(caller.name()) {
            return Err(AuthFailure::Throttled { retry_after: wait });
        }
        Ok(caller)
    }

    /// The account named `name` as it is now; gone or expired accounts fail.
    pub async fn principal(&self, meta: &Metadata, name: &str) -> Result<Principal, AuthFailure> {
        if name.starts_with(ONE_TIME_PREFIX) {
            return self.one_time_principal(meta, name).await;
        }
        let n = name.to_owned();
        let found = meta
            .read(move |v| {
                Ok(if n.starts_with("robot$") {
                    v.robot(&n)?.map(Principal::Robot)
                } else {
                    v.user(&n)?.map(Principal::User)
                })
            })
            .await?;
        match found {
            Some(Principal::Robot(r)) if r.expired(now_ms()) => Err(AuthFailure::BadCredentials),
            Some(p) => Ok(p),
            None => Err(AuthFailure::BadCredentials),
        }
    }

    /// Checks a user name and password (or robot name and secret), throttling
    /// repeated failures per client address and per account.
    pub async fn login(
        &self,
        meta: &Metadata,
        name: &str,
        password: &str,
        client: &str,
    ) -> Result<Principal, AuthFailure> {
        let providers = self.providers(meta).await;
        self.login_with(meta, &providers, name, password, client)
            .await
    }

    async fn login_with(
        &self,
        meta: &Metadata,
        providers: &Providers,
        name: &str,
        password: &str,
        client: &str,
    ) -> Result<Principal, AuthFailure> {
        if name == OIDC_USER
            && let Some(oidc) = &providers.oidc
        {
            return self.oidc_login(oidc, password, client).await;
        }
        if let Some(wait) = self.limits.login_blocked(client, name) {
            return Err(AuthFailure::Throttled { retry_after: wait });
        }
        let principal = match self.principal(meta, name).await {
            // A one-time token is good only for its single exchange at the token
            // service, never as a password.
            Ok(_) if name.starts_with(ONE_TIME_PREFIX) => None,
            Ok(p) => Some(p),
            Err(AuthFailure::BadCredentials) => None,
            Err(e) => return Err(e),
        };
        // Names without a local account are the directory's.
        if principal.is_none()
            && let Some(directory) = &providers.ldap
            && !name.starts_with("robot$")
        {
            return self
                .ldap_login(directory, name, name, password, client)
                .await;
        }
        let hash = match &principal {
            Some(Principal::User(u)) => Some(u.password_hash.clone()),
            Some(Principal::Robot(r)) => Some(r.secret_hash.clone()),
            _ => None,
        };
        let mut ok = match hash {
            Some(hash) => self.verify_cached(name, password, hash).await,
            None => {
                // Unknown accounts cost the same as known ones.
                password::burn(password).await;
                false
            }
        };
        if !ok && matches!(principal, Some(Principal::Robot(_))) {
            // A secret rotated with a grace period: the previous one works until then.
            let n = name.to_owned();
            if let Some(grace) = meta.read(move |v| v.robot_secret_grace(&n)).await?
                && now_ms() < grace.until_ms
            {
                ok = self
                    .verify_cached(name, password, grace.previous_hash)
                    .await;
            }
        }
        match (ok, principal) {
            (true, Some(p)) => Ok(p),
            _ => {
                self.limits.login_failed(client, name);
                self.audit.record(audit::entry(
                    name,
                    client,
                    "auth-failure",
                    "login",
                    None,
                    AuditOutcome::Denied,
                ));
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    /// Verifies an OIDC ID token; failures are audited and throttled like failed
    /// passwords.
    async fn oidc_login(
        &self,
        oidc: &oidc::Oidc,
        token: &str,
        client: &str,
    ) -> Result<Principal, AuthFailure> {
        // Every OIDC login uses the one name `oidc`: failures are counted per client
        // address only, so bad tokens from one address cannot lock everyone out.
        let account = format!("oidc token from {client}");
        if let Some(wait) = self.limits.login_blocked(client, &account) {
            return Err(AuthFailure::Throttled { retry_after: wait });
        }
        match oidc.verify(token).await {
            Ok(identity) => Ok(Principal::External(identity)),
            Err(oidc::OidcError::IssuerUnavailable(reason)) => {
                tracing::warn!(%reason, "OIDC login impossible: the issuer cannot be reached");
                self.audit.record(audit::entry(
                    OIDC_USER,
                    client,
                    "auth-failure",
                    "oidc: issuer unavailable",
                    None,
                    AuditOutcome::Failure,
                ));
                Err(AuthFailure::ProviderUnavailable {
                    provider: IdentityProvider::Oidc,
                })
            }
            Err(e) => {
                tracing::info!(error = %e, client, "OIDC ID token refused");
                self.limits.login_failed(client, &account);
                self.audit.record(audit::entry(
                    OIDC_USER,
                    client,
                    "auth-failure",
                    "oidc",
                    None,
                    AuditOutcome::Denied,
                ));
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    /// Checks `user`'s password by binding to the LDAP directory; failures are
    /// audited (as `name`, the name the client sent) and throttled like failed
    /// passwords.
    async fn ldap_login(
        &self,
        directory: &ldap::Ldap,
        name: &str,
        user: &str,
        password: &str,
        client: &str,
    ) -> Result<Principal, AuthFailure> {
        match directory.login(user, password).await {
            Ok(identity) => Ok(Principal::External(identity)),
            Err(ldap::LdapError::Unavailable(reason)) => {
                tracing::warn!(%reason, "LDAP login impossible: the directory cannot be reached");
                self.audit.record(audit::entry(
                    name,
                    client,
                    "auth-failure",
                    "ldap: directory unavailable",
                    None,
                    AuditOutcome::Failure,
                ));
                Err(AuthFailure::ProviderUnavailable {
                    provider: IdentityProvider::Ldap,
                })
            }
            Err(ldap::LdapError::BadCredentials) => {
                self.limits.login_failed(client, name);
                self.audit.record(audit::entry(
                    name,
                    client,
                    "auth-failure",
                    "ldap",
                    None,
                    AuditOutcome::Denied,
                ));
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    async fn verify_cached(&self, name: &str, password: &str, hash: String) -> bool {
        let mut h = Sha256::new();
        for part in [name.as_bytes(), password.as_bytes(), hash.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let key: [u8; 32] = h.finalize().into();
        {
            let cache = self.verified.lock().expect("credential cache poisoned");
            if cache
                .get(&key)
                .is_some_and(|t| t.elapsed() < CREDENTIAL_CACHE_TTL)
            {
                return true;
            }
        }
        let ok = password::verify(password, &hash).await;
        if ok {
            let mut cache = self.verified.lock().expect("credential cache poisoned");
            if cache.len() >= CREDENTIAL_CACHE_ENTRIES_MAX {
                cache.retain(|_, t| t.elapsed() < CREDENTIAL_CACHE_TTL);
                if cache.len() >= CREDENTIAL_CACHE_ENTRIES_MAX {
                    cache.clear();
                }
            }
            cache.insert(key, Instant::now());
        }
        ok
    }
}

/// Decodes `base64(user:password)`.
pub fn parse_basic(b64: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The externally visible base URL of this request (`http://host`).
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

/// The `WWW-Authenticate` Bearer challenge, with a scope when the request names a
/// repository.
pub fn challenge(
    headers: &HeaderMap,
    scope: Option<(&RepoName, Actions)>,
    error: bool,
) -> HeaderValue {
    let mut v = format!(
        "Bearer realm=\"{}/token\",service=\"{SERVICE}\"",
        base_url(headers)
    );
    if let Some((repo, actions)) = scope {
        // Pushers ask for pull too: a push reads blobs and manifests back.
        let mut words = actions.scope_list();
        if actions.push && !actions.pull {
            words.insert(0, "pull");
        }
        v.push_str(&format!(",scope=\"repository:{repo}:{}\"", words.join(",")));
    }
    if error {
        v.push_str(",error=\"insufficient_scope\"");
    }
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The 401 an OCI client gets: UNAUTHORIZED with the challenge.
pub fn unauthorized(
    headers: &HeaderMap,
    scope: Option<(&RepoName, Actions)>,
    message: &str,
    insufficient: bool,
) -> OciError {
    OciError::new(Code::Unauthorized, message).with_header(
        header::WWW_AUTHENTICATE,
        challenge(headers, scope, insufficient),
    )
}

impl AuthFailure {
    /// The OCI response for a failed authentication.
    pub fn into_oci(self, headers: &HeaderMap) -> OciError {
        match self {
            AuthFailure::BadCredentials => unauthorized(
                headers,
                None,
                "authentication required: invalid credentials",
                false,
            ),
            AuthFailure::Throttled { retry_after } => ratelimit::too_many(retry_after),
            AuthFailure::Metadata(e) => OciError::from(e),
            AuthFailure::ProviderUnavailable { provider } => OciError::new(
                Code::Unavailable,
                format!("the {provider} identity provider cannot be reached; retry later"),
            ),
        }
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        self.into_oci(&HeaderMap::new()).into_response()
    }
}
