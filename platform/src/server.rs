//! The one way ordermesh serves gRPC: mTLS (or Istio plaintext), per-method authorization,
//! tracing and metrics layers, `grpc.health.v1`, server reflection v1 and v1alpha listing the
//! hosted services, a plaintext health port for kubelet probes, `/metrics`, and graceful
//! shutdown that drains in-flight calls.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::Service;

use crate::admission::{Admission, AdmissionLimits};
use crate::authz::{AuthzLayer, AuthzPolicy};
use crate::config::MeshConfig;
use crate::constraints::ConstraintLayer;
use crate::metrics::Metrics;
use crate::rpc_layer::RpcLayer;
use crate::shutdown::Shutdown;
use crate::tls::{ReloadingCredentials, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("builtin mTLS mode needs certificate files")]
    MissingTls,
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// The sockets a gRPC workload serves on, bound by the caller (so tests can use port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub health: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// How long in-flight calls (including server streams) may run after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC workload: its services, plus everything every ordermesh server has.
pub struct GrpcServer {
    mesh: MeshConfig,
    metrics: Arc<Metrics>,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
}

impl GrpcServer {
    pub fn new(mesh: MeshConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            mesh,
            metrics,
            routes: Routes::builder(),
            service_names: Vec::new(),
        }
    }

    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Serves until `shutdown` triggers, then reports NOT_SERVING, stops accepting and drains
    /// in-flight calls for at most [`DRAIN_TIMEOUT`].
    pub async fn serve(self, listeners: Listeners, shutdown: Shutdown) -> Result<(), ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.service_names {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }

        let mut reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in self
            .service_names
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health"])
        {
            reflection_v1 = reflection_v1.with_service_name(name);
            reflection_v1alpha = reflection_v1alpha.with_service_name(name);
        }

        let mut routes = self.routes;
        routes
            .add_service(health.clone())
            .add_service(reflection_v1.build_v1()?)
            .add_service(reflection_v1alpha.build_v1alpha()?);

        let credentials = match self.mesh.mtls_mode {
            crate::config::MtlsMode::Builtin => {
                let files = self.mesh.tls.as_ref().ok_or(ServeError::MissingTls)?;
                Some(ReloadingCredentials::watch(files)?)
            }
            crate::config::MtlsMode::Istio => None,
        };
        // Dead peers are found by HTTP/2 pings; silent and handshake-less connections are
        // closed by the incoming streams; connection caps per process and per address.
        let builder = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let admission = Admission::new(AdmissionLimits::for_this_process());
        let policy = AuthzPolicy {
            trust_domain: self.mesh.trust_domain.clone(),
            namespace: self.mesh.namespace.clone(),
            mode: self.mesh.mtls_mode,
        };
        let layers = tower::ServiceBuilder::new()
            .layer(RpcLayer::server(self.metrics.clone()))
            .layer(AuthzLayer::new(policy))
            // After authorization: a caller that may not call a method learns nothing of
            // its input rules.
            .layer(ConstraintLayer);

        let grpc_addr = listeners.grpc.local_addr()?;
        let drain = {
            let shutdown = shutdown.clone();
            let reporter = reporter.clone();
            let names = self.service_names.clone();
            async move {
                shutdown.wait().await;
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                for name in names {
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            }
        };
        let router = builder.layer(layers).add_routes(routes.routes());
        let grpc: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match credentials {
            Some(credentials) => Box::pin(router.serve_with_incoming_shutdown(
                crate::net::tls_incoming(listeners.grpc, credentials, admission),
                drain,
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(
                crate::net::grpc_incoming(listeners.grpc, admission),
                drain,
            )),
        };

        let mut side_tasks = tokio::task::JoinSet::new();
        if let Some(listener) = listeners.health {
            let health = health.clone();
            let shutdown = shutdown.clone();
            side_tasks.spawn(async move {
                Server::builder()
                    .add_service(health)
                    .serve_with_incoming_shutdown(
                        crate::net::grpc_incoming(
                            listener,
                            Admission::new(AdmissionLimits {
                                max_connections: 64,
                                max_per_address: 16,
                                exempt: Vec::new(),
                            }),
                        ),
                        shutdown.wait(),
                    )
                    .await
                    .map_err(ServeError::from)
            });
        }
        if let Some(listener) = listeners.metrics {
            let metrics = self.metrics.clone();
            let shutdown = shutdown.clone();
            side_tasks.spawn(async move {
                crate::metrics::serve(listener, metrics, shutdown.wait())
                    .await
                    .map_err(ServeError::from)
            });
        }

        tracing::info!(addr = %grpc_addr, services = ?self.service_names, mode = ?self.mesh.mtls_mode, "gRPC server listening");
        let deadline = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            }
        };
        let result = tokio::select! {
            r = grpc => r.map_err(ServeError::from),
            _ = deadline => {
                tracing::warn!("drain timeout: closing remaining calls");
                Ok(())
            }
        };
        // Side servers stop on the same trigger; make sure they do even after an error.
        shutdown.trigger();
        while let Some(joined) = side_tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = %e, "side server ended with an error");
            }
        }
        tracing::info!(addr = %grpc_addr, "gRPC server stopped");
        result
    }
}
