//! The gateway's own metrics, beside the HTTP, RPC and outbound ones (circuit breakers and
//! retries are every mesh client's, in `ordermesh_platform::resilience`): rate-limit
//! rejections and JWKS refresh failures, so `/metrics` answers "who is being limited?" and
//! "can tokens still be checked?".

use std::sync::Arc;

use ordermesh_platform::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// `address`, `account` or `user`.
    pub bucket: String,
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub rate_limited: Family<BucketLabels, Counter>,
    pub jwks_refresh_failures: Counter,
}

impl GatewayMetrics {
    /// The families, registered in `metrics` (as `ordermesh_gateway_*`).
    pub fn registered(metrics: &Metrics) -> Arc<Self> {
        let m = Arc::new(Self::default());
        metrics.with_registry(|r| {
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
}
