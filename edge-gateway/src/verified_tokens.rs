//! Tokens already verified. A client repeats its token on every call; a lookup is far cheaper
//! than an Ed25519 verification. Each entry leaves at its token's own expiry (the soonest to
//! expire first), and when the memory is full the entry closest to expiring makes room.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use ordermesh_platform::jwt::AccessClaims;

pub struct VerifiedTokens {
    entries: RwLock<Entries>,
    capacity: usize,
    /// Seconds a token is still honoured past `exp` (and before `nbf`).
    leeway: i64,
}

#[derive(Default)]
struct Entries {
    by_token: HashMap<Arc<str>, Arc<AccessClaims>>,
    by_expiry: BTreeSet<(i64, Arc<str>)>,
}

impl Entries {
    fn remove_first(&mut self) {
        if let Some((_, token)) = self.by_expiry.pop_first() {
            self.by_token.remove(&token);
        }
    }
}

impl VerifiedTokens {
    pub fn new(capacity: usize, leeway: i64) -> Self {
        Self {
            entries: RwLock::new(Entries::default()),
            capacity: capacity.max(1),
            leeway,
        }
    }

    /// The claims of `token` if it was verified before and its `exp` and `nbf` hold at `now`.
    pub fn get(&self, token: &str, now: i64) -> Option<Arc<AccessClaims>> {
        let entries = self.entries.read().ok()?;
        let claims = entries.by_token.get(token)?;
        (claims.exp + self.leeway >= now && claims.nbf - self.leeway <= now).then(|| claims.clone())
    }

    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>, now: i64) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        while entries
            .by_expiry
            .first()
            .is_some_and(|(exp, _)| exp + self.leeway < now)
        {
            entries.remove_first();
        }
        if entries.by_token.contains_key(token) {
            return;
        }
        while entries.by_token.len() >= self.capacity {
            entries.remove_first();
        }
        let token: Arc<str> = Arc::from(token);
        entries.by_expiry.insert((claims.exp, token.clone()));
        entries.by_token.insert(token, claims);
    }

    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.by_token.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            exp,
            nbf: 0,
            ..Default::default()
        })
    }

    #[test]
    fn entries_leave_one_by_one_at_their_own_expiry() {
        let cache = VerifiedTokens::new(10, 30);
        cache.insert("a", claims(100), 0);
        cache.insert("b", claims(200), 0);
        assert!(cache.get("a", 120).is_some(), "within the leeway");
        assert!(cache.get("a", 131).is_none(), "expired");
        // The next insert sweeps what expired, and only that.
        cache.insert("c", claims(300), 131);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b", 131).is_some());
        assert!(cache.get("c", 131).is_some());
    }

    #[test]
    fn when_full_the_soonest_to_expire_makes_room() {
        let cache = VerifiedTokens::new(2, 0);
        cache.insert("late", claims(500), 0);
        cache.insert("soon", claims(100), 0);
        cache.insert("new", claims(300), 0);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("soon", 0).is_none());
        assert!(cache.get("late", 0).is_some() && cache.get("new", 0).is_some());
        // Inserting a token already held changes nothing.
        cache.insert("new", claims(300), 0);
        assert_eq!(cache.len(), 2);
    }
}
