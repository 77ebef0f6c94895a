//! OpenID Connect: verifies ID tokens of the one configured issuer and turns them into
//! an [`ExternalIdentity`] (`oidc:<sub>` plus the token's groups). The issuer's
//! discovery document and JWKS are fetched over HTTP and cached; a token that names an
//! unknown key id triggers a refresh, at most one per
//! [`OidcConfig::jwks_refresh_min`], so forged key ids cannot make berth hammer the
//! issuer. Only RS256 and ES256 signatures are accepted; `iss`, `aud`, `exp` and
//! `nbf` are checked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use berth_consensus::tenancy::{
    ACCOUNT_NAME_BYTES_MAX, IdentityProvider, OidcProviderRecord, valid_group_name,
};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::ExternalIdentity;

/// Largest discovery document or JWKS accepted, in bytes.
pub const DOCUMENT_BYTES_MAX: usize = 1024 * 1024;
/// How long one request to the issuer may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long the cached keys are fetched again on the next login.
pub const JWKS_AGE_MAX: Duration = Duration::from_secs(3600);
/// Most groups taken from one token (the rest are ignored).
pub const GROUPS_MAX: usize = 256;
/// Allowed clock difference to the issuer for `exp` and `nbf`, in seconds.
pub const CLOCK_LEEWAY_SECS: u64 = 30;
/// Most keys kept from one JWKS.
const JWKS_KEYS_MAX: usize = 64;

/// Settings of the OIDC provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer URL, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// The client id the tokens must be issued to (`aud`).
    pub audience: String,
    /// The claim that lists the caller's groups.
    pub groups_claim: String,
    /// The claim that names the caller (`sub` or `preferred_username`).
    pub username_claim: String,
    /// Least time between two key fetches triggered by unknown key ids.
    pub jwks_refresh_min: Duration,
}

impl OidcConfig {
    /// Checks the settings: the issuer is an https URL (plain http only on loopback,
    /// for tests and local issuers), the audience and claims are not empty.
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.issuer)
            .map_err(|e| format!("the OIDC issuer {:?} is not a URL: {e}", self.issuer))?;
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(h) => h
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(format!(
                "the OIDC issuer must be an https URL (plain http only on loopback), not {:?}",
                self.issuer
            ));
        }
        if self.audience.is_empty() {
            return Err("the OIDC issuer needs an audience (the client id of the tokens)".into());
        }
        if self.groups_claim.is_empty() || self.username_claim.is_empty() {
            return Err("the OIDC groups and username claims must not be empty".into());
        }
        Ok(())
    }

    /// The settings as the cluster stores them.
    pub fn record(&self) -> OidcProviderRecord {
        OidcProviderRecord {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            groups_claim: self.groups_claim.clone(),
            username_claim: self.username_claim.clone(),
            jwks_refresh_min_secs: self.jwks_refresh_min.as_secs(),
        }
    }

    /// The settings from the cluster's record.
    pub fn of_record(r: &OidcProviderRecord) -> OidcConfig {
        OidcConfig {
            issuer: r.issuer.clone(),
            audience: r.audience.clone(),
            groups_claim: r.groups_claim.clone(),
            username_claim: r.username_claim.clone(),
            jwks_refresh_min: Duration::from_secs(r.jwks_refresh_min_secs),
        }
    }
}

/// Why an ID token was refused.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(
        "ID token is malformed, expired, not yet valid, for another audience or wrongly signed: {0}"
    )]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("ID token uses algorithm {0:?}; RS256 and ES256 are accepted")]
    Algorithm(Algorithm),
    #[error("ID token names no key id or a key the issuer does not publish")]
    UnknownKey,
    #[error("ID token has no usable {0:?} claim")]
    NoName(String),
    #[error("the OIDC issuer cannot be reached: {0}")]
    IssuerUnavailable(String),
}

struct Jwks {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Instant,
}

