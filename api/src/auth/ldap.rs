//! LDAP bind authentication: a user name and password are checked by binding to the
//! configured directory as the user's DN (from a template), then the user's groups
//! are read with a search under the group base; the result is an
//! [`ExternalIdentity`] `ldap:<user>` whose groups map to project roles like OIDC
//! groups. Successful logins are cached for a minute (so Basic credentials on every
//! `/v2/` request do not each cost a bind); a directory that cannot be reached is
//! [`LdapError::Unavailable`], never a wrong password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_consensus::tenancy::{IdentityProvider, LdapProviderRecord, valid_group_name};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, dn_escape, ldap_escape};
use sha2::{Digest as _, Sha256};

use super::ExternalIdentity;

/// How long one login (connect, bind, group search) may take.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a successful login stays cached.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached logins.
const LOGIN_CACHE_ENTRIES_MAX: usize = 10_000;
/// Longest LDAP user name, in bytes.
pub const USER_BYTES_MAX: usize = 64;
/// Most groups taken for one user.
pub const GROUPS_MAX: usize = 256;
/// The LDAP result code of a failed simple bind.
const INVALID_CREDENTIALS: u32 = 49;

/// Settings of the LDAP provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:port`.
    pub url: String,
    /// The DN a user binds as; `{user}` stands for the (DN-escaped) user name, e.g.
    /// `uid={user},ou=people,dc=example,dc=org`.
    pub user_dn: String,
    /// Where groups are searched (subtree).
    pub group_base: String,
    /// Which entries are the user's groups; `{dn}` stands for the user's DN and
    /// `{user}` for the user name (both filter-escaped).
    pub group_filter: String,
    /// The attribute of a group entry that names it (e.g. `cn`).
    pub group_attribute: String,
}

impl LdapConfig {
    /// Checks the settings: an `ldap://` URL, a user DN template holding `{user}`, a
    /// group base, an LDAP filter and a group attribute.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("ldap://") {
            return Err(format!(
                "the LDAP URL must be an ldap:// URL (ldaps:// and StartTLS are not supported yet), not {:?}",
                self.url
            ));
        }
        if !self.user_dn.contains("{user}") {
            return Err("the LDAP user DN must be a DN template containing {user}".into());
        }
        if self.group_base.is_empty() {
            return Err("the LDAP group base (where groups are searched) must not be empty".into());
        }
        if self.group_attribute.is_empty() || !self.group_filter.starts_with('(') {
            return Err(
                "the LDAP group attribute must not be empty and the group filter must be an LDAP filter"
                    .into(),
            );
        }
        Ok(())
    }

    /// The settings as the cluster stores them.
    pub fn record(&self) -> LdapProviderRecord {
        LdapProviderRecord {
            url: self.url.clone(),
            user_dn: self.user_dn.clone(),
            group_base: self.group_base.clone(),
            group_filter: self.group_filter.clone(),
            group_attribute: self.group_attribute.clone(),
        }
    }

    /// The settings from the cluster's record.
    pub fn of_record(r: &LdapProviderRecord) -> LdapConfig {
        LdapConfig {
            url: r.url.clone(),
            user_dn: r.user_dn.clone(),
            group_base: r.group_base.clone(),
            group_filter: r.group_filter.clone(),
            group_attribute: r.group_attribute.clone(),
        }
    }
}

/// Why an LDAP login failed.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("the LDAP directory cannot be reached: {0}")]
    Unavailable(String),
}

/// When a login succeeded, and the groups it found.
type CachedLogin = (Instant, Vec<String>);

/// The LDAP authenticator of one node.
pub struct Ldap {
    pub config: LdapConfig,
    cache: Mutex<HashMap<[u8; 32], CachedLogin>>,
}

/// Whether `user` may be looked up: 1 to [`USER_BYTES_MAX`] bytes of letters, digits
/// and `. _ - @`. (Escaping makes other names safe too, but names like these are all
/// directories use for logins, and refusing the rest keeps odd input away from them.)
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= USER_BYTES_MAX
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

