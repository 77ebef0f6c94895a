//! Configuration of `berth serve`: built-in defaults, then a TOML file (`--config`),
//! then `BERTH_*` environment variables, then command-line flags, each overriding the
//! one before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use berth_api::auth::ldap::LdapConfig;
use berth_api::auth::oidc::OidcConfig;
use berth_api::placement::ClusterProfile;
use berth_blobstore::READ_HEDGE_DEFAULT;
use berth_types::EcProfile;
use berth_types::limits::{SHARD_BYTES_DEFAULT, SHARD_BYTES_MAX, UPLOAD_TTL_SECS_DEFAULT};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Flags of `berth serve`. Every flag is optional so that file and environment
/// values show through when it is not given.
#[derive(clap::Args, Debug, Default, Serialize)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP listener (default 127.0.0.1:5000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Folder for node state and metadata (default ./berth-data).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// A data disk (folder on its own filesystem); repeat for several. Default: <data>/disk0.
    #[arg(long = "disk")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<PathBuf>,
    /// Erasure-coding profile k+m across the disks (default chosen from the disk count).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Bytes per shard of a stripe.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_bytes: Option<u32>,
    /// Seconds an idle upload session lives before it is cancelled.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_ttl_secs: Option<u64>,
    /// How a cluster spreads blobs over its members: `auto` (the default) stripes each
    /// blob across them with the profile suited to their number (2 nodes 1+1, 3-4 2+1,
    /// 5 3+2, 6 or more 4+2); `K+M` fixes the profile; `off` keeps each upload on the
    /// disks of the node that received it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_profile: Option<String>,
    /// This node's failure zone (a rack, room or site): shards of a stripe go to
    /// distinct zones first. Default: none, each node its own zone.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Seconds a member may be unreachable before repair rebuilds its shards elsewhere.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_grace_secs: Option<u64>,
    /// Seconds between repair passes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_interval_secs: Option<u64>,
    /// Hours from the start of one scrub pass (re-reading and checking every shard file
    /// on this node's disks) to the next; 0 turns the scrubber off (default 168).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_interval_hours: Option<u64>,
    /// Seconds between scrub passes, overriding --scrub-interval-hours (for tests).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_interval_secs: Option<u64>,
    /// MiB per second the scrubber reads, at most (default 32).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_mib_per_sec: Option<u32>,
    /// Milliseconds a blob read waits for a shard chunk before it also reads other
    /// shards of the stripe and decodes the late one from them (default 300); 0 turns
    /// hedging off, so a read waits for a hung peer until the shard service's timeout.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_hedge_ms: Option<u64>,
    /// MiB per second the Raft leader reads and rewrites while restriping blobs to the
    /// profile wanted for them now (after an outage, or when the cluster grew); 0
    /// turns restriping off (default 32).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restripe_mib_per_sec: Option<u32>,
    /// Seconds the shard files of a restriped blob's old layout stay for reads that
    /// began before the swap (default 60; for tests).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restripe_old_files_secs: Option<u64>,
    /// MiB per second that background rebalancing (moving shards onto nodes that
    /// joined, spreading shards doubled up on one node) may copy, at most (default 16;
    /// 0 turns rebalancing off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebalance_mib_per_sec: Option<u32>,
    /// MiB of memory for the metadata store's page cache (default 32). Reads of pages
    /// beyond it go to the file (usually the operating system's page cache).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_cache_mib: Option<u32>,
    /// Log format: json, text, or auto (text on a terminal, else json).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Serve plain HTTP on a non-loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
    /// This node's id (a cluster member needs one; a single node picks its own).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Address of the internal gRPC listener (Raft between nodes). Turns on cluster mode.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// The cluster address other nodes reach this one at, when it differs from
    /// --grpc-listen (a proxy or NAT in between). Default: --grpc-listen.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_advertise: Option<SocketAddr>,
    /// Founding members of a new cluster, `ID=HOST:PORT,...` (their gRPC addresses).
    /// Used only on the first start of an empty data folder.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    /// Join the running cluster that this member (its HTTP URL) belongs to.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// PEM file of the CA that signs every node's certificate: turns on mutual TLS
    /// between nodes (with --cluster-cert and --cluster-key).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_ca: Option<PathBuf>,
    /// PEM file of this node's certificate, valid for its gRPC address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<PathBuf>,
    /// Run the gRPC listener without TLS on a non-loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_cluster: bool,
    /// Authentication: `open` (anonymous full access; the default on loopback) or
    /// `enforced` (every request authenticated and authorized).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Serve in open mode (anonymous full access) on a non-loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_open_access: bool,
    /// Lifetime of access tokens, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl_secs: Option<u64>,
    /// Requests per second per client address and per identity (bursts of twice
    /// that); 0 turns the limit off. Default: off in open mode, 1000 when enforced.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
    /// Failed logins per minute per client address and per account before 429.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_logins_per_minute: Option<u32>,
    /// Days audit entries are kept.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_retention_days: Option<u64>,
    /// Registry requests in flight per client address and per identity before 429;
    /// 0 turns the limit off. Default: off in open mode, 256 when enforced.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_requests_max: Option<u32>,
    /// OpenID Connect issuer URL whose ID tokens are accepted (https, or http on
    /// loopback). Needs --oidc-audience.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_issuer: Option<String>,
    /// The client id the ID tokens must be issued to (their `aud`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_audience: Option<String>,
    /// The ID token claim that lists the caller's groups (default `groups`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_groups_claim: Option<String>,
    /// The ID token claim that names the caller (default `sub`; e.g.
    /// `preferred_username`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_username_claim: Option<String>,
    /// Least seconds between two fetches of the issuer's keys caused by tokens that
    /// name an unknown key id (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_jwks_refresh_min_secs: Option<u64>,
    /// LDAP directory (`ldap://host:port`) that checks the passwords of users without
    /// a local account. Needs --ldap-user-dn and --ldap-group-base.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_url: Option<String>,
    /// The DN a user binds as, `{user}` standing for the user name, e.g.
    /// `uid={user},ou=people,dc=example,dc=org`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_user_dn: Option<String>,
    /// Where the user's groups are searched (subtree).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_group_base: Option<String>,
    /// Filter of the user's groups; `{dn}` is the user's DN, `{user}` the name
    /// (default `(&(objectClass=groupOfNames)(member={dn}))`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_group_filter: Option<String>,
    /// The attribute that names a group (default `cn`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_group_attribute: Option<String>,
    /// Days after which the leader replaces the token signing key (previous keys
    /// verify for one refresh-token lifetime more); 0 turns it off. Default 30.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_rotate_days: Option<u64>,
    /// The rotation period in seconds instead of days (for tests).
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_rotate_secs: Option<u64>,
}