/// The OIDC verifier of one node.
pub struct Oidc {
    pub config: OidcConfig,
    http: reqwest::Client,
    jwks: RwLock<Option<Arc<Jwks>>>,
    /// Serializes fetches and remembers when the last one started and whether it
    /// reached the issuer.
    fetch_gate: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// How many key fetches were made (for metrics and tests of the rate limit).
    fetches: std::sync::atomic::AtomicU64,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Oidc {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("an HTTP client with a timeout builds");
        Oidc {
            config,
            http,
            jwks: RwLock::new(None),
            fetch_gate: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times the keys were fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `iss` claim of a token, read without verifying it (to route a bearer
    /// token to the right verifier).
    pub fn unverified_issuer(token: &str) -> Option<String> {
        let payload = token.split('.').nth(1)?;
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload.trim_end_matches('='),
        )
        .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v.get("iss")?.as_str().map(str::to_owned)
    }

    /// Verifies an ID token and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<ExternalIdentity, OidcError> {
        let header = jsonwebtoken::decode_header(token)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(OidcError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(OidcError::UnknownKey)?;
        let (alg, key) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(OidcError::Algorithm(header.alg));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)?;
        identity_of(&data.claims, &self.config)
    }

    /// The key `kid`, fetching the issuer's keys when it is unknown or the cache is
    /// old (at most once per `jwks_refresh_min`).
    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), OidcError> {
        let cached = self.jwks.read().expect("jwks lock poisoned").clone();
        if let Some(j) = &cached
            && let Some(k) = j.keys.get(kid)
            && j.fetched.elapsed() < JWKS_AGE_MAX
        {
            return Ok(k.clone());
        }
        let mut gate = self.fetch_gate.lock().await;
        // Another request may have fetched while this one waited.
        let current = self.jwks.read().expect("jwks lock poisoned").clone();
        if let Some(j) = &current
            && let Some(k) = j.keys.get(kid)
            && j.fetched.elapsed() < JWKS_AGE_MAX
        {
            return Ok(k.clone());
        }
        if let Some((at, reached)) = *gate
            && at.elapsed() < self.config.jwks_refresh_min
        {
            // Too soon to ask the issuer again: answer from what is cached.
            return match current.and_then(|j| j.keys.get(kid).cloned()) {
                Some(k) => Ok(k),
                None if reached => Err(OidcError::UnknownKey),
                None => Err(OidcError::IssuerUnavailable(
                    "the last attempt to fetch the issuer's keys failed".into(),
                )),
            };
        }
        *gate = Some((Instant::now(), false));
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch_keys().await {
            Ok(keys) => {
                *gate = Some((Instant::now(), true));
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "fetched the OIDC issuer's keys");
                let found = keys.get(kid).cloned();
                *self.jwks.write().expect("jwks lock poisoned") = Some(Arc::new(Jwks {
                    keys,
                    fetched: Instant::now(),
                }));
                found.ok_or(OidcError::UnknownKey)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "fetching the OIDC issuer's keys");
                // Keys cached before still verify while the issuer is away.
                match current.and_then(|j| j.keys.get(kid).cloned()) {
                    Some(k) => Ok(k),
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, (Algorithm, DecodingKey)>, OidcError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Value = serde_json::from_slice(&self.get(&discovery_url).await?)
            .map_err(|e| OidcError::IssuerUnavailable(format!("discovery document: {e}")))?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(OidcError::IssuerUnavailable(
                "the discovery document names another issuer".into(),
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::IssuerUnavailable("discovery has no jwks_uri".into()))?;
        let set: JwkSet = serde_json::from_slice(&self.get(jwks_uri).await?)
            .map_err(|e| OidcError::IssuerUnavailable(format!("JWKS: {e}")))?;
        Ok(keys_of(&set))
    }

    /// GETs `url` with the timeout and the size limit.
    async fn get(&self, url: &str) -> Result<Vec<u8>, OidcError> {
        let unavailable = |e: reqwest::Error| OidcError::IssuerUnavailable(format!("{url}: {e}"));
        let mut resp = self.http.get(url).send().await.map_err(unavailable)?;
        if !resp.status().is_success() {
            return Err(OidcError::IssuerUnavailable(format!(
                "{url}: status {}",
                resp.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > DOCUMENT_BYTES_MAX {
                return Err(OidcError::IssuerUnavailable(format!(
                    "{url}: larger than {DOCUMENT_BYTES_MAX} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The RS256 and ES256 (P-256) keys of a JWKS that have a key id.
fn keys_of(set: &JwkSet) -> HashMap<String, (Algorithm, DecodingKey)> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        if out.len() >= JWKS_KEYS_MAX {
            break;
        }
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(kid.clone(), (alg, key));
        }
    }
    out
}

/// The identity a verified token's claims name.
fn identity_of(
    claims: &serde_json::Map<String, Value>,
    config: &OidcConfig,
) -> Result<ExternalIdentity, OidcError> {
    let prefix = IdentityProvider::Oidc.as_str();
    let name = claims
        .get(&config.username_claim)
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() + prefix.len() < ACCOUNT_NAME_BYTES_MAX
                && !n.chars().any(char::is_control)
        })
        .ok_or_else(|| OidcError::NoName(config.username_claim.clone()))?;
    let groups = match claims.get(&config.groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| valid_group_name(g))
            .take(GROUPS_MAX)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(g)) if valid_group_name(g) => vec![g.clone()],
        _ => Vec::new(),
    };
    Ok(ExternalIdentity {
        name: format!("{prefix}:{name}"),
        provider: IdentityProvider::Oidc,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "http://issuer".into(),
            audience: "berth".into(),
            groups_claim: "groups".into(),
            username_claim: "sub".into(),
            jwks_refresh_min: Duration::from_secs(10),
        }
    }

    fn map(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claims_name_a_prefixed_identity_with_groups() {
        let id = identity_of(
            &map(json!({ "sub": "alice", "groups": ["devs", "", 7, "readers"] })),
            &config(),
        )
        .unwrap();
        assert_eq!(id.name, "oidc:alice");
        assert_eq!(id.groups, vec!["devs".to_owned(), "readers".to_owned()]);

        let single =
            identity_of(&map(json!({ "sub": "bob", "groups": "ops" })), &config()).unwrap();
        assert_eq!(single.groups, vec!["ops".to_owned()]);

        let mut by_name = config();
        by_name.username_claim = "preferred_username".into();
        let id = identity_of(
            &map(json!({ "sub": "123", "preferred_username": "carol" })),
            &by_name,
        )
        .unwrap();
        assert_eq!(id.name, "oidc:carol");
        assert!(id.groups.is_empty());
        assert!(identity_of(&map(json!({ "sub": "123" })), &by_name).is_err());
        assert!(identity_of(&map(json!({ "sub": "" })), &config()).is_err());
    }

    #[test]
    fn only_rs256_and_p256_keys_are_kept() {
        let set: JwkSet = serde_json::from_value(json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            { "kty": "EC", "crv": "P-256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["ec"].0, Algorithm::ES256);
    }

    #[test]
    fn the_issuer_is_read_without_verification() {
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iss":"http://issuer","sub":"x"}"#,
        );
        assert_eq!(
            Oidc::unverified_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("http://issuer")
        );
        assert_eq!(Oidc::unverified_issuer("garbage"), None);
    }
}
