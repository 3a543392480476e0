//! One image, many roles: each role is one workload of the mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ordermesh_audit_service::{AuditLog, AuditServer};
use ordermesh_platform::config::{ConfigError, ListenConfig, MeshConfig};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::server::{GrpcServer, Listeners, ServeError};
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::StoreError;
use ordermesh_platform::store::schema::{self, StoreConfig};
use tokio::net::TcpListener;

/// The roles `ordermesh serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Audit,
}

impl Role {
    /// Every service role, in start order.
    pub const SERVICES: &'static [Role] = &[Role::Audit];

    /// The short name `serve` and `mesh.json` use.
    pub fn short_name(self) -> &'static str {
        match self {
            Role::Audit => "audit",
        }
    }

    /// The workload (service account) name of the role.
    pub fn workload(self) -> &'static str {
        match self {
            Role::Audit => workloads::AUDIT,
        }
    }

    /// The local default gRPC address.
    pub fn default_grpc_addr(self) -> SocketAddr {
        match self {
            Role::Audit => SocketAddr::from(([127, 0, 0, 1], 50054)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("role task failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a service role needs to run.
pub struct ServiceConfig {
    pub mesh: MeshConfig,
    pub listen: ListenConfig,
    pub store: StoreConfig,
}

impl ServiceConfig {
    /// From `ORDERMESH_*` variables (see the README), with local defaults.
    pub fn from_env(role: Role) -> Result<Self, ConfigError> {
        Ok(Self {
            mesh: MeshConfig::from_env()?,
            listen: ListenConfig::from_env(role.default_grpc_addr())?,
            store: StoreConfig::from_env(PathBuf::from(".ordermesh/data"))?,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RoleError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RoleError::Bind { addr, source })
}

/// Sockets bound for a role, so callers learn the real ports before serving.
pub struct BoundService {
    pub role: Role,
    pub grpc_addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    listeners: Listeners,
    config: ServiceConfig,
}

impl BoundService {
    pub async fn bind(role: Role, config: ServiceConfig) -> Result<Self, RoleError> {
        let grpc = bind(config.listen.grpc).await?;
        let health = match config.listen.health {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let metrics = match config.listen.metrics {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let local = |l: &TcpListener| l.local_addr().ok();
        Ok(Self {
            role,
            grpc_addr: local(&grpc).unwrap_or(config.listen.grpc),
            health_addr: health.as_ref().and_then(local),
            metrics_addr: metrics.as_ref().and_then(local),
            listeners: Listeners {
                grpc,
                health,
                metrics,
            },
            config,
        })
    }

    /// Opens the role's store and serves until `shutdown` triggers and calls drain.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), RoleError> {
        let metrics = Arc::new(Metrics::new());
        let server = GrpcServer::new(self.config.mesh.clone(), metrics);
        let server = match self.role {
            Role::Audit => {
                let table = self.config.store.open(schema::AUDIT).await?;
                server.add_service(AuditServer::new(AuditLog::new(table)).into_service())
            }
        };
        server.serve(self.listeners, shutdown).await?;
        Ok(())
    }
}
