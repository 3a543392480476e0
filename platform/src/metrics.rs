//! Prometheus metrics: per-method request counts and latency histograms, served as text on
//! `/metrics`. Labels use the method names from the contracts (never raw paths), so an
//! unknown path cannot blow up cardinality.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_service: String,
    pub rpc_method: String,
    pub grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcMethodLabels {
    pub rpc_service: String,
    pub rpc_method: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub role: String,
}

/// A process's metrics registry with the RPC server and client families registered.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `process_*`, without the `ordermesh_` prefix.
    process: Registry,
    build_info: Family<BuildLabels, Gauge>,
    role: std::sync::OnceLock<String>,
    pub server_requests: Family<RpcLabels, Counter>,
    pub server_duration: Family<RpcMethodLabels, Histogram, fn() -> Histogram>,
    pub client_requests: Family<RpcLabels, Counter>,
    pub client_duration: Family<RpcMethodLabels, Histogram, fn() -> Histogram>,
    client: std::sync::OnceLock<Arc<crate::resilience::ClientMetrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ordermesh");
        let server_requests = Family::<RpcLabels, Counter>::default();
        let server_duration =
            Family::<RpcMethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let client_requests = Family::<RpcLabels, Counter>::default();
        let client_duration =
            Family::<RpcMethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "rpc_server_requests",
            "gRPC requests handled, by method and status code",
            server_requests.clone(),
        );
        registry.register(
            "rpc_server_duration_seconds",
            "gRPC server latency until response headers, by method",
            server_duration.clone(),
        );
        registry.register(
            "rpc_client_requests",
            "gRPC requests made to other workloads, by method and status code",
            client_requests.clone(),
        );
        registry.register(
            "rpc_client_duration_seconds",
            "gRPC client latency until response headers, by method",
            client_duration.clone(),
        );
        crate::store::observed::register(&mut registry);
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "The version and role of this process (always 1)",
            build_info.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Self {
            registry: Mutex::new(registry),
            process,
            build_info,
            role: std::sync::OnceLock::new(),
            client: std::sync::OnceLock::new(),
            server_requests,
            server_duration,
            client_requests,
            client_duration,
        }
    }

    /// Lets other components (stores, gateways) add their own metrics.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Names the role this process (or, under `up`, this registry) serves, as
    /// `ordermesh_build_info{version, role} 1`.
    pub fn set_role(&self, role: &str) {
        let _ = self.role.set(role.to_string());
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                role: role.to_string(),
            })
            .set(1);
    }

    /// The role named by [`Metrics::set_role`], if any.
    /// Breakers and retries of this process's outbound calls (registered on first use).
    pub fn client(&self) -> Arc<crate::resilience::ClientMetrics> {
        self.client
            .get_or_init(|| {
                let m = Arc::new(crate::resilience::ClientMetrics::default());
                m.register(self);
                m
            })
            .clone()
    }

    pub fn role(&self) -> Option<&str> {
        self.role.get().map(String::as_str)
    }

    /// The Prometheus text exposition of every registered metric, the process's own
    /// (`process_*`, conventionally unprefixed) first.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let process = prometheus_client::encoding::text::encode_registry(&mut out, &self.process);
        let result = process.and_then(|_| {
            self.with_registry(|r| prometheus_client::encoding::text::encode(&mut out, r))
        });
        match result {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }

    pub fn observe_server(&self, labels: RpcLabels, elapsed: Duration) {
        self.server_duration
            .get_or_create(&RpcMethodLabels {
                rpc_service: labels.rpc_service.clone(),
                rpc_method: labels.rpc_method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.server_requests.get_or_create(&labels).inc();
    }

    pub fn observe_client(&self, labels: RpcLabels, elapsed: Duration) {
        self.client_duration
            .get_or_create(&RpcMethodLabels {
                rpc_service: labels.rpc_service.clone(),
                rpc_method: labels.rpc_method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.client_requests.get_or_create(&labels).inc();
    }
}

pub const PROMETHEUS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The axum route serving `/metrics` for `metrics`.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let settings = crate::http_server::HttpSettings::new(
        crate::http_server::HttpSettings::DEFAULT_HEADER_TIMEOUT,
        crate::admission::AdmissionLimits {
            max_connections: 256,
            max_per_address: 64,
            exempt: Vec::new(),
        },
    );
    crate::http_server::serve_http(listener, router(metrics), settings, shutdown).await
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counts_and_histograms_by_method() {
        let m = Metrics::new();
        let labels = RpcLabels {
            rpc_service: "ordermesh.order.v1.OrderService".into(),
            rpc_method: "GetOrder".into(),
            grpc_code: "OK".into(),
        };
        m.observe_server(labels.clone(), Duration::from_millis(3));
        m.observe_server(labels, Duration::from_millis(5));
        let text = m.encode();
        assert!(
            text.contains(
                "ordermesh_rpc_server_requests_total{rpc_service=\"ordermesh.order.v1.OrderService\",rpc_method=\"GetOrder\",grpc_code=\"OK\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("ordermesh_rpc_server_duration_seconds_count"),
            "{text}"
        );
    }
}
