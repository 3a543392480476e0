//! The access token's claims, shared by the issuer (user-service) and the verifier (the edge
//! gateway). Tokens are EdDSA (Ed25519) JWTs with `kid` in the header.

use serde::{Deserialize, Serialize};

pub const DEFAULT_ISSUER: &str = "https://ordermesh.local";
pub const DEFAULT_AUDIENCE: &str = "ordermesh";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub roles: Vec<String>,
    /// The session the token was issued for (tokens from before sessions were named have
    /// none), so ending the session can end its access tokens too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
}