/// Whether requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSetting {
    Open,
    Enforced,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub disks: Vec<PathBuf>,
    pub profile: Option<String>,
    pub shard_bytes: u32,
    pub upload_ttl_secs: u64,
    pub cluster_profile: Option<String>,
    pub zone: Option<String>,
    pub repair_grace_secs: u64,
    pub repair_interval_secs: u64,
    pub scrub_interval_hours: u64,
    pub scrub_interval_secs: Option<u64>,
    pub scrub_mib_per_sec: u32,
    pub read_hedge_ms: u64,
    pub restripe_mib_per_sec: u32,
    pub restripe_old_files_secs: u64,
    pub rebalance_mib_per_sec: u32,
    pub meta_cache_mib: u32,
    pub log_format: String,
    pub allow_insecure_http: bool,
    pub node_id: Option<u64>,
    pub grpc_listen: Option<SocketAddr>,
    pub grpc_advertise: Option<SocketAddr>,
    pub initial_cluster: Option<String>,
    pub join: Option<String>,
    pub cluster_ca: Option<PathBuf>,
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    pub allow_insecure_cluster: bool,
    pub auth: Option<String>,
    pub allow_open_access: bool,
    pub token_ttl_secs: u64,
    pub rate_limit_rps: Option<u32>,
    pub failed_logins_per_minute: u32,
    pub audit_retention_days: u64,
    pub concurrent_requests_max: Option<u32>,
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    pub oidc_groups_claim: String,
    pub oidc_username_claim: String,
    pub oidc_jwks_refresh_min_secs: u64,
    pub ldap_url: Option<String>,
    pub ldap_user_dn: Option<String>,
    pub ldap_group_base: Option<String>,
    pub ldap_group_filter: String,
    pub ldap_group_attribute: String,
    pub signing_key_rotate_days: u64,
    pub signing_key_rotate_secs: Option<u64>,
}

