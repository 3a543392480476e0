//! Access tokens: short-lived EdDSA JWTs naming the user, their roles and their session,
//! signed with the current key; the public keys as a JWKS; and the lifetimes of both tokens.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::user::{Jwks, TokenPair};
use ordermesh_platform::clock::unix_seconds;
use ordermesh_platform::jwt::AccessClaims;

use crate::error::UserError;
use crate::keys::SigningKeys;
use crate::sessions;
use crate::store::UserRecord;

/// Token lifetimes and the claims that bind a token to this deployment.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long after a refresh the token it replaced may be presented again and get the same
    /// new pair back (a client retrying on a flaky network) instead of revoking the session.
    pub refresh_reuse_grace: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: ordermesh_platform::jwt::DEFAULT_ISSUER.into(),
            audience: ordermesh_platform::jwt::DEFAULT_AUDIENCE.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(5),
        }
    }
}

pub struct Tokens {
    keys: Arc<SigningKeys>,
    pub config: TokenConfig,
}

impl Tokens {
    pub fn new(keys: Arc<SigningKeys>, config: TokenConfig) -> Self {
        Self { keys, config }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    pub fn jwks(&self) -> Jwks {
        self.keys.jwks()
    }

    /// An access token for `user` in session `session_id`, and its lifetime in seconds.
    pub fn access(&self, user: &UserRecord, session_id: &str) -> Result<(String, i64), UserError> {
        let iat = unix_seconds();
        let ttl = self.config.access_ttl.as_secs() as i64;
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.id.clone(),
            exp: iat + ttl,
            iat,
            nbf: iat,
            jti: uuid::Uuid::now_v7().to_string(),
            roles: user.roles.clone(),
            sid: session_id.to_string(),
        };
        let token = self.keys.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing an access token failed");
            UserError::Internal("cannot issue a token")
        })?;
        Ok((token, ttl))
    }

    /// A fresh access token and the refresh token `secret` of session `session_id`.
    pub fn pair(
        &self,
        user: &UserRecord,
        session_id: &str,
        secret: &str,
    ) -> Result<TokenPair, UserError> {
        let (access_token, expires_in) = self.access(user, session_id)?;
        Ok(TokenPair {
            access_token,
            refresh_token: sessions::format_token(session_id, secret),
            token_type: "Bearer".into(),
            expires_in,
        })
    }
}
