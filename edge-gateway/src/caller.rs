//! Authentication as a layer: checks the credentials the request's endpoint needs and hands
//! every later layer and handler a typed [`Caller`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Request, StatusCode, header};
use ordermesh_contracts::options::Audience;
use ordermesh_platform::jwt::AccessClaims;
use ordermesh_platform::user_context::UserContext;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::auth::AuthError;
use crate::endpoint::Endpoint;
use crate::problem::Problem;
use crate::request_id::{REQUEST_ID, RequestId};
use crate::routes::Resolved;
use crate::server::Gateway;
use ordermesh_contracts::api_key_scopes::{ADMIN_SCOPE, grantable, scope_of};
use ordermesh_platform::user_context::ROLE_ADMIN;

/// Who is calling: nobody in particular (a public endpoint), or a verified user, in person
/// (an access token) or through one of their API keys.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    claims: Option<Arc<AccessClaims>>,
    /// The id of the API key the call came with.
    api_key: Option<String>,
}

impl Caller {
    pub fn user(&self) -> Option<&AccessClaims> {
        self.claims.as_deref()
    }

    /// The API key the call came with, if it came with one.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// The metadata sent to a backend: built fresh, so nothing a client sent is forwarded.
    pub fn metadata(&self, request_id: &RequestId) -> Result<MetadataMap, Problem> {
        let mut md = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(request_id.as_str()) {
            md.insert(REQUEST_ID, v);
        }
        if let Some(c) = &self.claims {
            UserContext::new(c.sub.as_str(), &c.roles)
                .inject(&mut md)
                .map_err(|_| {
                    Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "the token's subject is not usable",
                    )
                })?;
        }
        Ok(md)
    }
}

/// The layer. Requests that resolved to nothing pass as anonymous: their handler answers
/// 404 or 405 whoever asks.
pub async fn authenticate(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let (audience, scope) =
        req.extensions()
            .get::<Endpoint>()
            .map_or((Audience::Public, None), |e| match &e.resolved {
                Resolved::Found(route, _) => (e.audience, scope_of(route.rpc)),
                _ => (e.audience, None),
            });
    match gw.caller(req.headers(), audience, scope).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(p) => p.into_response_with(request_id.as_str()),
    }
}

impl Gateway {
    /// Authenticates the caller as `audience` requires; an API key must also hold `scope`
    /// (the endpoint's, derived from the contracts; `None`: keys cannot call it).
    async fn caller(
        &self,
        headers: &http::HeaderMap,
        audience: Audience,
        scope: Option<String>,
    ) -> Result<Caller, Problem> {
        match audience {
            Audience::Public => return Ok(Caller::default()),
            Audience::User | Audience::Admin => {}
            Audience::Internal | Audience::Unspecified => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such route",
                ));
            }
        }
        let unauthorized = |e: AuthError| {
            let challenge = match e {
                AuthError::Missing => "Bearer".to_string(),
                _ => format!("Bearer error=\"invalid_token\", error_description=\"{e}\""),
            };
            Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
                .with_header(header::WWW_AUTHENTICATE, &challenge)
        };
        if let Some(key) = crate::api_keys::presented(headers) {
            return self.key_caller(key, audience, scope).await;
        }
        let token = crate::auth::Verifier::bearer(headers).map_err(unauthorized)?;
        let claims = match self.verifier.verify(token).await {
            Ok(c) => c,
            Err(AuthError::KeysUnavailable) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "cannot verify tokens right now",
                ));
            }
            Err(e) => return Err(unauthorized(e)),
        };
        // Roles as the services will read them (one encoding, one decoder).
        let context = UserContext::new(claims.sub.as_str(), &claims.roles);
        if audience == Audience::Admin && !context.is_admin() {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "permission-denied",
                "this endpoint is for administrators",
            ));
        }
        tracing::Span::current().record("enduser.id", claims.sub.as_str());
        Ok(Caller {
            claims: Some(claims),
            api_key: None,
        })
    }

    /// A caller by API key: acting as the key's owner, with the admin role only when the key
    /// says `admin` too, and only where the key's scopes reach.
    async fn key_caller(
        &self,
        key: &str,
        audience: Audience,
        scope: Option<String>,
    ) -> Result<Caller, Problem> {
        let verified = match self.verifier.verify_api_key(key).await {
            Ok(v) => v,
            Err(AuthError::KeysUnavailable) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "cannot verify API keys right now",
                ));
            }
            Err(e) => {
                return Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    e.to_string(),
                )
                .with_header(header::WWW_AUTHENTICATE, "ApiKey"));
            }
        };
        let forbidden =
            |detail: String| Problem::new(StatusCode::FORBIDDEN, "permission-denied", detail);
        let admin_scope = verified.scopes.iter().any(|s| s == ADMIN_SCOPE);
        let roles: Vec<String> = verified
            .roles
            .iter()
            .filter(|r| r.as_str() != ROLE_ADMIN || admin_scope)
            .cloned()
            .collect();
        let context = UserContext::new(verified.user_id.as_str(), &roles);
        if audience == Audience::Admin && !context.is_admin() {
            return Err(forbidden(
                "this endpoint is for administrators; an API key reaches it only with the admin scope on an admin's key".into(),
            ));
        }
        match scope {
            Some(s) if !grantable(&s) => {
                return Err(forbidden(
                    "API keys cannot manage API keys or webhook endpoints; sign in to do that"
                        .into(),
                ));
            }
            Some(s) if verified.scopes.contains(&s) => {}
            Some(s) => {
                return Err(forbidden(format!(
                    "the API key's scopes do not include {s}"
                )));
            }
            None => return Err(forbidden("API keys cannot call this endpoint".into())),
        }
        tracing::Span::current().record("enduser.id", verified.user_id.as_str());
        Ok(Caller {
            claims: Some(Arc::new(AccessClaims {
                sub: verified.user_id.clone(),
                roles,
                ..Default::default()
            })),
            api_key: Some(verified.key_id.clone()),
        })
    }
}

/// Handlers take the caller the layer established.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            let id = RequestId::from_parts(parts);
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request was not authenticated",
            )
            .into_response_with(id.as_str())
            .into_response()
        })
    }
}
