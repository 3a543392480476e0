//! The edge gateway as a test runs it: bound on an ephemeral loopback port in front of the
//! given upstreams, stopped (bounded) at the end.

use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams, build_gateway};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::StoreConfig;

use crate::http::Api;
use crate::mesh::{RunningService, TestCerts, audit_only, service_config};

pub const ADMIN_EMAIL: &str = "root@example.com";
pub const ADMIN_PASSWORD: &str = "a long admin secret";

pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/health/backends`.
    pub admin_addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// Starts the gateway; `config.http_addr` is replaced by the bound address.
    pub async fn start(certs: &TestCerts, upstreams: &Upstreams, config: GatewayConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("gateway address");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway admin");
        let admin_addr = admin.local_addr().expect("gateway admin address");
        let config = GatewayConfig {
            http_addr: addr,
            admin_addr: Some(admin_addr),
            ..config
        };
        let gateway = build_gateway(&certs.mesh_config(workloads::GATEWAY), config, upstreams)
            .expect("build gateway");
        let shutdown = Shutdown::new();
        let task = tokio::spawn(gateway.serve_with_admin(listener, Some(admin), shutdown.clone()));
        Self {
            addr,
            admin_addr,
            shutdown,
            task,
        }
    }

    /// A client of the admin listener.
    pub fn admin_port(&self) -> Api {
        Api {
            addr: self.admin_addr,
            token: None,
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            addr: self.addr,
            token: None,
        }
    }

    /// Logs in through the gateway and returns a client carrying the access token.
    pub async fn login(&self, email: &str, password: &str) -> Api {
        self.anonymous().login(email, password).await
    }

    /// Registers an account and logs it in.
    pub async fn new_user(&self, email: &str) -> Api {
        self.anonymous().new_user(email).await
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("gateway stops within 15 s")
            .expect("task joins")
            .expect("gateway ran without error");
    }
}

/// user-service with the bootstrap admin ([`ADMIN_EMAIL`]), sending its events to `audit`.
pub async fn user_service_with_admin(
    certs: &TestCerts,
    data_dir: &std::path::Path,
    audit: SocketAddr,
) -> RunningService {
    let mut config = service_config(
        Role::User,
        certs,
        StoreConfig::Embedded {
            data_dir: data_dir.to_path_buf(),
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
        audit_only(audit),
    );
    config.bootstrap_admin = Some((ADMIN_EMAIL.into(), ADMIN_PASSWORD.into()));
    RunningService::start_config(Role::User, config).await
}

/// The gateway in front of real audit- and user-services (the bootstrap admin included); the
/// other backends point at audit-service, for tests that need sign-in and nothing else.
pub struct SignInMesh {
    pub audit: RunningService,
    pub user: RunningService,
    pub gateway: RunningGateway,
    _dirs: Vec<tempfile::TempDir>,
}

impl SignInMesh {
    pub async fn start(certs: &TestCerts, config: GatewayConfig) -> Self {
        let dirs: Vec<_> = (0..2)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let audit = RunningService::start(Role::Audit, certs, dirs[0].path()).await;
        let user = user_service_with_admin(certs, dirs[1].path(), audit.grpc_addr).await;
        let at = |a: SocketAddr| format!("https://{a}");
        let upstreams = Upstreams {
            user: at(user.grpc_addr),
            order: at(audit.grpc_addr),
            payment: at(audit.grpc_addr),
            audit: at(audit.grpc_addr),
            notification: at(audit.grpc_addr),
        };
        let gateway = RunningGateway::start(certs, &upstreams, config).await;
        Self {
            audit,
            user,
            gateway,
            _dirs: dirs,
        }
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
        self.user.stop().await;
        self.audit.stop().await;
    }
}
