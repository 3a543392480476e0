//! Bearer tokens: EdDSA JWTs verified against user-service's JWKS. Keys are cached and
//! refreshed when a token names an unknown `kid` (at most every few seconds) or when the cache
//! is old, so key rotation needs no restart. The algorithm is pinned to EdDSA: `none`, HMAC
//! and anything else are refused before a key is even looked up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ordermesh_contracts::user::user_service_client::UserServiceClient;
use ordermesh_contracts::user::{
    GetJwksRequest, ListRevocationsRequest, VerifiedApiKey, VerifyApiKeyRequest,
};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::jwt::AccessClaims;
use tokio::sync::RwLock;

use crate::api_keys::ResolvedKeys;
use crate::revocations::RevocationList;
use crate::verified_tokens::VerifiedTokens;

const MIN_REFRESH: Duration = Duration::from_secs(5);
const MAX_AGE: Duration = Duration::from_secs(300);
const LEEWAY_SECS: u64 = 30;
/// Tokens remembered as verified (see [`VerifiedTokens`]).
const VERIFIED_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another issuer or audience")]
    WrongAudience,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    #[error("the token was revoked: {0}")]
    Revoked(&'static str),
    #[error("the API key is unknown, revoked or expired")]
    BadApiKey,
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

pub struct Verifier {
    users: UserServiceClient<MeshChannel>,
    revocations: RevocationList,
    keys: RwLock<Keys>,
    validation: Validation,
    verified: VerifiedTokens,
    api_keys: ResolvedKeys,
    refresh_failures: prometheus_client::metrics::counter::Counter,
}

impl Verifier {
    pub fn new(users: UserServiceClient<MeshChannel>, issuer: &str, audience: &str) -> Self {
        Self {
            users,
            revocations: RevocationList::default(),
            keys: RwLock::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
            }),
            validation: validation(issuer, audience),
            verified: VerifiedTokens::new(VERIFIED_CAPACITY, LEEWAY_SECS as i64),
            api_keys: ResolvedKeys::default(),
            refresh_failures: Default::default(),
        }
    }

    /// Counts failed JWKS fetches in `counter` (a registered metric).
    pub fn counting_refresh_failures(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.refresh_failures = counter;
        self
    }

    /// The `Authorization: Bearer` token, if any.
    pub fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        Ok(token.trim())
    }

    /// Whether signing keys are at hand: loaded now, or fetched (once) if they never were.
    /// Keys fetched earlier stay usable while user-service is away.
    pub async fn keys_ready(&self) -> bool {
        if !self.keys.read().await.by_kid.is_empty() {
            return true;
        }
        let _ = self.refresh(false).await;
        !self.keys.read().await.by_kid.is_empty()
    }

    async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        let mut keys = self.keys.write().await;
        let fresh = keys.fetched.is_some_and(|t| t.elapsed() < MIN_REFRESH);
        if fresh || (!force && keys.fetched.is_some_and(|t| t.elapsed() < MAX_AGE)) {
            return Ok(());
        }
        let mut req = tonic::Request::new(GetJwksRequest {});
        req.set_timeout(Duration::from_secs(3));
        let jwks = self
            .users
            .clone()
            .get_jwks(req)
            .await
            .map_err(|e| {
                self.refresh_failures.inc();
                tracing::warn!(error = %e, "cannot fetch the JWKS");
                AuthError::KeysUnavailable
            })?
            .into_inner();
        keys.by_kid = jwks
            .keys
            .iter()
            .filter(|k| {
                k.kty == "OKP" && k.crv == "Ed25519" && (k.alg.is_empty() || k.alg == "EdDSA")
            })
            .filter_map(|k| {
                DecodingKey::from_ed_components(&k.x)
                    .ok()
                    .map(|d| (k.kid.clone(), d))
            })
            .collect();
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    /// Takes in what user-service revoked since the last call; returns how many revocations
    /// were new.
    pub async fn follow_revocations(&self) -> Result<usize, tonic::Status> {
        let mut new = 0;
        loop {
            let mut req = tonic::Request::new(ListRevocationsRequest {
                after: self.revocations.cursor(),
                page_size: 0,
            });
            req.set_timeout(Duration::from_secs(2));
            let page = self.users.clone().list_revocations(req).await?.into_inner();
            let n = page.revocations.len();
            self.revocations.apply(&page.revocations, page.cursor);
            new += n;
            if n < 1000 {
                return Ok(new);
            }
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, AuthError> {
        let claims = self.verify_signed(token).await?;
        match self.revocations.refuses(&claims) {
            Some(why) => Err(AuthError::Revoked(why)),
            None => Ok(claims),
        }
    }

    /// An API key's owner, roles and scopes: from memory when resolved lately (see
    /// [`crate::api_keys`]), else from user-service. Refused once revoked or expired.
    pub async fn verify_api_key(&self, key: &str) -> Result<Arc<VerifiedApiKey>, AuthError> {
        if key.is_empty() || key.len() > 256 {
            return Err(AuthError::BadApiKey);
        }
        let verified = match self.api_keys.get(key) {
            Some(v) => v,
            None => {
                let mut req = tonic::Request::new(VerifyApiKeyRequest {
                    key: key.to_string(),
                });
                req.set_timeout(Duration::from_secs(2));
                match self.users.clone().verify_api_key(req).await {
                    Ok(answer) => {
                        let v = Arc::new(answer.into_inner());
                        self.api_keys.insert(key, v.clone());
                        v
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
                        ) =>
                    {
                        return Err(AuthError::BadApiKey);
                    }
                    Err(_) => return Err(AuthError::KeysUnavailable),
                }
            }
        };
        if self.revocations.key_revoked(&verified.key_id) {
            self.api_keys.forget(&verified.key_id);
            return Err(AuthError::BadApiKey);
        }
        let now = ordermesh_platform::store::now_unix();
        if verified
            .expire_time
            .as_ref()
            .is_some_and(|t| t.seconds <= now)
        {
            return Err(AuthError::BadApiKey);
        }
        Ok(verified)
    }

    /// A token verified before is taken from memory while its `exp` and `nbf` hold: a key
    /// rotated out of the JWKS keeps vouching for its tokens until they expire (at most the
    /// access-token TTL).
    async fn verify_signed(&self, token: &str) -> Result<Arc<AccessClaims>, AuthError> {
        let now = ordermesh_platform::store::now_unix();
        if let Some(claims) = self.verified.get(token, now) {
            return Ok(claims);
        }
        let kid = token_kid(token)?;
        self.refresh(false).await?;
        let mut key = self.keys.read().await.by_kid.get(&kid).cloned();
        if key.is_none() {
            self.refresh(true).await?;
            key = self.keys.read().await.by_kid.get(&kid).cloned();
        }
        let key = key.ok_or(AuthError::UnknownKey)?;
        let claims = Arc::new(decode_claims(token, &key, &self.validation)?);
        self.verified.insert(token, claims.clone(), now);
        Ok(claims)
    }
}

/// What a token must satisfy besides its signature: EdDSA only, our issuer and audience,
/// `exp`/`nbf` with a small leeway, and the claims every access token has.
pub fn validation(issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation
}

/// The signing key id a token names, once its header proves it is an EdDSA token.
pub fn token_kid(token: &str) -> Result<String, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::Algorithm);
    }
    header.kid.ok_or(AuthError::UnknownKey)
}

/// The claims of a token signed by `key`, checked against `validation`.
pub fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<AccessClaims, AuthError> {
    jsonwebtoken::decode::<AccessClaims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                _ => AuthError::Malformed,
            }
        })
}
