//! Roles started in-process on ephemeral loopback ports with real mTLS, and clients that
//! present a chosen workload identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ordermesh::roles::{BoundService, JwtSettings, Role, RoleError, ServiceConfig, Upstreams};
use ordermesh_order_service::SagaSettings;
use ordermesh_platform::certs::{CertDir, MeshCa, local_dns_names};
use ordermesh_platform::client::{ChannelFactory, MeshChannel};
use ordermesh_platform::config::{ListenConfig, MeshConfig, MtlsMode, TlsFiles};
use ordermesh_platform::identity::{WorkloadId, workloads};
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::StoreConfig;
use tempfile::TempDir;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "ordermesh";

/// A dev mesh CA and a certificate for every workload, in a temporary directory.
pub struct TestCerts {
    _dir: TempDir,
    pub certs: CertDir,
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCerts {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = CertDir::new(dir.path());
        certs
            .ensure(TRUST_DOMAIN, NAMESPACE, workloads::ALL)
            .expect("issue certificates");
        Self { _dir: dir, certs }
    }

    pub fn files(&self, workload: &str) -> TlsFiles {
        self.certs.files_for(workload)
    }

    pub fn mesh_config(&self, workload: &str) -> MeshConfig {
        MeshConfig {
            trust_domain: TRUST_DOMAIN.into(),
            namespace: NAMESPACE.into(),
            mtls_mode: MtlsMode::Builtin,
            tls: Some(self.files(workload)),
        }
    }

    /// Rotates every workload's certificate to one from a new CA, the way a CA rotation rolls
    /// out: the bundle trusts both CAs, then each certificate is replaced, then only the new
    /// CA is trusted; `settle` passes after each step (the processes' reload interval and
    /// more). Files are replaced the way a Secret update lands: written aside, renamed in.
    pub async fn rotate_to_new_ca(&self, settle: Duration) -> MeshCa {
        let old_ca = std::fs::read_to_string(self.certs.ca_cert()).expect("old CA");
        let new_ca = MeshCa::generate("ordermesh rotated mesh CA").expect("new CA");
        replace_file(
            &self.certs.ca_cert(),
            &format!("{old_ca}{}", new_ca.pem.cert_pem),
        );
        tokio::time::sleep(settle).await;
        for workload in workloads::ALL {
            let id = WorkloadId::new(TRUST_DOMAIN, NAMESPACE, workload);
            let pair = new_ca
                .issue_for_days(&id, &local_dns_names(workload), 30)
                .expect("issue");
            let files = self.files(workload);
            // Key first, then certificate: a reader in between sees a mismatched pair and
            // keeps what it has until its next look.
            replace_file(&files.key, &pair.key_pem);
            replace_file(&files.cert, &pair.cert_pem);
        }
        tokio::time::sleep(settle).await;
        replace_file(&self.certs.ca_cert(), &new_ca.pem.cert_pem);
        tokio::time::sleep(settle).await;
        new_ca
    }