/// Largest accepted `read_hedge_ms`: the shard service's call timeout, after which a
/// read gives up on the shard anyway.
pub const READ_HEDGE_MS_MAX: u64 = berth_blobstore::rpc::limits::CALL_TIMEOUT.as_millis() as u64;
/// Largest accepted `meta_cache_mib` (64 GiB).
pub const META_CACHE_MIB_MAX: u32 = 65_536;
/// Enforced mode's concurrency limit per address and identity when none is configured.
pub const CONCURRENT_REQUESTS_ENFORCED_DEFAULT: u32 = 256;
/// Enforced mode's request limit per address and identity when none is configured.
pub const RATE_LIMIT_RPS_ENFORCED_DEFAULT: u32 = 1000;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data: PathBuf::from("berth-data"),
            disks: Vec::new(),
            profile: None,
            shard_bytes: SHARD_BYTES_DEFAULT,
            upload_ttl_secs: UPLOAD_TTL_SECS_DEFAULT,
            cluster_profile: None,
            zone: None,
            repair_grace_secs: 15 * 60,
            repair_interval_secs: 5,
            scrub_interval_hours: 168,
            scrub_interval_secs: None,
            scrub_mib_per_sec: 32,
            read_hedge_ms: READ_HEDGE_DEFAULT.as_millis() as u64,
            restripe_mib_per_sec: 32,
            restripe_old_files_secs: 60,
            rebalance_mib_per_sec: 16,
            meta_cache_mib: (berth_consensus::CACHE_BYTES_DEFAULT >> 20) as u32,
            log_format: "auto".into(),
            allow_insecure_http: false,
            node_id: None,
            grpc_listen: None,
            grpc_advertise: None,
            initial_cluster: None,
            join: None,
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
            allow_insecure_cluster: false,
            auth: None,
            allow_open_access: false,
            token_ttl_secs: 300,
            rate_limit_rps: None,
            failed_logins_per_minute: 10,
            audit_retention_days: 90,
            concurrent_requests_max: None,
            oidc_issuer: None,
            oidc_audience: None,
            oidc_groups_claim: "groups".into(),
            oidc_username_claim: "sub".into(),
            oidc_jwks_refresh_min_secs: 60,
            ldap_url: None,
            ldap_user_dn: None,
            ldap_group_base: None,
            ldap_group_filter: "(&(objectClass=groupOfNames)(member={dn}))".into(),
            ldap_group_attribute: "cn".into(),
            signing_key_rotate_days: 30,
            signing_key_rotate_secs: None,
        }
    }
}

impl Config {
    /// The authentication mode: as configured, else open on loopback. Open mode on a
    /// non-loopback address is refused unless `allow_open_access` says so.
    pub fn auth_setting(&self) -> anyhow::Result<AuthSetting> {
        let setting = match self.auth.as_deref() {
            Some("enforced") => AuthSetting::Enforced,
            Some("open") | None => AuthSetting::Open,
            Some(other) => anyhow::bail!("auth must be open or enforced, not {other:?}"),
        };
        anyhow::ensure!(
            setting == AuthSetting::Enforced
                || self.listen.ip().is_loopback()
                || self.allow_open_access,
            "refusing to serve without authentication on {}: pass --auth enforced, or \
             --allow-open-access to give everyone who reaches it full access",
            self.listen
        );
        Ok(setting)
    }

    /// The concurrency limit in force; `None`: unlimited.
    pub fn concurrency_limit(&self) -> anyhow::Result<Option<u32>> {
        Ok(match (self.concurrent_requests_max, self.auth_setting()?) {
            (Some(0), _) => None,
            (Some(n), _) => Some(n),
            (None, AuthSetting::Open) => None,
            (None, AuthSetting::Enforced) => Some(CONCURRENT_REQUESTS_ENFORCED_DEFAULT),
        })
    }

    /// The OIDC settings, if an issuer is configured.
    pub fn oidc(&self) -> anyhow::Result<Option<OidcConfig>> {
        let Some(issuer) = &self.oidc_issuer else {
            anyhow::ensure!(
                self.oidc_audience.is_none(),
                "oidc_audience is set but oidc_issuer is not"
            );
            return Ok(None);
        };
        let audience = self
            .oidc_audience
            .clone()
            .filter(|a| !a.is_empty())
            .context("oidc_issuer needs oidc_audience (the client id of the tokens)")?;
        anyhow::ensure!(
            !self.oidc_groups_claim.is_empty() && !self.oidc_username_claim.is_empty(),
            "oidc_groups_claim and oidc_username_claim must not be empty"
        );
        let config = OidcConfig {
            issuer: issuer.clone(),
            audience,
            groups_claim: self.oidc_groups_claim.clone(),
            username_claim: self.oidc_username_claim.clone(),
            jwks_refresh_min: std::time::Duration::from_secs(self.oidc_jwks_refresh_min_secs),
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("oidc_issuer: {e}"))?;
        Ok(Some(config))
    }

