//! Refresh tokens: `<session id>.<secret>`, opaque to clients. Only a SHA-256 of the secret is
//! stored. Every use rotates the secret; presenting an already-rotated secret means the token
//! leaked, so the whole session is revoked.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How many rotated secrets a session remembers to detect reuse.
pub const REMEMBERED: usize = 8;

pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of two secret hashes.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn format_token(session_id: &str, secret: &str) -> String {
    format!("{session_id}.{secret}")
}

/// Splits a token into session id and secret, if it has the right shape.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let uuid_like = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let secret_ok = secret.len() == 43
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (uuid_like && secret_ok).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_garbage_does_not() {
        let id = uuid::Uuid::now_v7().to_string();
        let secret = new_secret();
        let token = format_token(&id, &secret);
        assert_eq!(parse_token(&token), Some((id.as_str(), secret.as_str())));
        for bad in [
            "",
            "x.y",
            &format!("{id}."),
            &format!(".{secret}"),
            &format!("{id}.{secret}x"),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
        assert!(same_hash(&hash_secret(&secret), &hash_secret(&secret)));
        assert!(!same_hash(&hash_secret(&secret), &hash_secret("other")));
    }
}
