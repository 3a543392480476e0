//! The gateway's HTTP pipeline, composed in one place. Outermost first:
//!
//! 1. request id: the client's (when sane) or a fresh one, on the request and the response;
//! 2. security headers and `Cache-Control: no-store` on every response;
//! 3. compression (gzip, when the client accepts it);
//! 4. CORS (so preflights are answered before anything else);
//!
//! then, for the API routes (the contracts' bindings and the composite endpoints):
//!
//! 5. observe: the endpoint resolved once, the `http.server` span, access log, metrics;
//! 6. load shedding over a concurrency limit: past `max_in_flight`, a 503 at once;
//! 7. the request timeout (504);
//! 8. the per-address rate limit;
//! 9. authentication, yielding a typed [`Caller`](crate::caller::Caller);
//! 10. the per-user rate limit;
//! 11. the handler: a transcoded backend call, or a composite endpoint.

use std::sync::Arc;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::middleware::{Next, from_fn, from_fn_with_state, map_response};
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::admin;
use crate::problem::Problem;
use crate::request_id::{self, REQUEST_ID, RequestId};
use crate::server::Gateway;
use ordermesh_platform::http_error_heads::SECURITY_HEADERS;

/// The public application.
pub fn public_app(gw: Arc<Gateway>) -> axum::Router {
    let api = axum::Router::new()
        .route(
            crate::overview::PATH,
            get(crate::overview::handle).fallback(admin::get_only),
        )
        .fallback(crate::transcoded::handle)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn_with_state(gw.clone(), crate::observe::observe))
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(gw.config.max_in_flight))
                .layer(from_fn_with_state(gw.clone(), request_timeout))
                .layer(from_fn_with_state(
                    gw.clone(),
                    crate::rate_limit::by_address,
                ))
                .layer(from_fn_with_state(gw.clone(), crate::caller::authenticate))
                .layer(from_fn_with_state(gw.clone(), crate::rate_limit::by_user)),
        );
    axum::Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/openapi.json", get(admin::openapi_json))
        .method_not_allowed_fallback(admin::get_only)
        .merge(api)
        .with_state(gw.clone())
        .layer(cors(&gw.config.cors_origins))
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .layer(map_response(security_headers))
        .layer(from_fn(request_id::assign))
}

/// The admin application: Prometheus metrics and each backend's state.
pub fn admin_app(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics_text))
        .route("/health/backends", get(admin::backends_health))
        .method_not_allowed_fallback(admin::get_only)
        .fallback(admin::no_such_route)
        .with_state(gw)
        .layer(map_response(security_headers))
        .layer(from_fn(request_id::assign))
}

fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    tower_http::cors::CorsLayer::new()
        .allow_origin(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static(REQUEST_ID),
            header::HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            header::HeaderName::from_static(REQUEST_ID),
            header::HeaderName::from_static("ratelimit-limit"),
            header::HeaderName::from_static("ratelimit-remaining"),
            header::HeaderName::from_static("ratelimit-reset"),
        ])
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Past the concurrency limit, the gateway says so at once instead of queueing.
async fn overloaded(request_id: RequestId, _: tower::BoxError) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the gateway is at capacity; retry shortly",
    )
    .with_header(header::RETRY_AFTER, "1")
    .into_response_with(request_id.as_str())
}