    /// The LDAP settings, if a directory is configured.
    pub fn ldap(&self) -> anyhow::Result<Option<LdapConfig>> {
        let Some(url) = &self.ldap_url else {
            return Ok(None);
        };
        let user_dn = self
            .ldap_user_dn
            .clone()
            .filter(|t| t.contains("{user}"))
            .context("ldap_url needs ldap_user_dn, a DN template containing {user}")?;
        let group_base = self
            .ldap_group_base
            .clone()
            .filter(|b| !b.is_empty())
            .context("ldap_url needs ldap_group_base, where groups are searched")?;
        anyhow::ensure!(
            !self.ldap_group_attribute.is_empty() && self.ldap_group_filter.starts_with('('),
            "ldap_group_attribute must not be empty and ldap_group_filter must be an LDAP filter"
        );
        let config = LdapConfig {
            url: url.clone(),
            user_dn,
            group_base,
            group_filter: self.ldap_group_filter.clone(),
            group_attribute: self.ldap_group_attribute.clone(),
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("ldap_url: {e}"))?;
        Ok(Some(config))
    }

    /// The age at which the leader rotates the signing key; `None`: never.
    pub fn signing_key_rotation(&self) -> Option<std::time::Duration> {
        let secs = self
            .signing_key_rotate_secs
            .unwrap_or(self.signing_key_rotate_days.saturating_mul(86_400));
        (secs > 0).then(|| std::time::Duration::from_secs(secs))
    }

    /// The request limit in force; `None`: unlimited.
    pub fn rate_limit(&self) -> anyhow::Result<Option<u32>> {
        Ok(match (self.rate_limit_rps, self.auth_setting()?) {
            (Some(0), _) => None,
            (Some(n), _) => Some(n),
            (None, AuthSetting::Open) => None,
            (None, AuthSetting::Enforced) => Some(RATE_LIMIT_RPS_ENFORCED_DEFAULT),
        })
    }
}

impl Config {
    /// Time between scrub passes; zero: the scrubber is off.
    pub fn scrub_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.scrub_interval_secs
                .unwrap_or(self.scrub_interval_hours.saturating_mul(3600)),
        )
    }

    /// Bytes the scrubber reads per second, at most.
    pub fn scrub_bytes_per_sec(&self) -> u64 {
        u64::from(self.scrub_mib_per_sec) << 20
    }

    /// How long a blob read waits for a shard chunk before it hedges; `None`: never.
    pub fn read_hedge(&self) -> Option<std::time::Duration> {
        (self.read_hedge_ms > 0).then(|| std::time::Duration::from_millis(self.read_hedge_ms))
    }

    /// How the leader restripes blobs to the profile wanted for them now.
    pub fn restripe(&self) -> berth_api::restripe::RestripeConfig {
        berth_api::restripe::RestripeConfig {
            bytes_per_sec: u64::from(self.restripe_mib_per_sec) << 20,
            old_files_delay: std::time::Duration::from_secs(self.restripe_old_files_secs),
        }
    }

    /// Bytes rebalancing copies per second, at most (0: rebalancing off).
    pub fn rebalance_bytes_per_sec(&self) -> u64 {
        u64::from(self.rebalance_mib_per_sec) << 20
    }

    /// Bytes of the metadata store's page cache.
    pub fn meta_cache_bytes(&self) -> usize {
        (self.meta_cache_mib as usize) << 20
    }

    /// The data disks: the configured ones, or one folder inside the data dir.
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        if self.disks.is_empty() {
            vec![self.data.join("disk0")]
        } else {
            self.disks.clone()
        }
    }

    /// How blobs are spread over a cluster's members.
    pub fn cluster_ec_profile(&self) -> anyhow::Result<ClusterProfile> {
        Ok(match self.cluster_profile.as_deref().map(str::trim) {
            None | Some("auto") => ClusterProfile::Auto,
            Some("off") => ClusterProfile::Off,
            Some(p) => ClusterProfile::Fixed(p.parse().with_context(|| {
                format!("invalid cluster erasure-coding profile {p:?} (auto, off or K+M)")
            })?),
        })
    }

    /// The configured profile, or the default for the number of disks.
    pub fn ec_profile(&self) -> anyhow::Result<EcProfile> {
        if let Some(p) = &self.profile {
            return p
                .parse()
                .with_context(|| format!("invalid erasure-coding profile {p:?}"));
        }
        let (k, m) = match self.disk_paths().len() {
            0 | 1 => (1, 0),
            2 => (1, 1),
            3 => (2, 1),
            4 | 5 => (2, 2),
            _ => (4, 2),
        };
        Ok(EcProfile::new(k, m)?)
    }
}

/// Cluster mode: where this node's Raft listens and who founds the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub grpc_listen: SocketAddr,
    /// The address the membership lists for this node (`--grpc-advertise`, else
    /// the listen address).
    pub advertise: SocketAddr,
    pub members: BTreeMap<u64, String>,
    /// HTTP URL of a member to ask for admission.
    pub join: Option<String>,
    /// Mutual TLS between nodes, when configured.
    pub tls: Option<TlsFiles>,
}

