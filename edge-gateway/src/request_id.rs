//! Every request gets an id (the client's, when sane) before anything else sees it, and every
//! response carries it back.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::Response;
use http::request::Parts;
use http::{HeaderValue, Request};

pub use ordermesh_platform::http_error_heads::REQUEST_ID;

/// The id of the request being served, as a request extension.
#[derive(Clone, Debug)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic())
}

/// The layer: keeps a sane client id or makes a fresh one.
pub async fn assign(mut req: Request<Body>, next: axum::middleware::Next) -> Response {
    let id: Arc<str> = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string().into(), Arc::from);
    let header = HeaderValue::from_str(&id).ok();
    if let Some(h) = &header {
        req.headers_mut().insert(REQUEST_ID, h.clone());
    }
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    if let Some(h) = header {
        res.headers_mut().insert(REQUEST_ID, h);
    }
    res
}

impl RequestId {
    /// The id the layer assigned (empty outside the layer).
    pub fn from_parts(parts: &Parts) -> Self {
        parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(Arc::from("")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::from_parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_ids_are_kept() {
        assert!(valid("req-1"));
        assert!(!valid(""));
        assert!(!valid("has space"));
        assert!(!valid(&"x".repeat(129)));
        assert!(!valid("naïve"));
    }
}
