//! What the gateway knows of revoked access tokens: sessions ended (logout, refresh-token
//! reuse) and users whose earlier tokens stop counting (a role change). It follows
//! user-service's revocation feed every second or so, so a revoked token is refused within
//! about that long, with no call per request. Entries are dropped once every token they could
//! concern has expired on its own. While user-service is away the last known list still holds.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use ordermesh_contracts::user::Revocation;
use ordermesh_contracts::user::revocation::Kind;
use ordermesh_platform::jwt::AccessClaims;

/// Longer than any access token lives, plus clock leeway.
const REMEMBER: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Default)]
struct Known {
    /// Ended session id → when it was ended (unix ms).
    sessions: HashMap<String, i64>,
    /// User id → tokens issued before this (unix ms) no longer count.
    not_before: HashMap<String, i64>,
    /// Revoked API key id → when (unix ms).
    api_keys: HashMap<String, i64>,
    cursor: String,
}

#[derive(Debug, Default)]
pub struct RevocationList {
    known: RwLock<Known>,
}

use ordermesh_platform::clock::unix_millis as now_ms;

/// When a token was issued, to the millisecond: from its UUIDv7 `jti` when it has one (the
/// `iat` claim has whole seconds only, and a role change and a new token often share one).
fn issued_ms(claims: &AccessClaims) -> i64 {
    uuid::Uuid::parse_str(&claims.jti)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(claims.iat * 1000)
}

impl RevocationList {
    /// Where the feed continues.
    pub fn cursor(&self) -> String {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cursor
            .clone()
    }

    /// Takes in a page of the feed and the cursor after it; forgets what no token can need.
    pub fn apply(&self, revocations: &[Revocation], cursor: String) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        for r in revocations {
            let at = ordermesh_platform::clock::millis_of(r.time.as_ref());
            match Kind::try_from(r.kind) {
                Ok(Kind::Session) => {
                    known.sessions.insert(r.subject.clone(), at);
                }
                Ok(Kind::User) => {
                    let entry = known.not_before.entry(r.subject.clone()).or_insert(at);
                    *entry = (*entry).max(at);
                }
                Ok(Kind::ApiKey) => {
                    known.api_keys.insert(r.subject.clone(), at);
                }
                _ => {}
            }
        }
        known.cursor = cursor;
        let horizon = now_ms() - REMEMBER.as_millis() as i64;
        known.sessions.retain(|_, at| *at > horizon);
        known.not_before.retain(|_, at| *at > horizon);
        // A revoked key is also unknown to user-service, so no cached answer about it
        // outlives this horizon (the gateway caches keys for far less).
        known.api_keys.retain(|_, at| *at > horizon);
    }

    /// Whether API key `key_id` was revoked.
    pub fn key_revoked(&self, key_id: &str) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.api_keys.contains_key(key_id)
    }

    /// Why `claims` no longer count, if they don't.
    pub fn refuses(&self, claims: &AccessClaims) -> Option<&'static str> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        if !claims.sid.is_empty() && known.sessions.contains_key(&claims.sid) {
            return Some("the session has ended");
        }
        if known
            .not_before
            .get(&claims.sub)
            .is_some_and(|nb| issued_ms(claims) < *nb)
        {
            return Some("the token was issued before the account changed");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, sid: &str) -> AccessClaims {
        let now = now_ms() / 1000;
        AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: sub.into(),
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7().to_string(),
            roles: vec!["user".into()],
            sid: sid.into(),
        }
    }

    fn at(kind: Kind, subject: &str, ms: i64) -> Revocation {
        Revocation {
            kind: kind as i32,
            subject: subject.into(),
            time: Some(prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
        }
    }

    #[test]
    fn ended_sessions_and_older_tokens_are_refused() {
        let list = RevocationList::default();
        let before = claims("u1", "s1");
        std::thread::sleep(Duration::from_millis(5));
        let now = now_ms();
        std::thread::sleep(Duration::from_millis(5));
        let after = claims("u1", "s2");
        list.apply(
            &[at(Kind::Session, "s9", now), at(Kind::User, "u1", now)],
            "c1".into(),
        );
        assert_eq!(list.cursor(), "c1");
        assert!(list.refuses(&claims("u2", "s9")).is_some(), "ended session");
        assert!(list.refuses(&before).is_some(), "issued before the change");
        assert!(list.refuses(&after).is_none(), "issued after the change");
        assert!(list.refuses(&claims("u3", "s3")).is_none());
    }

    #[test]
    fn entries_older_than_any_token_are_forgotten() {
        let list = RevocationList::default();
        let old = now_ms() - REMEMBER.as_millis() as i64 - 1000;
        list.apply(&[at(Kind::Session, "s1", old)], "c".into());
        assert!(list.refuses(&claims("u", "s1")).is_none());
    }
}