/// Where the cluster TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_members(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("cluster member {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("cluster member id {id:?} is not a number"))?;
        anyhow::ensure!(id > 0, "cluster member ids start at 1");
        let addr = addr.trim();
        anyhow::ensure!(
            addr.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            "cluster member address {addr:?} is not HOST:PORT"
        );
        anyhow::ensure!(
            members.insert(id, addr.to_owned()).is_none(),
            "cluster member id {id} appears twice"
        );
    }
    Ok(members)
}

impl Config {
    /// The cluster settings, when this node runs as a cluster member.
    pub fn cluster(&self) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(grpc_listen) = self.grpc_listen else {
            anyhow::ensure!(
                self.initial_cluster.is_none() && self.join.is_none(),
                "--initial-cluster and --join need --grpc-listen"
            );
            return Ok(None);
        };
        let node_id = self.node_id.context("a cluster member needs --node-id")?;
        let members = match &self.initial_cluster {
            Some(s) => parse_members(s)?,
            None => BTreeMap::new(),
        };
        if !members.is_empty() {
            anyhow::ensure!(
                members.contains_key(&node_id),
                "--initial-cluster does not list this node ({node_id})"
            );
        }
        anyhow::ensure!(
            members.is_empty() || self.join.is_none(),
            "--join and --initial-cluster exclude each other: found a cluster or join one"
        );
        let tls = match (&self.cluster_ca, &self.cluster_cert, &self.cluster_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None) => None,
            _ => anyhow::bail!(
                "cluster TLS needs all three of --cluster-ca, --cluster-cert and --cluster-key"
            ),
        };
        anyhow::ensure!(
            tls.is_some() || grpc_listen.ip().is_loopback() || self.allow_insecure_cluster,
            "refusing to run the cluster listener {grpc_listen} without TLS: give \
             --cluster-ca, --cluster-cert and --cluster-key, bind to a loopback address, \
             or pass --allow-insecure-cluster"
        );
        Ok(Some(ClusterConfig {
            node_id,
            grpc_listen,
            advertise: self.grpc_advertise.unwrap_or(grpc_listen),
            members,
            join: self.join.clone(),
            tls,
        }))
    }
}