    /// A copy of the current files, to act later as a workload that missed a rotation.
    pub fn snapshot(&self) -> TestCerts {
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(&self.certs.dir)
            .expect("cert dir")
            .flatten()
        {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
        let certs = CertDir::new(dir.path());
        TestCerts { _dir: dir, certs }
    }

    /// A channel presenting `as_workload`'s certificate to the `target` workload at `addr`.
    pub fn channel(&self, as_workload: &str, target: &str, addr: SocketAddr) -> MeshChannel {
        ChannelFactory::new(&self.mesh_config(as_workload), Arc::new(Metrics::new()))
            .expect("channel factory")
            .channel(target, &format!("https://{addr}"))
            .expect("channel")
    }
}

fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// No upstreams: for roles that call nobody.
pub fn no_upstreams() -> Upstreams {
    Upstreams {
        user: String::new(),
        order: String::new(),
        payment: String::new(),
        audit: String::new(),
        notification: String::new(),
    }
}

/// Upstreams with only audit-service known.
pub fn audit_only(audit: SocketAddr) -> Upstreams {
    Upstreams {
        audit: format!("https://{audit}"),
        ..no_upstreams()
    }
}

/// Every role at one address: for a gateway test that only reaches some of them.
pub fn all_at(addr: SocketAddr) -> Upstreams {
    let at = format!("https://{addr}");
    Upstreams {
        user: at.clone(),
        order: at.clone(),
        payment: at.clone(),
        audit: at.clone(),
        notification: at,
    }
}

/// A role serving on loopback until stopped.
/// The configuration a test role runs with: its own certificate, loopback probe and metrics
/// ports, and a fast order saga.
pub fn service_config(
    role: Role,
    certs: &TestCerts,
    store: StoreConfig,
    grpc: SocketAddr,
    upstreams: Upstreams,
) -> ServiceConfig {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    ServiceConfig {
        mesh: certs.mesh_config(role.workload()),
        listen: ListenConfig {
            grpc,
            health: Some(loopback),
            metrics: Some(loopback),
        },
        store,
        upstreams,
        jwt: JwtSettings::default(),
        bootstrap_admin: None,
        saga: SagaSettings {
            payment_deadline: Duration::from_secs(2),
            redrive_every: Duration::from_millis(200),
        },
        seed_demo_catalog: false,
        mail: None,
        webhooks: ordermesh_notification_service::WebhookSettings {
            allow_private: true,
            retry_base: Duration::from_millis(200),
            ..Default::default()
        },
    }
}

pub struct RunningService {
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), RoleError>>,
}

impl RunningService {
    /// Starts `role` with its own certificate and an embedded store in `data_dir`.
    pub async fn start(role: Role, certs: &TestCerts, data_dir: &std::path::Path) -> Self {
        Self::start_at(role, certs, data_dir, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`Self::start`], with the gRPC port fixed (to restart a role where it was).
    pub async fn start_at(
        role: Role,
        certs: &TestCerts,
        data_dir: &std::path::Path,
        grpc: SocketAddr,
    ) -> Self {
        Self::start_with(role, certs, data_dir, grpc, no_upstreams()).await
    }

    /// Starts `role` with the given upstream endpoints.
    pub async fn start_with(
        role: Role,
        certs: &TestCerts,
        data_dir: &std::path::Path,
        grpc: SocketAddr,
        upstreams: Upstreams,
    ) -> Self {
        let store = StoreConfig::Embedded {
            data_dir: data_dir.to_path_buf(),
        };
        Self::start_on(role, certs, store, grpc, upstreams).await
    }

    /// Starts `role` on any store backend.
    pub async fn start_on(
        role: Role,
        certs: &TestCerts,
        store: StoreConfig,
        grpc: SocketAddr,
        upstreams: Upstreams,
    ) -> Self {
        Self::start_config(role, service_config(role, certs, store, grpc, upstreams)).await
    }

    /// Starts `role` with a configuration built by [`service_config`] and adjusted.
    pub async fn start_config(role: Role, config: ServiceConfig) -> Self {
        let bound = BoundService::bind(role, config).await.expect("bind");
        let shutdown = Shutdown::new();
        let (grpc_addr, health_addr, metrics_addr) = (
            bound.grpc_addr,
            bound.health_addr.expect("health port"),
            bound.metrics_addr.expect("metrics port"),
        );
        let task = tokio::spawn(bound.serve(shutdown.clone()));
        Self {
            grpc_addr,
            health_addr,
            metrics_addr,
            shutdown,
            task,
        }
    }

    /// Triggers shutdown and waits (bounded) for the role to drain and stop.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("service stops within 15 s")
            .expect("task joins")
            .expect("service ran without error");
    }
}

/// `GET path` over plain HTTP/1.1, returning status line and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// A request as the gateway forwards it for a signed-in user with `roles`.
pub fn with_roles<T>(msg: T, user: &str, roles: &[&str]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    ordermesh_platform::user_context::UserContext {
        user_id: user.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
    .inject(req.metadata_mut())
    .expect("user metadata");
    req
}

/// A request as the gateway forwards it for a signed-in user.
pub fn as_user<T>(msg: T, user: &str) -> tonic::Request<T> {
    with_roles(msg, user, &["user"])
}
