//! The Docker token service: `GET /token` (Basic credentials or anonymous) and the
//! OAuth2 `POST /token` form (`grant_type=password` or `refresh_token`) that `docker
//! login` uses. Tokens are ES256 JWTs signed with the key in Raft (so every node
//! verifies every token), carrying a key id and `access` claims that never exceed
//! what the identity holds when the token is issued.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_consensus::tenancy::{AuditOutcome, SigningKeyRecord};
use berth_types::RepoName;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::policy::Actions;
use super::{Auth, AuthFailure, Caller, Principal, SERVICE, audit, client_addr};
use crate::AppState;
use crate::uploads::now_ms;

/// Most scopes one token request may ask for.
const SCOPES_MAX: usize = 50;
/// Largest token request form, in bytes.
const FORM_BYTES_MAX: usize = 64 * 1024;

/// One `access` entry of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaim {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessClaim>,
    #[serde(rename = "use")]
    pub token_use: TokenUse,
    /// The groups an external provider vouched for at login (external identities
    /// only); their bindings decide what the token's holder may do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The actions `claims` grant on `repo`.
pub fn claimed(claims: &[AccessClaim], repo: &RepoName) -> Actions {
    claims
        .iter()
        .filter(|c| c.kind == "repository" && c.name == repo.as_str())
        .fold(Actions::NONE, |a, c| {
            a.union(Actions::parse_list(c.actions.iter().map(String::as_str)))
        })
}

/// A fresh P-256 signing key; its id is the first 16 bytes of the SHA-256 of the
/// public key, in hex.
pub fn generate_key(now_ms: u64) -> SigningKeyRecord {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("the system random source generates a P-256 key");
    let pkcs8 = doc.as_ref().to_vec();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .expect("a freshly generated key parses");
    SigningKeyRecord {
        kid: kid_of(pair.public_key().as_ref()),
        pkcs8_der: pkcs8,
        created_at_ms: now_ms,
    }
}

fn kid_of(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..16])
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed, expired, not yet valid or wrongly signed: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token names an unknown key")]
    UnknownKey,
    #[error("token was signed by a key retired after rotation")]
    Retired,
    #[error("token is not an {0:?} token")]
    WrongUse(TokenUse),
    #[error("signing key is unusable")]
    BadKey,
}

/// The signing key and the verification keys by key id, each with the instant it
/// retires (after which tokens it signed are refused).
#[derive(Clone)]
pub struct Keys {
    signing_kid: String,
    signing: Arc<EncodingKey>,
    verifying: Arc<HashMap<String, (DecodingKey, Option<u64>)>>,
}

impl Keys {
    /// From the key records in Raft, none retiring; the first one signs.
    pub fn from_records(records: &[SigningKeyRecord]) -> Result<Keys, TokenError> {
        let all: Vec<_> = records.iter().map(|r| (r.clone(), None)).collect();
        Keys::with_retirement(&all)
    }

    /// From the key records in Raft with their retirement: the newest key that does
    /// not retire signs (else the one that retires last).
    pub fn with_retirement(
        records: &[(SigningKeyRecord, Option<u64>)],
    ) -> Result<Keys, TokenError> {
        let signer = records
            .iter()
            .max_by_key(|(r, retire)| (retire.is_none(), *retire, r.created_at_ms))
            .map(|(r, _)| r)
            .ok_or(TokenError::BadKey)?;
        let mut verifying = HashMap::new();
        for (r, retire) in records {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &r.pkcs8_der)
                .map_err(|_| TokenError::BadKey)?;
            verifying.insert(
                r.kid.clone(),
                (
                    DecodingKey::from_ec_der(pair.public_key().as_ref()),
                    *retire,
                ),
            );
        }
        Ok(Keys {
            signing_kid: signer.kid.clone(),
            signing: Arc::new(EncodingKey::from_ec_der(&signer.pkcs8_der)),
            verifying: Arc::new(verifying),
        })
    }

    /// The id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Whether `token` names a key these keys do not hold (the keys may be stale).
    pub fn knows_kid_of(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|k| self.verifying.contains_key(&k))
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.signing_kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.signing)?)
    }

    /// Verifies signature, issuer, audience, expiry (no leeway) and use.
    pub fn verify(&self, token: &str, token_use: TokenUse) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let (key, retire) = header
            .kid
            .as_ref()
            .and_then(|k| self.verifying.get(k))
            .ok_or(TokenError::UnknownKey)?;
        if retire.is_some_and(|at| now_ms() >= at) {
            return Err(TokenError::Retired);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_audience(&[SERVICE]);
        validation.set_issuer(&[SERVICE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)?;
        if data.claims.token_use != token_use {
            return Err(TokenError::WrongUse(token_use));
        }
        Ok(data.claims)
    }
}

