//! API keys at the gateway: `X-API-Key: omk_…` or `Authorization: ApiKey omk_…`, resolved to
//! their owner, roles and scopes by user-service and remembered for [`REMEMBER`], so a busy
//! integration costs no round trip per request. A revoked key is refused as soon as the
//! revocation feed brings it (about a second, the same poll as access tokens); an expired one
//! at its expiry. The cache is keyed by the key's SHA-256, never the key itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordermesh_contracts::user::VerifiedApiKey;
use sha2::{Digest, Sha256};

/// How long a resolved key is used without asking again; also how stale its roles may be.
pub const REMEMBER: Duration = Duration::from_secs(30);
const CAPACITY: usize = 10_000;

/// The API key a request carries, if any.
pub fn presented(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok().map(str::trim);
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim())
}

type Digest32 = [u8; 32];

#[derive(Default)]
pub struct ResolvedKeys {
    entries: Mutex<HashMap<Digest32, (Arc<VerifiedApiKey>, Instant)>>,
}

fn digest(key: &str) -> Digest32 {
    Sha256::digest(key.as_bytes()).into()
}

impl ResolvedKeys {
    /// A key resolved less than [`REMEMBER`] ago.
    pub fn get(&self, key: &str) -> Option<Arc<VerifiedApiKey>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&digest(key))
            .filter(|(_, at)| at.elapsed() < REMEMBER)
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: &str, verified: Arc<VerifiedApiKey>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, (_, at)| at.elapsed() < REMEMBER);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(digest(key), (verified, Instant::now()));
    }

    /// Forgets every entry of key `key_id` (revoked).
    pub fn forget(&self, key_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (v, _)| v.key_id != key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), None, "a bearer token is not a key");
        h.insert("authorization", "ApiKey omk_1_x".parse().unwrap());
        assert_eq!(presented(&h), Some("omk_1_x"));
        h.insert("x-api-key", "omk_2_y".parse().unwrap());
        assert_eq!(presented(&h), Some("omk_2_y"));
    }

    #[test]
    fn resolved_keys_are_remembered_by_digest_and_forgotten_on_revocation() {
        let keys = ResolvedKeys::default();
        let v = Arc::new(VerifiedApiKey {
            key_id: "k1".into(),
            user_id: "u1".into(),
            ..Default::default()
        });
        keys.insert("omk_k1_secret", v);
        assert_eq!(keys.get("omk_k1_secret").unwrap().user_id, "u1");
        assert!(keys.get("omk_k1_other").is_none());
        keys.forget("k1");
        assert!(keys.get("omk_k1_secret").is_none());
    }
}
