//! The observing layer: resolves the request's endpoint (once), opens the `http.server` span
//! every later layer runs in, and on the way out writes the access log line and the request
//! metrics, labelled by route template, and hands the client its trace context.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use http::Request;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::telemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::endpoint::Endpoint;
use crate::request_id::RequestId;
use crate::server::Gateway;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: &'static str,
}

/// Requests by route template and status, and their latency.
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl HttpMetrics {
    pub fn registered(metrics: &Metrics) -> Self {
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
        Self {
            requests,
            durations,
        }
    }

    fn record(&self, method: &http::Method, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route,
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route,
            })
            .observe(seconds);
    }
}

pub async fn observe(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = Endpoint::of(gw.routes, &req);
    let template = endpoint.template;
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format_args!("{method} {template}"),
        otel.kind = "server",
        "ordermesh.role" = ordermesh_platform::identity::workloads::GATEWAY,
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = template,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
        request_id = request_id.as_str(),
        trace_id = Empty,
        "enduser.id" = Empty,
    );
    let _ = span.set_parent(telemetry::extract_context(req.headers()));
    span.record("trace_id", telemetry::trace_id_of(&span).as_str());
    req.extensions_mut().insert(endpoint);

    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // One line per request, inside its span (so it carries the request id, trace id and
    // user); never a token or a body.
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            method = %method,
            route = template,
            status = status.as_u16(),
            duration_ms = elapsed * 1000.0,
            "request"
        )
    });
    // Hand the client the trace it can paste into Jaeger.
    telemetry::inject_span(&span, res.headers_mut());
    gw.http_metrics
        .record(&method, template, status.as_u16(), elapsed);
    res
}
