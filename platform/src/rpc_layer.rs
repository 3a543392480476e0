//! Tracing and metrics for every gRPC call, as tower layers: a server layer that continues
//! the caller's W3C trace and a client layer that starts a client span and injects it.
//! Span names and attributes follow the OpenTelemetry RPC semantic conventions.
//!
//! The status is read from the response headers: unary errors are trailers-only responses,
//! so their `grpc-status` is there; a response that starts streaming counts as OK.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use ordermesh_contracts::descriptors;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{Metrics, RpcLabels};
use crate::telemetry;

/// `(service, method)` of a gRPC path, with names outside the contracts collapsed so that
/// labels and span names stay bounded.
pub fn rpc_names(path: &str) -> (String, String) {
    let known = descriptors::method_by_path(path).is_some()
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.");
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if known => (service.to_string(), method.to_string()),
        _ => ("unknown".to_string(), "unknown".to_string()),
    }
}

/// The gRPC status code name of a response (`OK` unless the headers carry another).
pub fn grpc_code<B>(res: &Response<B>) -> tonic::Code {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok)
}

/// tonic answers a request body that is not a valid message with INTERNAL; it is the
/// caller's mistake, so it becomes INVALID_ARGUMENT (the message, naming the field, stays).
fn undecodable_is_invalid_argument<B>(res: &mut Response<B>) {
    let undecodable = grpc_code(res) == tonic::Code::Internal
        && res.headers().get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.starts_with(b"failed to decode Protobuf message")
                || m.starts_with(b"failed%20to%20decode%20Protobuf%20message")
        });
    if undecodable {
        res.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
}

/// The canonical name of a gRPC code (`OK`, `NOT_FOUND`), as gRPC and OpenTelemetry spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Server,
    Client,
}

/// Tracing + metrics around a gRPC service (`Side::Server`) or channel (`Side::Client`).
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    side: Side,
    /// Where a client's calls go (`server.address`, `server.port`): the configured target,
    /// since a balanced channel's requests carry no authority.
    target: Option<(String, u16)>,
}

impl RpcLayer {
    pub fn server(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            side: Side::Server,
            target: None,
        }
    }
    pub fn client(metrics: Arc<Metrics>, host: &str, port: u16) -> Self {
        Self {
            metrics,
            side: Side::Client,
            target: Some((host.to_string(), port)),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
            side: self.side,
            target: self.target.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    side: Side,
    target: Option<(String, u16)>,
}

impl<S> RpcService<S> {
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> tower::Service<Request<B>> for RpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (service, method) = rpc_names(req.uri().path());
        let name = format!("{service}/{method}");
        let span = match self.side {
            Side::Server => tracing::info_span!(
                "grpc.server",
                otel.name = %name,
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                "ordermesh.role" = self.metrics.role().unwrap_or_default(),
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                trace_id = Empty,
                // The gateway's request id, so a service's log lines name the request too.
                request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
            ),
            Side::Client => tracing::info_span!(
                "grpc.client",
                otel.name = %name,
                otel.kind = "client",
                otel.status_code = Empty,
                rpc.system = "grpc",
                "ordermesh.role" = self.metrics.role().unwrap_or_default(),
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                server.address = self.target.as_ref().map_or("", |t| t.0.as_str()),
                server.port = self.target.as_ref().map_or(0, |t| t.1),
                trace_id = Empty,
            ),
        };
        match self.side {
            Side::Server => {
                let parent = telemetry::extract_context(req.headers());
                let _ = span.set_parent(parent);
            }
            Side::Client => telemetry::inject_span(&span, req.headers_mut()),
        }
        span.record("trace_id", telemetry::trace_id_of(&span).as_str());

        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let side = self.side;
        let started = Instant::now();
        let fut_span = span.clone();
        async move {
            let mut result = inner.call(req).await;
            if side == Side::Server
                && let Ok(res) = result.as_mut()
            {
                undecodable_is_invalid_argument(res);
            }
            let code = match &result {
                Ok(res) => grpc_code(res),
                Err(_) => tonic::Code::Unavailable,
            };
            span.record("rpc.grpc.status_code", code as i32);
            if code != tonic::Code::Ok {
                span.record("otel.status_code", "ERROR");
            }
            let labels = RpcLabels {
                rpc_service: service,
                rpc_method: method,
                grpc_code: code_name(code).to_string(),
            };
            match side {
                Side::Server => metrics.observe_server(labels, started.elapsed()),
                Side::Client => metrics.observe_client(labels, started.elapsed()),
            }
            result
        }
        .instrument(fut_span)
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_contracts_only() {
        assert_eq!(
            rpc_names("/ordermesh.order.v1.OrderService/GetOrder"),
            ("ordermesh.order.v1.OrderService".into(), "GetOrder".into())
        );
        assert_eq!(
            rpc_names("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".into(), "Check".into())
        );
        assert_eq!(
            rpc_names("/x.Y/random-123"),
            ("unknown".into(), "unknown".into())
        );
    }
}
