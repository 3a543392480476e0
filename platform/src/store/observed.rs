//! Every store operation, embedded or DynamoDB, as an OpenTelemetry CLIENT span following the
//! database conventions (`db.system.name`, `db.operation.name` named as DynamoDB names its
//! operations, `db.collection.name`), a child of whatever RPC made it, and in the metrics
//! `ordermesh_store_operation_duration_seconds` and `ordermesh_store_operation_errors_total`
//! by operation, backend and table.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;
use tracing::field::Empty;

use super::StoreError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: String,
    /// `embedded` or `dynamodb`.
    pub backend: String,
    pub table: String,
}

struct StoreMetrics {
    duration: Family<StoreLabels, Histogram, fn() -> Histogram>,
    errors: Family<StoreLabels, Counter>,
}

fn buckets() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn metrics() -> &'static StoreMetrics {
    static METRICS: OnceLock<StoreMetrics> = OnceLock::new();
    METRICS.get_or_init(|| StoreMetrics {
        duration: Family::new_with_constructor(buckets),
        errors: Family::default(),
    })
}

/// Adds the store families (shared by every table of the process) to `registry`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    registry.register(
        "store_operation_duration_seconds",
        "Store operation latency, by operation, backend and table",
        m.duration.clone(),
    );
    registry.register(
        "store_operation_errors",
        "Store operations that failed, by operation, backend and table",
        m.errors.clone(),
    );
}

fn backend_of(system: &str) -> &'static str {
    if system == "aws.dynamodb" {
        "dynamodb"
    } else {
        "embedded"
    }
}

/// Runs one store operation inside its span, recording latency and failures.
pub(super) async fn call<T>(
    system: &'static str,
    table: &str,
    operation: &'static str,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    // Only as a child: a background poll that finds nothing (an idle outbox relay, the
    // re-driver) is not a trace of its own.
    let span = if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        "db.client",
        otel.name = %format!("{operation} {table}"),
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = %table,
        "error.type" = Empty,
        )
    };
    let started = Instant::now();
    let result = op.instrument(span.clone()).await;
    let labels = StoreLabels {
        operation: operation.to_string(),
        backend: backend_of(system).to_string(),
        table: table.to_string(),
    };
    let m = metrics();
    m.duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    // A failed condition is an answer (the caller's race lost), not a store failure.
    if let Err(e) = &result
        && !matches!(e, StoreError::ConditionFailed { .. })
    {
        m.errors.get_or_create(&labels).inc();
        span.record("otel.status_code", "ERROR");
        span.record("error.type", e.kind());
    }
    result
}
