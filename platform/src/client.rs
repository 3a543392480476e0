//! Channels to other mesh workloads: mTLS with this workload's certificate (or plaintext to
//! the local sidecar in Istio mode), lazy connection so workloads may start in any order,
//! balancing over several endpoints, and client spans and metrics on every call.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::{MeshConfig, MtlsMode};
use crate::metrics::Metrics;
use crate::rpc_layer::{RpcLayer, RpcService};
use crate::tls::{MeshCredentials, TlsError};

/// A channel with client tracing and metrics; what generated clients are built on.
pub type MeshChannel = RpcService<Channel>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint given for {0}")]
    NoEndpoint(String),
    #[error("invalid endpoint {endpoint:?}: {source}")]
    BadEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("builtin mTLS mode needs certificate files")]
    MissingTls,
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds channels for one workload.
#[derive(Clone)]
pub struct ChannelFactory {
    credentials: Option<MeshCredentials>,
    metrics: Arc<Metrics>,
}

impl ChannelFactory {
    pub fn new(mesh: &MeshConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let credentials = match mesh.mtls_mode {
            MtlsMode::Builtin => Some(MeshCredentials::load(
                mesh.tls.as_ref().ok_or(ClientError::MissingTls)?,
            )?),
            MtlsMode::Istio => None,
        };
        Ok(Self {
            credentials,
            metrics,
        })
    }

    /// A channel to `workload` (its service-account name, which its certificate carries as a
    /// DNS name) at one or more `endpoints` (`https://host:port`, comma-separated allowed).
    pub fn channel(&self, workload: &str, endpoints: &str) -> Result<MeshChannel, ClientError> {
        let mut built = Vec::new();
        for raw in endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let bad = |source| ClientError::BadEndpoint {
                endpoint: raw.to_string(),
                source,
            };
            let mut ep = Endpoint::from_shared(raw.to_string())
                .map_err(bad)?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            if let Some(creds) = &self.credentials {
                ep = ep
                    .tls_config(creds.client_config(workload))
                    .map_err(|source| ClientError::BadEndpoint {
                        endpoint: raw.to_string(),
                        source,
                    })?;
            }
            built.push(ep);
        }
        let channel = match built.len() {
            0 => return Err(ClientError::NoEndpoint(workload.to_string())),
            1 => built.remove(0).connect_lazy(),
            _ => Channel::balance_list(built.into_iter()),
        };
        Ok(tower::Layer::layer(
            &RpcLayer::client(self.metrics.clone()),
            channel,
        ))
    }
}
