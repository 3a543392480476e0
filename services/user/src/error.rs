//! What can go wrong in user-service's domain, mapped to a gRPC status once (in `grpc.rs`).

use std::time::Duration;

use ordermesh_platform::status::Violations;
use ordermesh_platform::store::StoreError;

use crate::store::UserStoreError;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the request is invalid")]
    Invalid(Violations),
    #[error("invalid email or password")]
    BadCredentials,
    /// Too many failed sign-ins for the account: try again after the wait.
    #[error("too many failed sign-ins for this account")]
    Throttled(Duration),
    /// A refresh token or session that cannot be used, and why.
    #[error("{0}")]
    Session(&'static str),
    #[error("user not found")]
    NotFound,
    #[error("API key not found")]
    ApiKeyNotFound,
    /// A per-account limit (API keys held).
    #[error("{0}")]
    LimitReached(String),
    #[error("the session changed while refreshing; try again")]
    Raced,
    #[error("{0}")]
    Internal(&'static str),
    #[error("shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] UserStoreError),
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.into())
    }
}

impl UserError {
    /// One invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        let mut v = Violations::new();
        v.add(field, description);
        Self::Invalid(v)
    }
}

/// `Ok` when nothing was wrong, else every violation.
pub fn checked(v: Violations) -> Result<(), UserError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(UserError::Invalid(v))
    }
}