impl Ldap {
    pub fn new(config: LdapConfig) -> Ldap {
        Ldap {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The DN `user` binds as.
    pub fn user_dn(&self, user: &str) -> String {
        self.config.user_dn.replace("{user}", &dn_escape(user))
    }

    /// The group search filter for `user` with DN `dn`.
    pub fn group_filter(&self, user: &str, dn: &str) -> String {
        self.config
            .group_filter
            .replace("{dn}", &ldap_escape(dn))
            .replace("{user}", &ldap_escape(user))
    }

    /// Binds as `user` with `password` and reads the user's groups.
    pub async fn login(&self, user: &str, password: &str) -> Result<ExternalIdentity, LdapError> {
        // An empty password would be an unauthenticated bind, which succeeds.
        if !valid_user(user) || password.is_empty() {
            return Err(LdapError::BadCredentials);
        }
        let key = cache_key(user, password);
        if let Some(groups) = self.cached(&key) {
            return Ok(identity(user, groups));
        }
        let groups = tokio::time::timeout(LOGIN_TIMEOUT, self.bind_and_search(user, password))
            .await
            .map_err(|_| LdapError::Unavailable("timed out".into()))??;
        let mut cache = self.cache.lock().expect("ldap cache poisoned");
        if cache.len() >= LOGIN_CACHE_ENTRIES_MAX {
            cache.retain(|_, (t, _)| t.elapsed() < LOGIN_CACHE_TTL);
            if cache.len() >= LOGIN_CACHE_ENTRIES_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), groups.clone()));
        Ok(identity(user, groups))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Vec<String>> {
        let cache = self.cache.lock().expect("ldap cache poisoned");
        cache
            .get(key)
            .filter(|(t, _)| t.elapsed() < LOGIN_CACHE_TTL)
            .map(|(_, g)| g.clone())
    }

    async fn bind_and_search(&self, user: &str, password: &str) -> Result<Vec<String>, LdapError> {
        let unavailable = |e: ldap3::LdapError| LdapError::Unavailable(e.to_string());
        let settings = LdapConnSettings::new().set_conn_timeout(LOGIN_TIMEOUT);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(unavailable)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        let dn = self.user_dn(user);
        let result = async {
            let bound = ldap.simple_bind(&dn, password).await.map_err(unavailable)?;
            if bound.rc == INVALID_CREDENTIALS {
                return Err(LdapError::BadCredentials);
            }
            bound.success().map_err(|e| {
                tracing::warn!(error = %e, "LDAP bind refused");
                LdapError::BadCredentials
            })?;
            let (entries, _) = ldap
                .search(
                    &self.config.group_base,
                    Scope::Subtree,
                    &self.group_filter(user, &dn),
                    vec![self.config.group_attribute.as_str()],
                )
                .await
                .map_err(unavailable)?
                .success()
                .map_err(unavailable)?;
            let mut groups = Vec::new();
            for entry in entries {
                let entry = SearchEntry::construct(entry);
                if let Some(values) = entry.attrs.get(&self.config.group_attribute) {
                    groups.extend(values.iter().filter(|g| valid_group_name(g)).cloned());
                }
                if groups.len() >= GROUPS_MAX {
                    groups.truncate(GROUPS_MAX);
                    break;
                }
            }
            Ok(groups)
        }
        .await;
        let _ = ldap.unbind().await;
        driver.abort();
        result
    }
}

fn identity(user: &str, groups: Vec<String>) -> ExternalIdentity {
    ExternalIdentity {
        name: format!("{}:{user}", IdentityProvider::Ldap.as_str()),
        provider: IdentityProvider::Ldap,
        groups,
    }
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user.as_bytes(), password.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ldap() -> Ldap {
        Ldap::new(LdapConfig {
            url: "ldap://127.0.0.1:1".into(),
            user_dn: "uid={user},ou=people,dc=example,dc=org".into(),
            group_base: "ou=groups,dc=example,dc=org".into(),
            group_filter: "(&(objectClass=groupOfNames)(member={dn}))".into(),
            group_attribute: "cn".into(),
        })
    }

    #[test]
    fn names_are_checked_and_escaped() {
        let l = ldap();
        assert_eq!(l.user_dn("alice"), "uid=alice,ou=people,dc=example,dc=org");
        assert_eq!(
            l.group_filter("alice", "uid=a(b)*,dc=x"),
            "(&(objectClass=groupOfNames)(member=uid=a\\28b\\29\\2a,dc=x))"
        );
        assert!(valid_user("alice.b@example.org"));
        assert!(!valid_user("alice,ou=admins"));
        assert!(!valid_user("*"));
        assert!(!valid_user(""));
    }

    #[tokio::test]
    async fn empty_passwords_and_odd_names_never_reach_the_directory() {
        let l = ldap();
        assert!(matches!(
            l.login("alice", "").await,
            Err(LdapError::BadCredentials)
        ));
        assert!(matches!(
            l.login("a*", "pw").await,
            Err(LdapError::BadCredentials)
        ));
        // A directory that is not there is unavailable, not a wrong password.
        assert!(matches!(
            l.login("alice", "pw").await,
            Err(LdapError::Unavailable(_))
        ));
    }
}