fn new_claims(sub: &str, ttl_secs: u64, access: Vec<AccessClaim>, token_use: TokenUse) -> Claims {
    let now = now_ms() / 1000;
    Claims {
        iss: SERVICE.into(),
        sub: sub.into(),
        aud: SERVICE.into(),
        exp: now + ttl_secs,
        nbf: now,
        iat: now,
        jti: hex::encode(rand::random::<[u8; 16]>()),
        access,
        token_use,
        groups: Vec::new(),
    }
}

/// Parses requested scopes (`repository:NAME:ACTIONS`, several per parameter,
/// separated by spaces) into repositories and actions. Unknown kinds and invalid
/// names are skipped.
pub fn parse_scopes<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<(RepoName, Actions)> {
    let mut out = Vec::new();
    for scope in params.into_iter().flat_map(|p| p.split(' ')) {
        if out.len() >= SCOPES_MAX {
            break;
        }
        let mut parts = scope.splitn(2, ':');
        let kind = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        if kind != "repository" && !kind.starts_with("repository(") {
            continue;
        }
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if let Ok(repo) = name.parse::<RepoName>() {
            out.push((repo, Actions::parse_list(actions.split(','))));
        }
    }
    out
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// Basic credentials in `headers` that name a one-time token.
fn one_time_basic(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    super::parse_basic(rest.trim()).filter(|(u, _)| Auth::is_one_time(u))
}

/// `GET /token` and `POST /token`.
pub async fn token(State(app): State<AppState>, req: Request<Body>) -> Response {
    let client = client_addr(&req);
    if let Some(wait) = app.auth.limits.address(&client) {
        return super::ratelimit::too_many(wait).into_response();
    }
    let headers = req.headers().clone();
    let is_post = req.method() == Method::POST;
    let mut params = form_pairs(req.uri().query().unwrap_or(""));
    if is_post {
        match axum::body::to_bytes(req.into_body(), FORM_BYTES_MAX).await {
            Ok(body) => params.extend(form_pairs(&String::from_utf8_lossy(&body))),
            Err(_) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "form too large");
            }
        }
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let scopes = parse_scopes(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let want_refresh =
        get("offline_token") == Some("true") || get("access_type") == Some("offline");

    let principal = if is_post {
        match get("grant_type") {
            Some("password") => {
                let (Some(user), Some(pw)) = (get("username"), get("password")) else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "username and password are required",
                    );
                };
                if Auth::is_one_time(user) {
                    app.auth.redeem_one_time(&app.meta, user, pw, &client).await
                } else {
                    app.auth.login(&app.meta, user, pw, &client).await
                }
            }
            Some("refresh_token") => {
                let Some(rt) = get("refresh_token") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                    );
                };
                match app.auth.keys_for(&app.meta, rt).await {
                    Err(e) => Err(AuthFailure::Metadata(e)),
                    Ok(keys) => match keys.verify(rt, TokenUse::Refresh) {
                        Ok(claims) => app.auth.principal(&app.meta, &claims.sub).await,
                        Err(_) => Err(AuthFailure::BadCredentials),
                    },
                }
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "grant_type must be password or refresh_token",
                );
            }
        }
    } else if let Some((user, secret)) = one_time_basic(&headers) {
        app.auth
            .redeem_one_time(&app.meta, &user, &secret, &client)
            .await
    } else {
        match app.auth.identify(&app.meta, &headers, client.clone()).await {
            Ok(c) => Ok(c.principal),
            Err(e) => Err(e),
        }
    };
    let principal = match principal {
        Ok(p) => p,
        Err(AuthFailure::BadCredentials) => {
            let mut resp = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                "invalid credentials",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"berth\""),
            );
            return resp;
        }
        Err(e) => return e.into_response(),
    };
    let caller = Caller {
        principal,
        token: None,
        client: client.clone(),
        open: app.auth.is_open(),
    };
    // A one-time token gets no refresh token: its access token is all it gets.
    // External identities log in again at their provider rather than refresh.
    let refresh = want_refresh
        && !caller.is_anonymous()
        && !Auth::is_one_time(caller.name())
        && !matches!(caller.principal, Principal::External(_));
    match issue(&app, &caller, scopes, refresh).await {
        Ok(body) => {
            if !caller.is_anonymous() {
                app.auth.audit.record(audit::entry(
                    caller.name(),
                    &client,
                    "login",
                    "token",
                    None,
                    AuditOutcome::Success,
                ));
            }
            Json(body).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn issue(
    app: &AppState,
    caller: &Caller,
    scopes: Vec<(RepoName, Actions)>,
    refresh: bool,
) -> Result<serde_json::Value, AuthFailure> {
    let c = caller.clone();
    let granted = app
        .meta
        .read(move |v| {
            let mut out = Vec::new();
            // Each requested repository gets every action the identity holds there:
            // never more than it holds, and enough for clients that reuse one token
            // for a pull check before a push.
            for (repo, _) in scopes {
                let got = c.actions(v, &repo)?;
                out.push(AccessClaim {
                    kind: "repository".into(),
                    name: repo.as_str().to_owned(),
                    actions: got.scope_list().into_iter().map(String::from).collect(),
                });
            }
            Ok(out)
        })
        .await?;
    let keys = app.auth.keys(&app.meta).await?;
    let ttl = app.auth.config.token_ttl.as_secs().max(1);
    let mut claims = new_claims(caller.name(), ttl, granted, TokenUse::Access);
    if let Principal::External(e) = &caller.principal {
        claims.groups = e.groups.clone();
    }
    let token = keys.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "signing a token");
        AuthFailure::Metadata(berth_consensus::ConsensusError::Malformed {
            table: "signing_keys",
        })
    })?;
    let issued_at = iso8601(claims.iat);
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": issued_at,
    });
    if refresh {
        let r = new_claims(
            caller.name(),
            app.auth.config.refresh_ttl.as_secs(),
            Vec::new(),
            TokenUse::Refresh,
        );
        if let Ok(rt) = keys.sign(&r) {
            body["refresh_token"] = json!(rt);
        }
    }
    Ok(body)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_fails() {
        let keys = Keys::from_records(&[generate_key(1)]).unwrap();
        let claims = new_claims(
            "alice",
            60,
            vec![AccessClaim {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
            TokenUse::Access,
        );
        let t = keys.sign(&claims).unwrap();
        let back = keys.verify(&t, TokenUse::Access).unwrap();
        assert_eq!(back.sub, "alice");
        let repo: RepoName = "team/app".parse().unwrap();
        assert_eq!(claimed(&back.access, &repo), Actions::PULL);
        assert!(keys.verify(&t, TokenUse::Refresh).is_err());

        // Another payload under the same signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let forged = new_claims("mallory", 60, Vec::new(), TokenUse::Access);
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&forged).unwrap(),
        );
        assert!(keys.verify(&parts.join("."), TokenUse::Access).is_err());

        // Another key's token.
        let other = Keys::from_records(&[generate_key(2)]).unwrap();
        assert!(other.verify(&t, TokenUse::Access).is_err());

        // Expired.
        let mut old = claims.clone();
        old.exp = old.iat - 10;
        old.nbf = old.iat - 20;
        assert!(
            keys.verify(&keys.sign(&old).unwrap(), TokenUse::Access)
                .is_err()
        );
    }

    #[test]
    fn scopes_parse() {
        let s = parse_scopes([
            "repository:team/app:pull,push",
            "repository:a/b:pull repository:Bad:pull registry:catalog:*",
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0.as_str(), "team/app");
        assert!(s[0].1.push && !s[0].1.delete);
        assert_eq!(s[1].0.as_str(), "a/b");
    }

    #[test]
    fn forms_decode() {
        assert_eq!(
            form_pairs("a=b+c&scope=repository%3Ax%3Apull&e"),
            vec![
                ("a".into(), "b c".into()),
                ("scope".into(), "repository:x:pull".into()),
                ("e".into(), "".into())
            ]
        );
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