/// Bounds the time to a response's head (a stream's body then runs as long as it runs).
async fn request_timeout(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    req: Request<Body>,
    next: Next,
) -> Response {
    let limit = gw.config.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline-exceeded",
            format!("no answer within {} ms", limit.as_millis()),
        )
        .into_response_with(request_id.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use http::{Request, StatusCode};
    use ordermesh_platform::client::ChannelFactory;
    use ordermesh_platform::config::{MeshConfig, MtlsMode};
    use ordermesh_platform::metrics::Metrics;
    use tower::ServiceExt;

    use crate::auth::Verifier;
    use crate::backends::Backends;
    use crate::config::GatewayConfig;
    use crate::gateway_metrics::GatewayMetrics;
    use crate::limits::Limit;
    use crate::request_id::REQUEST_ID;
    use crate::server::Gateway;

    /// A gateway whose backends are nowhere (nothing here reaches one).
    fn gateway(config: GatewayConfig) -> Arc<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let mesh = MeshConfig {
            trust_domain: MeshConfig::DEFAULT_TRUST_DOMAIN.into(),
            namespace: MeshConfig::DEFAULT_NAMESPACE.into(),
            mtls_mode: MtlsMode::Istio,
            tls: None,
        };
        let channels = ChannelFactory::new(&mesh, metrics.clone()).unwrap();
        let users = ordermesh_contracts::user::user_service_client::UserServiceClient::new(
            channels
                .channel("user-service", "http://127.0.0.1:1")
                .unwrap(),
        );
        let backends = Backends::new(config.deadline, GatewayMetrics::registered(&metrics));
        let verifier = Verifier::new(users, "issuer", "audience");
        Arc::new(Gateway::new(config, backends, verifier, metrics).unwrap())
    }

    async fn call(
        gw: &Arc<Gateway>,
        req: Request<Body>,
    ) -> (http::response::Parts, serde_json::Value) {
        let res = gw.clone().router().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn every_answer_carries_a_request_id_and_the_security_headers() {
        let gw = gateway(GatewayConfig::default());
        let (parts, body) = call(&gw, get("/v1/nothing-here")).await;
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        assert_eq!(parts.headers["content-type"], "application/problem+json");
        let id = parts.headers[REQUEST_ID].to_str().unwrap().to_string();
        assert_eq!(
            body["requestId"],
            id.as_str(),
            "the problem names the same id"
        );
        assert!(parts.headers.contains_key("x-content-type-options"));
        assert!(
            parts.headers.contains_key("ratelimit-remaining"),
            "even a 404 drew on the address's budget"
        );
        let mut sane = get("/healthz");
        sane.headers_mut()
            .insert(REQUEST_ID, "client-chose-this".parse().unwrap());
        let (parts, _) = call(&gw, sane).await;
        assert_eq!(parts.headers[REQUEST_ID], "client-chose-this");
        let mut insane = get("/healthz");
        insane
            .headers_mut()
            .insert(REQUEST_ID, "has spaces in it".parse().unwrap());
        let (parts, _) = call(&gw, insane).await;
        assert_ne!(parts.headers[REQUEST_ID], "has spaces in it");
    }

    #[tokio::test]
    async fn authentication_answers_before_any_backend_is_called() {
        let gw = gateway(GatewayConfig::default());
        let (parts, body) = call(&gw, get("/v1/me/overview")).await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
        assert_eq!(parts.headers["www-authenticate"], "Bearer");
        assert_eq!(body["type"], "urn:ordermesh:problem:unauthenticated");
        let mut forged = get("/v1/orders");
        forged
            .headers_mut()
            .insert("authorization", "Bearer not.a.token".parse().unwrap());
        let (parts, _) = call(&gw, forged).await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
        let (parts, _) = call(
            &gw,
            Request::post("/v1/me/overview")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(parts.headers["allow"], "GET, HEAD");
    }

    #[tokio::test]
    async fn the_address_limit_refuses_with_retry_after_once_spent() {
        let gw = gateway(GatewayConfig {
            rate_address: Limit {
                per_minute: 1,
                burst: 2,
            },
            ..Default::default()
        });
        for _ in 0..2 {
            let (parts, _) = call(&gw, get("/v1/nothing-here")).await;
            assert_eq!(parts.status, StatusCode::NOT_FOUND);
        }
        let (parts, body) = call(&gw, get("/v1/nothing-here")).await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(parts.headers.contains_key("retry-after"));
        assert_eq!(parts.headers["ratelimit-remaining"], "0");
        assert_eq!(body["type"], "urn:ordermesh:problem:rate-limited");
    }

    #[tokio::test]
    async fn past_the_concurrency_limit_requests_are_shed_at_once() {
        let gw = gateway(GatewayConfig {
            max_in_flight: 0,
            ..Default::default()
        });
        let (parts, body) = call(&gw, get("/v1/products")).await;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers["retry-after"], "1");
        assert_eq!(body["type"], "urn:ordermesh:problem:unavailable");
        // The gateway's own endpoints are outside the limit.
        let (parts, _) = call(&gw, get("/healthz")).await;
        assert_eq!(parts.status, StatusCode::OK);
    }
}
