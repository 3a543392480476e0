//! The gateway's own metrics, beside the HTTP and RPC ones: circuit breakers, retries and
//! the retry budget, rate-limit rejections and JWKS refresh failures, so `/metrics` answers
//! "is a circuit open?", "are retries burning the budget?" and "who is being limited?".

use std::sync::Arc;

use ordermesh_platform::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub backend: String,
    /// `open`, `half_open` or `closed`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// `address`, `account` or `user`.
    pub bucket: String,
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub breaker_open: Family<BackendLabels, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub retries: Family<BackendLabels, Counter>,
    pub retry_budget_exhausted: Family<BackendLabels, Counter>,
    pub rate_limited: Family<BucketLabels, Counter>,
    pub jwks_refresh_failures: Counter,
}

impl GatewayMetrics {
    /// The families, registered in `metrics` (as `ordermesh_gateway_*`).
    pub fn registered(metrics: &Metrics) -> Arc<Self> {
        let m = Arc::new(Self::default());
        metrics.with_registry(|r| {
            r.register(
                "gateway_circuit_breaker_open",
                "1 while a backend's circuit is open (calls fail fast), else 0",
                m.breaker_open.clone(),
            );
            r.register(
                "gateway_circuit_breaker_transitions",
                "Circuit breaker state changes, by backend and the state entered",
                m.breaker_transitions.clone(),
            );
            r.register(
                "gateway_retries",
                "Calls retried, by backend",
                m.retries.clone(),
            );
            r.register(
                "gateway_retry_budget_exhausted",
                "Retries refused because the backend's retry budget was spent",
                m.retry_budget_exhausted.clone(),
            );
            r.register(
                "gateway_rate_limited",
                "Requests refused by a rate limit (429), by bucket",
                m.rate_limited.clone(),
            );
            r.register(
                "gateway_jwks_refresh_failures",
                "Failed fetches of the token signing keys (JWKS)",
                m.jwks_refresh_failures.clone(),
            );
        });
        m
    }

    pub fn backend(backend: &str) -> BackendLabels {
        BackendLabels {
            backend: backend.to_string(),
        }
    }
}
