//! The HTTP server: every request goes through one pipeline (request id, trace context,
//! route resolution, authentication and audience, rate limit, content checks, transcoding, the
//! backend call, the response), with metrics labelled by route template.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, StatusCode, header};
use ordermesh_contracts::options::Audience;
use ordermesh_platform::admission::AdmissionLimits;
use ordermesh_platform::http_server::{HttpSettings, serve_http};
use ordermesh_platform::jwt::AccessClaims;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::telemetry;
use ordermesh_platform::user_context::UserContext;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{AuthError, Verifier};
use crate::backends::Backends;
use crate::config::GatewayConfig;
use crate::gateway_metrics::BucketLabels;
use crate::limits::{Bucket, Budget, RateLimits, RouteClass};
use crate::problem::Problem;
use crate::routes::{self, Resolved, Route};
use crate::transcode::{self, TranscodeError};

pub use ordermesh_platform::http_error_heads::REQUEST_ID;
use ordermesh_platform::http_error_heads::SECURITY_HEADERS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

pub struct Gateway {
    routes: Vec<Route>,
    openapi: serde_json::Value,
    pub backends: Backends,
    verifier: Verifier,
    limits: RateLimits,
    pub metrics: Arc<Metrics>,
    requests: Family<HttpLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    config: GatewayConfig,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        backends: Backends,
        verifier: Verifier,
        metrics: Arc<Metrics>,
    ) -> Result<Self, routes::TemplateError> {
        let requests = Family::<HttpLabels, Counter>::default();
        let durations =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        metrics.with_registry(|r| {
            r.register(
                "http_server_requests",
                "HTTP requests by route template and status",
                requests.clone(),
            );
            r.register(
                "http_server_duration_seconds",
                "HTTP latency by route template",
                durations.clone(),
            );
        });
        let routes = routes::all()?;
        Ok(Self {
            openapi: crate::openapi::document(&routes),
            routes,
            backends,
            verifier,
            limits: RateLimits::new(
                config.rate_default,
                config.rate_account,
                config.rate_address,
            ),
            metrics,
            requests,
            durations,
            config,
        })
    }

    /// The axum application.
    pub fn router(self: Arc<Self>) -> axum::Router {
        let cors = tower_http::cors::CorsLayer::new()
            .allow_origin(
                self.config
                    .cors_origins
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
            ])
            .expose_headers([
                header::HeaderName::from_static(REQUEST_ID),
                header::HeaderName::from_static("ratelimit-limit"),
                header::HeaderName::from_static("ratelimit-remaining"),
                header::HeaderName::from_static("ratelimit-reset"),
            ]);
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", axum::routing::get(readyz))
            .route("/openapi.json", axum::routing::get(openapi_json))
            .method_not_allowed_fallback(get_only)
            .fallback(handle)
            .with_state(self)
            .layer(cors)
            .layer(tower_http::compression::CompressionLayer::new().gzip(true))
            // Outermost, so CORS preflights and the gateway's own endpoints carry them too.
            .layer(axum::middleware::map_response(security_headers))
            .layer(axum::middleware::from_fn(request_id))
    }

    /// The admin application: Prometheus metrics and each backend's state. Never exposed
    /// publicly (the chart keeps its port off the public Service).
    pub fn admin_router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/metrics", axum::routing::get(metrics_text))
            .route("/health/backends", axum::routing::get(backends_health))
            .method_not_allowed_fallback(get_only)
            .fallback(no_such_route)
            .with_state(self)
            .layer(axum::middleware::map_response(security_headers))
            .layer(axum::middleware::from_fn(request_id))
    }

    /// Serves the public API on `listener` until `shutdown`, draining open requests.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        self.serve_with_admin(listener, None, shutdown).await
    }

    /// Serves the public API on `listener` and, when given, the admin endpoints on `admin`,
    /// until `shutdown`.
    pub async fn serve_with_admin(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, routes = self.routes.len(), "edge gateway listening");
        let admin_task = match admin {
            Some(admin) => {
                tracing::info!(addr = %admin.local_addr()?, "edge gateway admin endpoints listening");
                let app = self.clone().admin_router();
                let shutdown = shutdown.clone();
                // Its own caps: a flood on the public port cannot lock operators out.
                let settings = HttpSettings::new(
                    self.config.http.header_timeout,
                    AdmissionLimits {
                        max_connections: 256,
                        max_per_address: 64,
                        exempt: Vec::new(),
                    },
                );
                Some(tokio::spawn(async move {
                    serve_http(admin, app, settings, shutdown.wait()).await
                }))
            }
            None => None,
        };
        let gw = self.clone();
        let sweeper = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => gw.limits.sweep(),
                        _ = shutdown.wait() => return,
                    }
                }
            }
        });
        let gw = self.clone();
        let revocations = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut failing = false;
                loop {
                    match gw.verifier.follow_revocations().await {
                        Ok(_) => failing = false,
                        // Logged once per outage; the last known revocations keep applying.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "cannot follow revocations");
                        }
                        Err(_) => {}
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(gw.config.revocation_poll) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        });
        let result = serve_http(
            listener,
            self.clone().router(),
            self.config.http.clone(),
            shutdown.wait(),
        )
        .await;
        sweeper.abort();
        revocations.abort();
        if let Some(admin) = admin_task {
            shutdown.trigger();
            if let Ok(Err(e)) = admin.await {
                tracing::warn!(error = %e, "admin endpoints ended with an error");
            }
        }
        result
    }

    fn route_class(route: &Route) -> RouteClass {
        let account = route.rpc.service == "ordermesh.user.v1.UserService"
            && route.rpc.audience == Audience::Public
            && route.rpc.method != "GetJwks";
        if account {
            RouteClass::Account
        } else {
            RouteClass::Default
        }
    }

    /// Authenticates the caller as the method's audience requires.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        audience: Audience,
    ) -> Result<Option<AccessClaims>, Problem> {
        let needed = match audience {
            Audience::Public => return Ok(None),
            Audience::User | Audience::Admin => audience,
            Audience::Internal | Audience::Unspecified => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such route",
                ));
            }
        };
        let unauthorized = |e: AuthError| {
            let challenge = match e {
                AuthError::Missing => "Bearer".to_string(),
                _ => format!("Bearer error=\"invalid_token\", error_description=\"{e}\""),
            };
            Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
                .with_header(header::WWW_AUTHENTICATE, &challenge)
        };
        let token = Verifier::bearer(headers).map_err(unauthorized)?;
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
        let caller = UserContext::new(claims.sub.as_str(), &claims.roles);
        if needed == Audience::Admin && !caller.is_admin() {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "permission-denied",
                "this endpoint is for administrators",
            ));
        }
        tracing::Span::current().record("enduser.id", claims.sub.as_str());
        Ok(Some(claims))
    }

    /// Serves one request whose route `handle` resolved (once) as `resolved`.
    async fn dispatch(
        &self,
        req: Request<Body>,
        peer: SocketAddr,
        request_id: &str,
        resolved: Resolved<'_>,
    ) -> Result<Response, Problem> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        // Every request draws on its sender's address first, whatever it then turns out to
        // be (a bad token, a refused admin call, an unknown route), so none of them is free.
        let client = self.config.trusted_proxies.client_ip(peer, &parts.headers);
        let address_bucket = match &resolved {
            Resolved::Found(route, _) if Self::route_class(route) == RouteClass::Account => {
                Bucket::Account
            }
            _ => Bucket::Address,
        };
        let address_budget = self.limit(address_bucket, &format!("ip:{client}"))?;
        if path == crate::overview::PATH {
            if parts.method != Method::GET {
                return Err(Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "use GET",
                )
                .with_header(header::ALLOW, "GET"));
            }
            let claims = self.authenticate(&parts.headers, Audience::User).await?;
            let budget = self.user_limit(claims.as_ref(), address_budget)?;
            let metadata = self.metadata(request_id, claims.as_ref())?;
            let body = crate::overview::overview(&self.backends, &metadata).await?;
            let mut res = axum::Json(body).into_response();
            budget_headers(&mut res, &budget);
            return Ok(res);
        }
        let (route, bindings) = match resolved {
            Resolved::Found(r, b) => (r, b),
            Resolved::WrongMethod(allowed) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    format!("allowed: {allow}"),
                )
                .with_header(header::ALLOW, &allow));
            }
            Resolved::EncodedSlash => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-argument",
                    "a path parameter contains an encoded '/'",
                ));
            }
            Resolved::NotFound => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such route",
                ));
            }
        };
        let claims = self
            .authenticate(&parts.headers, route.rpc.audience)
            .await?;
        let budget = match Self::route_class(route) {
            RouteClass::Account => address_budget,
            RouteClass::Default => self.user_limit(claims.as_ref(), address_budget)?,
        };

        let body = axum::body::to_bytes(body, self.config.body_limit)
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    format!("the body is larger than {} bytes", self.config.body_limit),
                )
            })?;
        if !body.is_empty() {
            let json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "send application/json",
                ));
            }
        }
        let message = transcode::request(route, &bindings, parts.uri.query(), &body)
            .map_err(transcode_problem)?;
        let metadata = self.metadata(request_id, claims.as_ref())?;

        let mut res = if route.rpc.server_streaming {
            let sse = parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"));
            let stream = self
                .backends
                .server_streaming(route.rpc, message, &metadata)
                .await
                .map_err(|s| Problem::from_status(&s))?;
            stream_response(route, stream, sse, request_id.to_string())
        } else {
            let safe = parts.method == Method::GET;
            let bytes = self
                .backends
                .unary(route.rpc, message, &metadata, safe)
                .await
                .map_err(|s| Problem::from_status(&s))?;
            let json = transcode::response_json(
                &route.rpc.descriptor.output(),
                &bytes,
                &route.response_body,
            )
            .map_err(transcode_problem)?;
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                json,
            )
                .into_response()
        };
        budget_headers(&mut res, &budget);
        Ok(res)
    }

    /// The signed-in caller's own bucket; the budget reported is the tighter of it and the
    /// address's. Anonymous callers have only the address's.
    fn user_limit(
        &self,
        claims: Option<&AccessClaims>,
        address_budget: Budget,
    ) -> Result<Budget, Problem> {
        let Some(claims) = claims else {
            return Ok(address_budget);
        };
        let user = self.limit(Bucket::User, &format!("user:{}", claims.sub))?;
        Ok(if user.remaining <= address_budget.remaining {
            user
        } else {
            address_budget
        })
    }

    fn limit(&self, bucket: Bucket, key: &str) -> Result<Budget, Problem> {
        self.limits.check(bucket, key).map_err(|b| {
            self.backends
                .metrics
                .rate_limited
                .get_or_create(&BucketLabels {
                    bucket: bucket.name().to_string(),
                })
                .inc();
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("too many requests; retry in {} s", b.reset),
            )
            .with_header(header::RETRY_AFTER, &b.reset.to_string());
            for (n, v) in budget_values(&b) {
                p = p.with_header(n, &v);
            }
            p
        })
    }

    /// The metadata sent to a backend: built fresh, so nothing a client sent is forwarded.
    fn metadata(
        &self,
        request_id: &str,
        claims: Option<&AccessClaims>,
    ) -> Result<MetadataMap, Problem> {
        let mut md = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(request_id) {
            md.insert(REQUEST_ID, v);
        }
        if let Some(c) = claims {
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

fn budget_values(b: &Budget) -> [(header::HeaderName, String); 3] {
    [
        (
            header::HeaderName::from_static("ratelimit-limit"),
            b.limit.to_string(),
        ),
        (
            header::HeaderName::from_static("ratelimit-remaining"),
            b.remaining.to_string(),
        ),
        (
            header::HeaderName::from_static("ratelimit-reset"),
            b.reset.to_string(),
        ),
    ]
}

fn budget_headers(res: &mut Response, b: &Budget) {
    for (n, v) in budget_values(b) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert(n, v);
        }
    }
}

