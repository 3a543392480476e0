//! Password reset tokens: single use, valid for [`TOKEN_TTL`], stored only as a SHA-256 hash
//! (the raw token goes out once, in the reset email, through notification-service), and a
//! per-account throttle on how many are sent.
//!
//! A token is refused once its account's password changed after it was issued (a reset or a
//! change through the app), so only the newest request's link can still work.

use std::time::Duration;

use ordermesh_platform::clock::{unix_millis, unix_seconds};
use ordermesh_platform::store::{Condition, NewItem, StoreError, Table, Write};
use prost::Message;

use crate::sessions::{hash_secret, new_secret};

pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// Reset emails an account may be sent within [`THROTTLE_WINDOW`].
pub const MAX_REQUESTS: u32 = 3;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);

const TOKENS: &str = "password-reset";
const THROTTLE: &str = "password-reset-requests";
/// Prefix of every reset token, so a leaked one is recognisable.
const TOKEN_PREFIX: &str = "omr_";

#[derive(Clone, PartialEq, Message)]
struct StoredToken {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(int64, tag = "2")]
    issued_ms: i64,
    #[prost(int64, tag = "3")]
    expires_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Requests {
    #[prost(uint32, tag = "1")]
    count: u32,
    #[prost(int64, tag = "2")]
    window_start_ms: i64,
}

/// A token that was found and may be used.
pub struct ValidToken {
    pub user_id: String,
    pub issued_ms: i64,
    /// The write that consumes the token; put it in the batch that sets the password, so the
    /// token is used exactly once.
    pub consume: Write,
}

#[derive(Clone)]
pub struct PasswordResets {
    table: Table,
}

impl PasswordResets {
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    /// Counts a reset request for `user_id`; false once the account had [`MAX_REQUESTS`] in
    /// the current window (the request is then dropped, silently to the caller).
    pub async fn admit(&self, user_id: &str) -> Result<bool, StoreError> {
        let now = unix_millis();
        for _ in 0..4 {
            let current = self.table.get(THROTTLE, user_id).await?;
            let (mut requests, condition) = match &current {
                Some(item) => (
                    Requests::decode(item.data.as_ref())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    Condition::Version(item.version),
                ),
                None => (Requests::default(), Condition::NotExists),
            };
            if now - requests.window_start_ms >= THROTTLE_WINDOW.as_millis() as i64 {
                requests = Requests {
                    count: 0,
                    window_start_ms: now,
                };
            }
            if requests.count >= MAX_REQUESTS {
                return Ok(false);
            }
            requests.count += 1;
            let expires =
                (requests.window_start_ms + THROTTLE_WINDOW.as_millis() as i64) / 1000 + 1;
            let item =
                NewItem::new(THROTTLE, user_id, requests.encode_to_vec()).expiring_at(expires);
            match self.table.put(item, condition).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// A new token for `user_id`: the raw token (for the email only) and the write that
    /// stores its hash; put the write in the batch that records the request.
    pub fn issue(&self, user_id: &str) -> (String, Write) {
        let token = format!("{TOKEN_PREFIX}{}", new_secret());
        let now = unix_millis();
        let stored = StoredToken {
            user_id: user_id.to_string(),
            issued_ms: now,
            expires_ms: now + TOKEN_TTL.as_millis() as i64,
        };
        let item = NewItem::new(TOKENS, key(&token), stored.encode_to_vec())
            .expiring_at(unix_seconds() + TOKEN_TTL.as_secs() as i64 + 1);
        (token, Write::put(item, Condition::NotExists))
    }

    /// The token's account, if the token exists, is unused and has not expired.
    pub async fn find(&self, token: &str) -> Result<Option<ValidToken>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let k = key(token);
        let Some(item) = self.table.get(TOKENS, &k).await? else {
            return Ok(None);
        };
        let stored = StoredToken::decode(item.data.as_ref())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if stored.expires_ms <= unix_millis() {
            return Ok(None);
        }
        Ok(Some(ValidToken {
            user_id: stored.user_id,
            issued_ms: stored.issued_ms,
            consume: Write::Delete {
                pk: TOKENS.into(),
                sk: k,
                condition: Condition::Version(item.version),
            },
        }))
    }
}

/// The stored key: the token's SHA-256, so the table never holds a usable token.
fn key(token: &str) -> String {
    hex::encode(hash_secret(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn resets() -> (PasswordResets, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = ordermesh_platform::store::schema::StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        };
        let table = config
            .open(ordermesh_platform::store::schema::USERS)
            .await
            .unwrap();
        (PasswordResets::new(table), dir)
    }

    #[tokio::test]
    async fn a_token_is_found_by_itself_only_and_is_stored_hashed() {
        let (resets, _dir) = resets().await;
        let (token, write) = resets.issue("u1");
        assert!(token.starts_with(TOKEN_PREFIX));
        let (_, sk) = write.keys();
        assert!(
            !sk.contains(&token[TOKEN_PREFIX.len()..]),
            "stored in the clear"
        );
        resets.table.write(vec![write]).await.unwrap();
        let found = resets.find(&token).await.unwrap().expect("found");
        assert_eq!(found.user_id, "u1");
        assert!(resets.find(&format!("{token}x")).await.unwrap().is_none());
        assert!(resets.find("omr_unknown").await.unwrap().is_none());
        assert!(resets.find("no-prefix").await.unwrap().is_none());
        // Consumed once: the second consume finds nothing to consume.
        resets.table.write(vec![found.consume]).await.unwrap();
        assert!(resets.find(&token).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_account_gets_a_bounded_number_of_requests_per_window() {
        let (resets, _dir) = resets().await;
        for _ in 0..MAX_REQUESTS {
            assert!(resets.admit("u1").await.unwrap());
        }
        assert!(!resets.admit("u1").await.unwrap());
        assert!(resets.admit("u2").await.unwrap(), "counted per account");
    }
}
