//! Refresh tokens: `<session id>.<secret>`, opaque to clients. Only a SHA-256 of the secret is
//! stored. Every use rotates the secret; presenting an already-rotated secret means the token
//! leaked, so the whole session is revoked.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use ordermesh_contracts::user::TokenPair;
use ordermesh_contracts::user::revocation::Kind;
use ordermesh_platform::clock::{unix_millis, unix_seconds};
use ordermesh_platform::outbox::Outbox;

use crate::error::UserError;
use crate::revocations;
use crate::store::{SessionRecord, UserRecord, UserStore, UserStoreError};
use crate::tokens::Tokens;

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

/// When session `id` was opened (its id is a UUIDv7), in unix ms; 0 if it is not one.
fn opened_ms(id: &str) -> i64 {
    uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map_or(0, |t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
}

/// Sessions: opened at sign-in, rotated at each refresh, ended at logout or when a rotated
/// token comes back (it leaked). Ending one also revokes its access tokens at the gateway.
#[derive(Clone)]
pub struct Sessions {
    store: UserStore,
    outbox: Outbox,
    tokens: Arc<Tokens>,
}

impl Sessions {
    pub fn new(store: UserStore, outbox: Outbox, tokens: Arc<Tokens>) -> Self {
        Self {
            store,
            outbox,
            tokens,
        }
    }

    /// A new session for `user`, recorded for audit as `action`, and its token pair.
    pub async fn open(&self, user: &UserRecord, action: &str) -> Result<TokenPair, UserError> {
        let session_id = uuid::Uuid::now_v7().to_string();
        let secret = new_secret();
        let session = SessionRecord {
            user_id: user.id.clone(),
            current_hash: hash_secret(&secret),
            previous_hashes: vec![],
            revoked: false,
            expires_at: unix_seconds() + self.tokens.config.refresh_ttl.as_secs() as i64,
            rotated_at_ms: 0,
        };
        let who = format!("users/{}", user.id);
        let event = self.outbox.event(&who, action, &who);
        self.outbox
            .commit(
                self.store
                    .create_session(&session_id, &session, self.outbox.writes(event)),
            )
            .await?;
        self.tokens.pair(user, &session_id, &secret)
    }

    /// The session a refresh token names, if the token is well formed and the session live.
    async fn live(&self, token: &str) -> Result<(String, String, SessionRecord, u64), UserError> {
        if token.is_empty() {
            return Err(UserError::invalid("refresh_token", "is required"));
        }
        let (id, secret) =
            parse_token(token).ok_or(UserError::Session("malformed refresh token"))?;
        let (session, version) = self
            .store
            .session(id)
            .await?
            .filter(|(s, _)| !s.revoked)
            .ok_or(UserError::Session("refresh token is expired or revoked"))?;
        Ok((id.to_string(), secret.to_string(), session, version))
    }

    /// A new pair for session `id` of `user_id`, whose next refresh secret is `secret`,
    /// unless the session began before the account ended its sessions (a password change).
    async fn pair_for(
        &self,
        user_id: &str,
        id: &str,
        secret: &str,
    ) -> Result<TokenPair, UserError> {
        let (user, _) = self
            .store
            .get(user_id)
            .await?
            .ok_or(UserError::Session("the account no longer exists"))?;
        if opened_ms(id) < user.sessions_not_before_ms {
            return Err(UserError::Session("refresh token is expired or revoked"));
        }
        self.tokens.pair(&user, id, secret)
    }

    /// Marks a session revoked and, in the same write, records `action` for the audit trail
    /// and a revocation the gateway follows, so the session's access tokens stop too.
    async fn end(
        &self,
        id: &str,
        session: &mut SessionRecord,
        version: u64,
        action: &str,
    ) -> Result<(), UserStoreError> {
        session.revoked = true;
        let user = format!("users/{}", session.user_id);
        let event = self.outbox.event(&user, action, &user);
        let ended = revocations::write(Kind::Session, id, self.tokens.config.access_ttl);
        self.outbox
            .commit(self.store.update_session(
                id,
                session,
                version,
                [self.outbox.writes(event), vec![ended]].concat(),
            ))
            .await
    }

    /// Rotates the session's refresh token. The token just replaced, presented again within
    /// the grace period, gets the same new pair (its answer was lost on the way); an older
    /// rotated token means the token leaked, and ends the session.
    pub async fn refresh(&self, token: &str) -> Result<TokenPair, UserError> {
        // Two rounds at most: a refresh that loses a race with a parallel one using the same
        // token reads the session again and is answered as a retry.
        for _ in 0..2 {
            let (id, secret, mut session, version) = self.live(token).await?;
            let presented = hash_secret(&secret);
            let next = self.tokens.keys().next_refresh_secret(&id, &secret);
            if same_hash(&presented, &session.current_hash) {
                let previous = std::mem::replace(&mut session.current_hash, hash_secret(&next));
                session.previous_hashes.insert(0, previous);
                session.previous_hashes.truncate(REMEMBERED);
                session.rotated_at_ms = unix_millis();
                match self
                    .store
                    .update_session(&id, &session, version, vec![])
                    .await
                {
                    Ok(()) => return self.pair_for(&session.user_id, &id, &next).await,
                    Err(UserStoreError::Concurrent) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let just_replaced = session
                .previous_hashes
                .first()
                .is_some_and(|h| same_hash(&presented, h));
            let within_grace = unix_millis().saturating_sub(session.rotated_at_ms)
                <= self.tokens.config.refresh_reuse_grace.as_millis() as i64;
            if just_replaced
                && within_grace
                && same_hash(&hash_secret(&next), &session.current_hash)
            {
                return self.pair_for(&session.user_id, &id, &next).await;
            }
            if session
                .previous_hashes
                .iter()
                .any(|h| same_hash(&presented, h))
            {
                match self
                    .end(&id, &mut session, version, "user.session_revoked")
                    .await
                {
                    Ok(()) => {}
                    Err(UserStoreError::Concurrent) => continue,
                    Err(e) => return Err(e.into()),
                }
                tracing::warn!(user = %session.user_id, "refresh token reuse: session revoked");
                return Err(UserError::Session(
                    "refresh token reuse detected; the session is revoked",
                ));
            }
            return Err(UserError::Session("invalid refresh token"));
        }
        Err(UserError::Raced)
    }

    /// Ends the session a refresh token (current or recently rotated) names.
    pub async fn logout(&self, token: &str) -> Result<(), UserError> {
        let (id, secret, mut session, version) = self.live(token).await?;
        let presented = hash_secret(&secret);
        let known = same_hash(&presented, &session.current_hash)
            || session
                .previous_hashes
                .iter()
                .any(|h| same_hash(&presented, h));
        if !known {
            return Err(UserError::Session("invalid refresh token"));
        }
        self.end(&id, &mut session, version, "user.logged_out")
            .await?;
        Ok(())
    }
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