fn transcode_problem(e: TranscodeError) -> Problem {
    match &e {
        TranscodeError::BadResponse => Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-gateway",
            "a backend answered with an unreadable message",
        ),
        TranscodeError::UnknownParameter(name) | TranscodeError::BadParameter { name, .. } => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-argument", e.to_string())
                .with_violation(name, e.to_string())
        }
        _ => Problem::new(StatusCode::BAD_REQUEST, "invalid-argument", e.to_string()),
    }
}

/// Streams messages as Server-Sent Events or newline-delimited JSON. An error mid-stream
/// ends it with an error event (SSE) or a final problem object (NDJSON), never a silent close.
fn stream_response(
    route: &Route,
    stream: tonic::Streaming<Bytes>,
    sse: bool,
    request_id: String,
) -> Response {
    let desc = route.rpc.descriptor.output();
    let body = stream.map(move |item| {
        let (event, json) = match item {
            Ok(bytes) => match transcode::response(&desc, &bytes, "") {
                Ok(v) => ("message", v),
                Err(e) => ("error", transcode_problem(e).body(&request_id)),
            },
            Err(s) => ("error", Problem::stream_end(&s).body(&request_id)),
        };
        let text = if sse {
            format!("event: {event}\ndata: {json}\n\n")
        } else {
            format!("{json}\n")
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(text))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Every request gets an id (the client's, when sane) before anything else sees it, and every
/// response carries it back.
async fn request_id(mut req: Request<Body>, next: axum::middleware::Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .and_then(|v| HeaderValue::from_str(v).ok())
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok());
    if let Some(id) = &id {
        req.headers_mut().insert(REQUEST_ID, id.clone());
    }
    let mut res = next.run(req).await;
    if let Some(id) = id {
        res.headers_mut().insert(REQUEST_ID, id);
    }
    res
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic())
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resolved = routes::resolve(&gw.routes, &method, &path);
    let template = match &resolved {
        Resolved::Found(r, _) => r.template.clone(),
        _ if path == crate::overview::PATH => path.clone(),
        _ => "unmatched".to_string(),
    };
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {template}"),
        otel.kind = "server",
        "ordermesh.role" = ordermesh_platform::identity::workloads::GATEWAY,
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %template,
        url.path = %path,
        http.response.status_code = Empty,
        request_id = %request_id,
        trace_id = Empty,
        "enduser.id" = Empty,
    );
    let _ = span.set_parent(telemetry::extract_context(req.headers()));
    span.record("trace_id", telemetry::trace_id_of(&span).as_str());

    let mut res = match gw
        .dispatch(req, peer, &request_id, resolved)
        .instrument(span.clone())
        .await
    {
        Ok(r) => r,
        Err(p) => p.into_response_with(&request_id),
    };
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    // The access log: one line per request, inside its span (so it carries the request id,
    // trace id and user); never a token or a body.
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            method = %method,
            route = %template,
            status = status.as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    // Hand the client the trace it can paste into Jaeger.
    telemetry::inject_span(&span, res.headers_mut());
    gw.requests
        .get_or_create(&HttpLabels {
            method: method.to_string(),
            route: template.clone(),
            status: status.as_u16(),
        })
        .inc();
    gw.durations
        .get_or_create(&RouteLabels {
            method: method.to_string(),
            route: template,
        })
        .observe(started.elapsed().as_secs_f64());
    res
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

fn request_id_of(headers: &http::HeaderMap) -> &str {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The gateway's own endpoints answer GET (and HEAD) only; anything else is a 405 problem.
async fn get_only(headers: http::HeaderMap) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "allowed: GET, HEAD",
    )
    .with_header(header::ALLOW, "GET, HEAD")
    .into_response_with(request_id_of(&headers))
}

async fn no_such_route(headers: http::HeaderMap) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route")
        .into_response_with(request_id_of(&headers))
}

