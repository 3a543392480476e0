//! The gateway's state and its life: built once from the contracts and configuration,
//! serving the public and admin applications until shutdown, with the background work
//! (rate-limit sweeps, following revocations) beside them.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_platform::admission::AdmissionLimits;
use ordermesh_platform::http_server::{HttpSettings, serve_http};
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::shutdown::Shutdown;

use crate::auth::Verifier;
use crate::backends::Backends;
use crate::config::GatewayConfig;
use crate::limits::RateLimits;
use crate::observe::HttpMetrics;
use crate::routes::{self, Route};

pub use crate::request_id::REQUEST_ID;

pub struct Gateway {
    pub(crate) routes: &'static [Route],
    pub(crate) openapi: serde_json::Value,
    pub backends: Backends,
    pub(crate) verifier: Verifier,
    pub(crate) limits: RateLimits,
    pub metrics: Arc<Metrics>,
    pub(crate) http_metrics: HttpMetrics,
    pub(crate) config: GatewayConfig,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        backends: Backends,
        verifier: Verifier,
        metrics: Arc<Metrics>,
    ) -> Result<Self, routes::TemplateError> {
        let routes = routes::table()?;
        Ok(Self {
            openapi: crate::openapi::document(routes),
            routes,
            backends,
            verifier,
            limits: RateLimits::new(
                config.rate_default,
                config.rate_account,
                config.rate_address,
            )
            .with_api_keys(config.rate_api_key),
            http_metrics: HttpMetrics::registered(&metrics),
            metrics,
            config,
        })
    }

    /// The public application (see [`crate::pipeline`]).
    pub fn router(self: Arc<Self>) -> axum::Router {
        crate::pipeline::public_app(self)
    }

    /// The admin application: Prometheus metrics and each backend's state.
    pub fn admin_router(self: Arc<Self>) -> axum::Router {
        crate::pipeline::admin_app(self)
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
}
