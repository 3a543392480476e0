//! The gateway's own endpoints: `/healthz`, `/readyz` and `/openapi.json` on the public
//! port; Prometheus metrics and each backend's state on the admin port, which is never
//! exposed publicly (the chart keeps it off the public Service).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use crate::problem::Problem;
use crate::request_id::RequestId;
use crate::server::Gateway;

pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The gateway's own endpoints answer GET (and HEAD) only; anything else is a 405 problem.
pub async fn get_only(request_id: RequestId) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "allowed: GET, HEAD",
    )
    .with_header(header::ALLOW, "GET, HEAD")
    .into_response_with(request_id.as_str())
}

pub async fn no_such_route(request_id: RequestId) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route")
        .into_response_with(request_id.as_str())
}

pub async fn openapi_json(State(gw): State<Arc<Gateway>>) -> Response {
    axum::Json(gw.openapi.clone()).into_response()
}

pub async fn metrics_text(State(gw): State<Arc<Gateway>>) -> Response {
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
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
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
pub async fn backends_health(State(gw): State<Arc<Gateway>>) -> Response {
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
                "circuit": if b.breaker().is_open() { "open" } else { "closed" },
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