async fn openapi_json(State(gw): State<Arc<Gateway>>) -> Response {
    axum::Json(gw.openapi.clone()).into_response()
}

async fn metrics_text(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            ordermesh_platform::metrics::PROMETHEUS_CONTENT_TYPE,
        )],
        gw.metrics.encode(),
    )
        .into_response()
}

/// Ready when the gateway itself can serve: it is listening (this answer proves it), its
/// routes are built (they are before it listens), and it has the signing keys to check tokens
/// (loaded, or cached from an earlier fetch). A backend that is down is not a reason: its own
/// routes answer 503 and the admin port shows it, while every other route keeps working.
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let keys = tokio::time::timeout(Duration::from_secs(2), gw.verifier.keys_ready())
        .await
        .unwrap_or(false);
    let body = serde_json::json!({
        "status": if keys { "ready" } else { "not ready" },
        "routes": gw.routes.len(),
        "signingKeys": if keys { "loaded" } else { "unavailable" },
    });
    let status = if keys {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Each backend's state, for operators: its gRPC health check and its circuit breaker.
async fn backends_health(State(gw): State<Arc<Gateway>>) -> Response {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let checks = gw.backends.all().map(|b| async move {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(Duration::from_secs(1));
        let check = tokio::time::timeout(
            Duration::from_secs(2),
            HealthClient::new(b.channel.clone()).check(req),
        )
        .await;
        let serving =
            matches!(&check, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32);
        (
            b.workload,
            serde_json::json!({
                "status": if serving { "serving" } else { "unavailable" },
                "circuit": if b.breaker.is_open() { "open" } else { "closed" },
            }),
        )
    });
    let results = futures::future::join_all(checks).await;
    let all_ok = results.iter().all(|(_, v)| v["status"] == "serving");
    let body = serde_json::json!({
        "status": if all_ok { "serving" } else { "degraded" },
        "backends": results.into_iter().map(|(w, v)| (w.to_string(), v)).collect::<serde_json::Map<_, _>>(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
