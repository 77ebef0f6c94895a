//! One-time tokens and signing-key rotation. A one-time token is redeemed once, at
//! the token service, through a Raft command (so two nodes cannot both accept it);
//! the access token issued for it then lets a single CI push finish, and its identity
//! stays valid for one access-token lifetime after the redemption. A rotation stores
//! a new signing key that signs from then on, while the keys before it still verify
//! until the overlap ends; [`Auth::rotate_keys_if_due`] is the periodic rotation the
//! leader runs.

use std::time::Duration;

use berth_consensus::tenancy::{
    AuditOutcome, ONE_TIME_PREFIX, OneTimeTokenRecord, RobotRecord, SigningKeyRecord,
    TenancyCommand, TenancyOutcome, TenancyRejection,
};
use berth_consensus::{CommandV1, ConsensusError, Metadata, Outcome};

use super::{Auth, AuthFailure, Principal, audit, password, token};
use crate::uploads::now_ms;

/// The one-time token as the robot it acts as while its push runs: its one grant,
/// expiring one access-token lifetime after the redemption.
fn as_robot(t: &OneTimeTokenRecord, redeemed_at_ms: u64, session: Duration) -> RobotRecord {
    RobotRecord {
        name: t.name.clone(),
        project: Some(t.project.clone()),
        secret_hash: String::new(),
        grants: vec![t.grant()],
        expires_at_ms: Some(redeemed_at_ms.saturating_add(session.as_millis() as u64)),
        created_at_ms: t.created_at_ms,
        created_by: t.created_by.clone(),
    }
}

impl Auth {
    /// Whether `name` names a one-time token.
    pub fn is_one_time(name: &str) -> bool {
        name.starts_with(ONE_TIME_PREFIX)
    }

    /// The identity behind an access token issued for a one-time token: valid only
    /// after the redemption and for one access-token lifetime.
    pub(super) async fn one_time_principal(
        &self,
        meta: &Metadata,
        name: &str,
    ) -> Result<Principal, AuthFailure> {
        let n = name.to_owned();
        let Some(t) = meta.read(move |v| v.one_time_token(&n)).await? else {
            return Err(AuthFailure::BadCredentials);
        };
        let Some(at) = t.redeemed_at_ms else {
            return Err(AuthFailure::BadCredentials);
        };
        let robot = as_robot(&t, at, self.config.token_ttl);
        if robot.expired(now_ms()) {
            return Err(AuthFailure::BadCredentials);
        }
        Ok(Principal::Robot(robot))
    }

    /// Exchanges a one-time token's secret, once: checks the secret, then redeems the
    /// token through Raft. A wrong secret, an unknown, expired or already redeemed
    /// token is `BadCredentials` (and an audited, throttled failure).
    pub async fn redeem_one_time(
        &self,
        meta: &Metadata,
        name: &str,
        secret: &str,
        client: &str,
    ) -> Result<Principal, AuthFailure> {
        if let Some(wait) = self.limits.login_blocked(client, name) {
            return Err(AuthFailure::Throttled { retry_after: wait });
        }
        let n = name.to_owned();
        let found = meta.read(move |v| v.one_time_token(&n)).await?;
        let now = now_ms();
        let verdict = match &found {
            None => {
                password::burn(secret).await;
                Err("unknown one-time token")
            }
            Some(t) => {
                if !password::verify(secret, &t.secret_hash).await {
                    Err("wrong one-time secret")
                } else if t.redeemed_at_ms.is_some() {
                    Err("one-time token already used")
                } else if now >= t.expires_at_ms {
                    Err("one-time token expired")
                } else {
                    let cmd = TenancyCommand::RedeemOneTimeToken {
                        name: name.to_owned(),
                        at_ms: now,
                    };
                    match meta.propose(CommandV1::Tenancy(cmd)).await? {
                        Outcome::Tenancy(TenancyOutcome::Done) => Ok(()),
                        Outcome::Tenancy(TenancyOutcome::Rejected(
                            TenancyRejection::AlreadyUsed,
                        )) => Err("one-time token already used"),
                        Outcome::Tenancy(TenancyOutcome::Rejected(TenancyRejection::Expired)) => {
                            Err("one-time token expired")
                        }
                        _ => Err("unknown one-time token"),
                    }
                }
            }
        };
        match (verdict, found) {
            (Ok(()), Some(t)) => Ok(Principal::Robot(as_robot(&t, now, self.config.token_ttl))),
            (verdict, _) => {
                let why = verdict.err().unwrap_or("unknown one-time token");
                tracing::info!(name, client, why, "one-time token refused");
                self.limits.login_failed(client, name);
                self.audit.record(audit::entry(
                    name,
                    client,
                    "auth-failure",
                    "one-time-token",
                    None,
                    AuditOutcome::Denied,
                ));
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    /// Rotates the signing key: a fresh key signs from now on; the keys in force
    /// until now verify for `overlap` more. Returns the new key's id.
    pub async fn rotate_keys(
        &self,
        meta: &Metadata,
        overlap: Duration,
    ) -> Result<String, ConsensusError> {
        let now = now_ms();
        let key: SigningKeyRecord = token::generate_key(now);
        let cmd = TenancyCommand::RotateSigningKey {
            key,
            retire_previous_at_ms: now.saturating_add(overlap.as_millis() as u64),
        };
        let kid = match meta.propose(CommandV1::Tenancy(cmd)).await? {
            Outcome::Tenancy(TenancyOutcome::SigningKey(k)) => k.kid,
            _ => {
                return Err(ConsensusError::Malformed {
                    table: "signing_keys",
                });
            }
        };
        self.reload_keys(meta).await?;
        Ok(kid)
    }

    /// Rotates the signing key if the key that signs is at least `period` old: the new
    /// key signs from now on, the previous ones verify for `overlap` more. The command
    /// names the key it replaces, so a rotation another leader already made for it is
    /// not repeated. Returns the new key id, or `None` when nothing was due or done.
    pub async fn rotate_keys_if_due(
        &self,
        meta: &Metadata,
        period: Duration,
        overlap: Duration,
    ) -> Result<Option<String>, ConsensusError> {
        let records = meta.read(|v| v.signing_keys_with_retirement()).await?;
        let Some(current) = records
            .into_iter()
            .filter(|(_, retires)| retires.is_none())
            .map(|(k, _)| k)
            .max_by_key(|k| k.created_at_ms)
        else {
            return Ok(None);
        };
        let now = now_ms();
        if now.saturating_sub(current.created_at_ms) < period.as_millis() as u64 {
            return Ok(None);
        }
        let cmd = TenancyCommand::RotateSigningKeyFrom {
            expected_kid: current.kid,
            key: token::generate_key(now),
            retire_previous_at_ms: now.saturating_add(overlap.as_millis() as u64),
        };
        let kid = match meta.propose(CommandV1::Tenancy(cmd)).await? {
            Outcome::Tenancy(TenancyOutcome::SigningKey(k)) => Some(k.kid),
            Outcome::Tenancy(TenancyOutcome::Exists) => None,
            _ => {
                return Err(ConsensusError::Malformed {
                    table: "signing_keys",
                });
            }
        };
        self.reload_keys(meta).await?;
        Ok(kid)
    }
}
