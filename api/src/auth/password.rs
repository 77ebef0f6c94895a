//! Password and robot-secret hashing with argon2id, stored as PHC strings
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`, unpadded base64). Hashing and
//! verifying run on the blocking pool: each costs tens of milliseconds by design.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;

/// Bytes of salt per hash.
const SALT_BYTES: usize = 16;
/// Bytes of hash output.
const HASH_BYTES: usize = 32;
/// The most memory (KiB) a stored hash may ask a verification to use.
const MEMORY_KIB_MAX: u32 = 256 * 1024;
/// The most passes a stored hash may ask for.
const PASSES_MAX: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("hashing task failed")]
    Task,
}

fn params() -> Params {
    Params::default()
}

fn argon(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt (blocking).
pub fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let salt: [u8; SALT_BYTES] = rand::random();
    let p = params();
    let mut out = [0u8; HASH_BYTES];
    argon(p.clone())
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| PasswordError::Argon2(e.to_string()))?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost(),
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Whether `password` matches the PHC string `phc` (blocking). A malformed or
/// unreasonably expensive hash never matches.
pub fn verify_blocking(password: &str, phc: &str) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", costs, salt, hash] = parts.as_slice() else {
        return false;
    };
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for kv in costs.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse::<u32>().ok(),
            Some(("t", v)) => t = v.parse::<u32>().ok(),
            Some(("p", v)) => p = v.parse::<u32>().ok(),
            _ => return false,
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return false;
    };
    if m > MEMORY_KIB_MAX || t > PASSES_MAX || p > 16 {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(hash)) else {
        return false;
    };
    if expected.is_empty() || expected.len() > 64 {
        return false;
    }
    let Ok(params) = Params::new(m, t, p, Some(expected.len())) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if argon(params)
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .is_err()
    {
        return false;
    }
    // Constant time: every byte is compared.
    out.iter()
        .zip(&expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// [`hash_blocking`] on the blocking pool.
pub async fn hash(password: &str) -> Result<String, PasswordError> {
    let p = password.to_owned();
    tokio::task::spawn_blocking(move || hash_blocking(&p))
        .await
        .map_err(|_| PasswordError::Task)?
}

/// [`verify_blocking`] on the blocking pool.
pub async fn verify(password: &str, phc: &str) -> bool {
    let (p, h) = (password.to_owned(), phc.to_owned());
    tokio::task::spawn_blocking(move || verify_blocking(&p, &h))
        .await
        .unwrap_or(false)
}

/// Spends the time of one verification, so unknown accounts answer as slowly as
/// known ones.
pub async fn burn(password: &str) {
    let p = password.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        let mut out = [0u8; HASH_BYTES];
        let _ = argon(params()).hash_password_into(p.as_bytes(), &[0u8; SALT_BYTES], &mut out);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_blocking("correct horse").unwrap();
        let b = hash_blocking("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$v=19$"));
        assert!(verify_blocking("correct horse", &a));
        assert!(!verify_blocking("correct hors", &a));
        assert!(!verify_blocking("correct horse", "not a hash"));
        let expensive = a.replacen("m=19456", "m=999999999", 1);
        assert!(!verify_blocking("correct horse", &expensive));
    }
}