/// Merges defaults, file, environment and flags, and checks the result.
pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &args.config {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    let cfg: Config = figment
        .merge(Env::prefixed("BERTH_"))
        .merge(Serialized::defaults(args))
        .extract()
        .context("reading configuration")?;
    anyhow::ensure!(
        cfg.shard_bytes >= 1024
            && cfg.shard_bytes <= SHARD_BYTES_MAX
            && cfg.shard_bytes.is_multiple_of(64),
        "shard_bytes must be a multiple of 64 between 1024 and {SHARD_BYTES_MAX}"
    );
    cfg.cluster_ec_profile()?;
    anyhow::ensure!(
        cfg.repair_interval_secs > 0,
        "repair_interval_secs must be at least 1"
    );
    anyhow::ensure!(
        cfg.scrub_mib_per_sec > 0,
        "scrub_mib_per_sec must be at least 1 (turn the scrubber off with scrub_interval_hours = 0)"
    );
    anyhow::ensure!(
        cfg.read_hedge_ms <= READ_HEDGE_MS_MAX,
        "read_hedge_ms must be at most {READ_HEDGE_MS_MAX} (a hedge after the shard \
         service's own timeout never fires); 0 turns hedging off"
    );
    anyhow::ensure!(
        (1..=META_CACHE_MIB_MAX).contains(&cfg.meta_cache_mib),
        "meta_cache_mib must be between 1 and {META_CACHE_MIB_MAX}, not {}",
        cfg.meta_cache_mib
    );
    let profile = cfg.ec_profile()?;
    anyhow::ensure!(
        profile.width() <= cfg.disk_paths().len(),
        "profile {profile} needs {} disks, {} configured",
        profile.width(),
        cfg.disk_paths().len()
    );
    cfg.cluster()?;
    anyhow::ensure!(
        cfg.listen.ip().is_loopback() || cfg.allow_insecure_http,
        "refusing to serve plain HTTP on {}: bind to a loopback address or pass --allow-insecure-http",
        cfg.listen
    );
    cfg.auth_setting()?;
    cfg.oidc()?;
    cfg.ldap()?;
    anyhow::ensure!(cfg.token_ttl_secs >= 1, "token_ttl_secs must be at least 1");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let cfg = load(&ServeArgs::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(cfg.disk_paths(), vec![PathBuf::from("berth-data/disk0")]);
        assert_eq!(cfg.ec_profile().unwrap(), EcProfile::SINGLE);
        assert_eq!(cfg.meta_cache_bytes(), berth_consensus::CACHE_BYTES_DEFAULT);
        assert_eq!(
            cfg.scrub_interval(),
            std::time::Duration::from_secs(168 * 3600)
        );
        assert_eq!(cfg.scrub_bytes_per_sec(), 32 << 20);
    }

    #[test]
    fn the_cluster_profile_is_auto_unless_set() {
        let profile = |v: Option<&str>| {
            load(&ServeArgs {
                cluster_profile: v.map(str::to_owned),
                ..ServeArgs::default()
            })
            .and_then(|c| c.cluster_ec_profile())
        };
        assert_eq!(profile(None).unwrap(), ClusterProfile::Auto);
        assert_eq!(profile(Some("auto")).unwrap(), ClusterProfile::Auto);
        assert_eq!(profile(Some("off")).unwrap(), ClusterProfile::Off);
        assert_eq!(
            profile(Some("3+2")).unwrap(),
            ClusterProfile::Fixed(EcProfile::new(3, 2).unwrap())
        );
        let err = profile(Some("three")).unwrap_err();
        assert!(format!("{err:#}").contains("auto, off or K+M"), "{err:#}");
        // What each choice gives a new blob: nothing across nodes on a single one.
        assert_eq!(ClusterProfile::Auto.for_voters(1), None);
        assert_eq!(
            ClusterProfile::Auto.for_voters(3),
            Some(EcProfile::new(2, 1).unwrap())
        );
        assert_eq!(
            ClusterProfile::Auto.for_voters(5),
            Some(EcProfile::new(3, 2).unwrap())
        );
        assert_eq!(ClusterProfile::Off.for_voters(5), None);
        assert_eq!(
            ClusterProfile::Fixed(EcProfile::new(4, 2).unwrap()).for_voters(3),
            Some(EcProfile::new(4, 2).unwrap())
        );
    }

    #[test]
    fn the_read_hedge_is_300_ms_unless_set_and_0_turns_it_off() {
        let hedge = |ms: Option<u64>| {
            load(&ServeArgs {
                read_hedge_ms: ms,
                ..ServeArgs::default()
            })
            .map(|c| c.read_hedge())
        };
        assert_eq!(hedge(None).unwrap(), Some(READ_HEDGE_DEFAULT));
        assert_eq!(READ_HEDGE_DEFAULT, std::time::Duration::from_millis(300));
        assert_eq!(
            hedge(Some(50)).unwrap(),
            Some(std::time::Duration::from_millis(50))
        );
        assert_eq!(hedge(Some(0)).unwrap(), None);
        assert!(hedge(Some(READ_HEDGE_MS_MAX)).unwrap().is_some());
        let err = hedge(Some(READ_HEDGE_MS_MAX + 1)).unwrap_err();
        assert!(format!("{err:#}").contains("read_hedge_ms"), "{err:#}");
    }

    #[test]
    fn scrub_flags_set_the_schedule_and_the_rate() {
        let args = ServeArgs {
            scrub_interval_hours: Some(0),
            scrub_mib_per_sec: Some(8),
            ..ServeArgs::default()
        };
        let cfg = load(&args).unwrap();
        assert!(
            cfg.scrub_interval().is_zero(),
            "0 hours turns scrubbing off"
        );
        assert_eq!(cfg.scrub_bytes_per_sec(), 8 << 20);
        let args = ServeArgs {
            scrub_interval_hours: Some(24),
            scrub_interval_secs: Some(3),
            ..ServeArgs::default()
        };
        assert_eq!(
            load(&args).unwrap().scrub_interval(),
            std::time::Duration::from_secs(3)
        );
        let args = ServeArgs {
            scrub_mib_per_sec: Some(0),
            ..ServeArgs::default()
        };
        assert!(load(&args).is_err());
    }

    #[test]
    fn restripe_flags_set_the_rate_and_zero_turns_it_off() {
        let cfg = load(&ServeArgs::default()).unwrap().restripe();
        assert_eq!(cfg.bytes_per_sec, 32 << 20);
        assert_eq!(cfg.old_files_delay, std::time::Duration::from_secs(60));
        let args = ServeArgs {
            restripe_mib_per_sec: Some(0),
            restripe_old_files_secs: Some(2),
            ..ServeArgs::default()
        };
        let cfg = load(&args).unwrap().restripe();
        assert_eq!(cfg.bytes_per_sec, 0);
        assert_eq!(cfg.old_files_delay, std::time::Duration::from_secs(2));
    }

    #[test]
    fn signing_key_rotation_defaults_to_thirty_days_and_zero_turns_it_off() {
        let cfg = load(&ServeArgs::default()).unwrap();
        assert_eq!(
            cfg.signing_key_rotation(),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        let off = ServeArgs {
            signing_key_rotate_days: Some(0),
            ..ServeArgs::default()
        };
        assert_eq!(load(&off).unwrap().signing_key_rotation(), None);
        let secs = ServeArgs {
            signing_key_rotate_secs: Some(3),
            ..ServeArgs::default()
        };
        assert_eq!(
            load(&secs).unwrap().signing_key_rotation(),
            Some(std::time::Duration::from_secs(3))
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\nshard_bytes = 65536\nmeta_cache_mib = 8\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            disks: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            ..ServeArgs::default()
        };
        let cfg = load(&args).unwrap();
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.shard_bytes, 65536);
        assert_eq!(cfg.meta_cache_bytes(), 8 << 20);
        assert_eq!(cfg.ec_profile().unwrap().to_string(), "2+2");
    }

    #[test]
    fn cluster_members_parse() {
        let m = parse_members("1=127.0.0.1:6001, 2=node-b:6002,3=[::1]:6003").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], "node-b:6002");
        for bad in ["1", "x=a:1", "0=a:1", "1=a", "1=a:1,1=b:2", "1=:5"] {
            assert!(parse_members(bad).is_err(), "{bad}");
        }
        let args = ServeArgs {
            node_id: Some(2),
            grpc_listen: Some("127.0.0.1:6002".parse().unwrap()),
            initial_cluster: Some("1=127.0.0.1:6001,2=127.0.0.1:6002".into()),
            ..ServeArgs::default()
        };
        let cluster = load(&args).unwrap().cluster().unwrap().unwrap();
        assert_eq!(cluster.node_id, 2);
        assert_eq!(cluster.advertise, cluster.grpc_listen);
        let behind_proxy = ServeArgs {
            node_id: Some(2),
            grpc_listen: Some("127.0.0.1:6002".parse().unwrap()),
            grpc_advertise: Some("127.0.0.1:7002".parse().unwrap()),
            initial_cluster: Some("1=127.0.0.1:6001,2=127.0.0.1:7002".into()),
            ..ServeArgs::default()
        };
        let cluster = load(&behind_proxy).unwrap().cluster().unwrap().unwrap();
        assert_eq!(cluster.advertise.to_string(), "127.0.0.1:7002");
        assert_eq!(cluster.grpc_listen.to_string(), "127.0.0.1:6002");
        let stranger = ServeArgs {
            node_id: Some(9),
            ..args
        };
        assert!(load(&stranger).is_err());
    }

    #[test]
    fn cluster_tls_is_all_or_nothing_and_required_off_loopback() {
        let member = |grpc: &str| ServeArgs {
            node_id: Some(1),
            grpc_listen: Some(grpc.parse().unwrap()),
            ..ServeArgs::default()
        };
        let partial = ServeArgs {
            cluster_ca: Some("ca.pem".into()),
            ..member("127.0.0.1:6001")
        };
        assert!(
            load(&partial)
                .unwrap_err()
                .to_string()
                .contains("all three")
        );
        let open = member("0.0.0.0:6001");
        assert!(load(&open).unwrap_err().to_string().contains("without TLS"));
        let forced = ServeArgs {
            allow_insecure_cluster: true,
            ..member("0.0.0.0:6001")
        };
        assert!(
            load(&forced)
                .unwrap()
                .cluster()
                .unwrap()
                .unwrap()
                .tls
                .is_none()
        );
        let secured = ServeArgs {
            cluster_ca: Some("ca.pem".into()),
            cluster_cert: Some("node.pem".into()),
            cluster_key: Some("node.key".into()),
            ..member("0.0.0.0:6001")
        };
        let tls = load(&secured).unwrap().cluster().unwrap().unwrap().tls;
        assert_eq!(tls.unwrap().key, PathBuf::from("node.key"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let wide = ServeArgs {
            profile: Some("2+2".into()),
            ..ServeArgs::default()
        };
        assert!(
            load(&wide)
                .unwrap_err()
                .to_string()
                .contains("needs 4 disks")
        );
        let public = ServeArgs {
            listen: Some("0.0.0.0:5000".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(load(&public).unwrap_err().to_string().contains("refusing"));
        let odd = ServeArgs {
            shard_bytes: Some(1000),
            ..ServeArgs::default()
        };
        assert!(load(&odd).is_err());
        for mib in [0, META_CACHE_MIB_MAX + 1] {
            let cache = ServeArgs {
                meta_cache_mib: Some(mib),
                ..ServeArgs::default()
            };
            assert!(
                load(&cache)
                    .unwrap_err()
                    .to_string()
                    .contains("meta_cache_mib"),
                "{mib}"
            );
        }
        let bogus = ServeArgs {
            auth: Some("maybe".into()),
            ..ServeArgs::default()
        };
        assert!(load(&bogus).is_err());
    }

    #[test]
    fn oidc_needs_an_audience_and_a_safe_issuer() {
        let with = |issuer: Option<&str>, audience: Option<&str>| ServeArgs {
            oidc_issuer: issuer.map(String::from),
            oidc_audience: audience.map(String::from),
            ..ServeArgs::default()
        };
        assert!(load(&with(None, None)).unwrap().oidc().unwrap().is_none());
        let cfg = load(&with(Some("http://127.0.0.1:9000/realm"), Some("berth"))).unwrap();
        let oidc = cfg.oidc().unwrap().unwrap();
        assert_eq!(oidc.groups_claim, "groups");
        assert_eq!(oidc.username_claim, "sub");
        assert!(load(&with(Some("https://id.example"), Some("berth"))).is_ok());
        for (issuer, audience, why) in [
            (Some("http://id.example"), Some("berth"), "https"),
            (Some("not a url"), Some("berth"), "not a URL"),
            (Some("https://id.example"), None, "oidc_audience"),
            (None, Some("berth"), "oidc_issuer is not"),
        ] {
            let err = load(&with(issuer, audience)).unwrap_err().to_string();
            assert!(err.contains(why), "{issuer:?} {audience:?}: {err}");
        }
    }

    #[test]
    fn ldap_needs_a_user_dn_template_and_a_group_base() {
        let with = |url: &str, dn: Option<&str>, base: Option<&str>| ServeArgs {
            ldap_url: Some(url.into()),
            ldap_user_dn: dn.map(String::from),
            ldap_group_base: base.map(String::from),
            ..ServeArgs::default()
        };
        let cfg = load(&with(
            "ldap://127.0.0.1:389",
            Some("uid={user},dc=x"),
            Some("ou=groups,dc=x"),
        ))
        .unwrap();
        let ldap = cfg.ldap().unwrap().unwrap();
        assert_eq!(ldap.group_attribute, "cn");
        assert!(ldap.group_filter.contains("{dn}"));
        for (url, dn, base, why) in [
            ("ldaps://h", Some("uid={user}"), Some("b"), "ldap:// URL"),
            ("ldap://h", Some("uid=alice"), Some("b"), "{user}"),
            ("ldap://h", Some("uid={user}"), None, "ldap_group_base"),
        ] {
            let err = load(&with(url, dn, base)).unwrap_err().to_string();
            assert!(err.contains(why), "{url} {dn:?} {base:?}: {err}");
        }
    }

    #[test]
    fn auth_is_open_on_loopback_only() {
        let cfg = load(&ServeArgs::default()).unwrap();
        assert_eq!(cfg.auth_setting().unwrap(), AuthSetting::Open);
        assert_eq!(cfg.rate_limit().unwrap(), None);
        let wide = |auth: Option<&str>, allow_open_access: bool| ServeArgs {
            listen: Some("0.0.0.0:5000".parse().unwrap()),
            allow_insecure_http: true,
            auth: auth.map(String::from),
            allow_open_access,
            ..ServeArgs::default()
        };
        let refused = load(&wide(None, false)).unwrap_err().to_string();
        assert!(refused.contains("without authentication"), "{refused}");
        assert!(load(&wide(Some("open"), false)).is_err());
        assert_eq!(
            load(&wide(None, true)).unwrap().auth_setting().unwrap(),
            AuthSetting::Open
        );
        let enforced = load(&wide(Some("enforced"), false)).unwrap();
        assert_eq!(enforced.auth_setting().unwrap(), AuthSetting::Enforced);
        assert_eq!(
            enforced.rate_limit().unwrap(),
            Some(RATE_LIMIT_RPS_ENFORCED_DEFAULT)
        );
        let loopback = ServeArgs {
            auth: Some("enforced".into()),
            rate_limit_rps: Some(0),
            ..ServeArgs::default()
        };
        let cfg = load(&loopback).unwrap();
        assert_eq!(cfg.auth_setting().unwrap(), AuthSetting::Enforced);
        assert_eq!(cfg.rate_limit().unwrap(), None);
    }

    #[test]
    fn rebalancing_copies_16_mib_per_second_by_default_and_zero_turns_it_off() {
        assert_eq!(
            load(&ServeArgs::default())
                .unwrap()
                .rebalance_bytes_per_sec(),
            16 << 20
        );
        let args = ServeArgs {
            rebalance_mib_per_sec: Some(0),
            ..ServeArgs::default()
        };
        assert_eq!(load(&args).unwrap().rebalance_bytes_per_sec(), 0);
    }
}
