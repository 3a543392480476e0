//! `ordermesh up`: the whole mesh on loopback for local use. Issues the dev CA and workload
//! certificates on first run, starts every role with real mTLS between them and the embedded
//! store under the data directory, writes `<data-dir>/mesh.json` for tools and removes it on
//! shutdown. Ctrl-C drains every role.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ordermesh_platform::certs::CertDir;
use ordermesh_platform::config::{ListenConfig, MeshConfig, MtlsMode};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::StoreConfig;

use crate::roles::{BoundService, JwtSettings, Role, RoleError, ServiceConfig, Upstreams};
use ordermesh_notification_service::{MailSettings, MailTransport, WebhookSettings};
use ordermesh_order_service::SagaSettings;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("certificates: {0}")]
    Certs(#[from] ordermesh_platform::certs::CertError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("edge-gateway configuration: {0}")]
    GatewayConfig(#[from] ordermesh_platform::config::ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Options of `ordermesh up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    /// First gRPC port; roles take consecutive ports from here (0: all ephemeral).
    pub base_port: u16,
    /// The gateway's HTTP port (0: ephemeral).
    pub http_port: u16,
    /// Where the services keep their data.
    pub store: UpStore,
}

/// The store `up` runs on.
#[derive(Debug, Clone, Default)]
pub enum UpStore {
    /// The embedded store under `<data-dir>/store`.
    #[default]
    Embedded,
    /// DynamoDB (or a DynamoDB-compatible server at `endpoint`); tables are created if missing.
    DynamoDb {
        endpoint: Option<String>,
        table_prefix: String,
    },
}

/// Binds `preferred`, or an ephemeral loopback port when it is taken.
async fn free_addr(preferred: u16) -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], preferred));
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => addr,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// The mesh as started: what `mesh.json` says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshInfo {
    pub gateway: String,
    /// The gateway's admin endpoints (`/metrics`, `/health/backends`).
    pub gateway_admin: String,
    pub services: std::collections::BTreeMap<String, String>,
    /// Every role's Prometheus endpoint, by workload.
    pub metrics: std::collections::BTreeMap<String, String>,
    /// Every role's health check, by workload: the gateway's `/readyz`, and the services'
    /// `grpc.health.v1` on their gRPC port.
    pub health: std::collections::BTreeMap<String, String>,
    pub tls: TlsInfo,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsInfo {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

struct AdminCredentials {
    email: String,
    password: String,
    created: bool,
}

/// The admin account of this data directory: read from `admin.json`, or made up and written
/// there (mode 0600) on first run.
fn admin_credentials(data_dir: &Path) -> Result<AdminCredentials, UpError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        email: String,
        password: String,
    }
    let path = data_dir.join("admin.json");
    let io = |source| UpError::Io {
        path: path.clone(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(stored) = serde_json::from_str::<Stored>(&text)
    {
        return Ok(AdminCredentials {
            email: stored.email,
            password: stored.password,
            created: false,
        });
    }
    let stored = Stored {
        email: "admin@ordermesh.local".into(),
        password: format!(
            "{}-{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )[..32]
            .to_string(),
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.write_all(
        serde_json::to_string_pretty(&stored)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(io)?;
    Ok(AdminCredentials {
        email: stored.email,
        password: stored.password,
        created: true,
    })
}

fn endpoint(info: &MeshInfo, role: Role) -> String {
    info.services
        .get(role.short_name())
        .map(|addr| format!("https://{addr}"))
        .unwrap_or_default()
}

/// Runs the mesh until `shutdown` triggers.
pub async fn up(options: UpOptions, shutdown: Shutdown) -> Result<(), UpError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpError::Io { path, source }
    };
    std::fs::create_dir_all(&options.data_dir).map_err(io(&options.data_dir))?;
    let cert_dir = CertDir::new(options.data_dir.join("certs"));
    let issued = cert_dir.ensure(
        MeshConfig::DEFAULT_TRUST_DOMAIN,
        MeshConfig::DEFAULT_NAMESPACE,
        workloads::ALL,
    )?;
    if !issued.is_empty() {
        println!("issued dev mesh certificates in {}", cert_dir.dir.display());
    }

    let mut tasks = tokio::task::JoinSet::new();
    let admin = admin_credentials(&options.data_dir)?;
    let store = match &options.store {
        UpStore::Embedded => StoreConfig::Embedded {
            data_dir: options.data_dir.join("store"),
        },
        UpStore::DynamoDb {
            endpoint,
            table_prefix,
        } => {
            let local = endpoint.is_some();
            let env_missing = |v: &str| std::env::var_os(v).is_none();
            let config =
                StoreConfig::DynamoDb(ordermesh_platform::store::dynamodb::DynamoSettings {
                    table_prefix: table_prefix.clone(),
                    endpoint: endpoint.clone(),
                    // A local DynamoDB-compatible server needs a region and some credentials.
                    region: (local && env_missing("AWS_REGION")).then(|| "us-east-1".to_string()),
                    static_credentials: (local && env_missing("AWS_ACCESS_KEY_ID"))
                        .then(|| ("local".to_string(), "local".to_string())),
                });
            let created = config.create_tables().await.map_err(RoleError::Store)?;
            if !created.is_empty() {
                println!("created DynamoDB tables {}", created.join(", "));
            }
            config
        }
    };
    // One signing key for the data directory, whatever the store.
    let signing_key = options.data_dir.join("jwt-signing-key.pem");
    ordermesh_user_service::SigningKeys::load_or_create(&signing_key).map_err(RoleError::Keys)?;
    let mut info = MeshInfo {
        gateway: String::new(),
        gateway_admin: String::new(),
        services: Default::default(),
        metrics: Default::default(),
        health: Default::default(),
        tls: {
            let op = cert_dir.files_for(workloads::OPERATOR);
            TlsInfo {
                ca: absolute(&op.ca),
                cert: absolute(&op.cert),
                key: absolute(&op.key),
            }
        },
    };
    // Without a relay configured, each email is an `.eml` file a newcomer can open.
    let mail = crate::roles::mail_from_env()?
        .unwrap_or_else(|| MailSettings::files(options.data_dir.join("mail")));
    // Bind every role first so each knows where the others really are.
    let mut bound = Vec::new();
    for role in Role::SERVICES.iter().copied() {
        let port = if options.base_port == 0 {
            0
        } else {
            options.base_port + role.port_offset()
        };
        let config = ServiceConfig {
            mesh: MeshConfig {
                trust_domain: MeshConfig::DEFAULT_TRUST_DOMAIN.into(),
                namespace: MeshConfig::DEFAULT_NAMESPACE.into(),
                mtls_mode: MtlsMode::Builtin,
                tls: Some(cert_dir.files_for(role.workload())),
            },
            listen: ListenConfig {
                grpc: free_addr(port).await,
                health: None,
                metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            },
            store: store.clone(),
            // Replaced below, once every role is bound and its real address known.
            upstreams: Upstreams::local(options.base_port.max(1)),
            jwt: JwtSettings {
                signing_key_file: Some(signing_key.clone()),
                ..JwtSettings::default()
            },
            bootstrap_admin: (role == Role::User)
                .then(|| (admin.email.clone(), admin.password.clone())),
            saga: SagaSettings::default(),
            seed_demo_catalog: true,
            mail: Some(mail.clone()),
            // Local runs: receivers on this machine, over plain http, are fine.
            webhooks: WebhookSettings {
                allow_private: true,
                ..crate::roles::webhooks_from_env()?
            },
        };
        let service = BoundService::bind(role, config).await?;
        info.services
            .insert(role.short_name().to_string(), service.grpc_addr.to_string());
        bound.push(service);
    }
    let upstreams = Upstreams {
        user: endpoint(&info, Role::User),
        order: endpoint(&info, Role::Order),
        payment: endpoint(&info, Role::Payment),
        audit: endpoint(&info, Role::Audit),
        notification: endpoint(&info, Role::Notification),
    };
    for mut service in bound {
        service.config_mut().upstreams = upstreams.clone();
        println!(
            "{:<20} grpc {}  metrics http://{}/metrics",
            service.role.workload(),
            service.grpc_addr,
            service
                .metrics_addr
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let workload = service.role.workload().to_string();
        if let Some(addr) = service.metrics_addr {
            info.metrics
                .insert(workload.clone(), format!("http://{addr}/metrics"));
        }
        info.health.insert(
            workload,
            format!("grpc://{} (grpc.health.v1)", service.grpc_addr),
        );
        tasks.spawn(service.serve(shutdown.clone()));
    }

    let gateway_listener = tokio::net::TcpListener::bind(free_addr(options.http_port).await)
        .await
        .map_err(io(&options.data_dir))?;
    let gateway_addr = gateway_listener
        .local_addr()
        .map_err(io(&options.data_dir))?;
    let gateway_mesh = MeshConfig {
        trust_domain: MeshConfig::DEFAULT_TRUST_DOMAIN.into(),
        namespace: MeshConfig::DEFAULT_NAMESPACE.into(),
        mtls_mode: MtlsMode::Builtin,
        tls: Some(cert_dir.files_for(workloads::GATEWAY)),
    };
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io(&options.data_dir))?;
    let admin_addr = admin_listener.local_addr().map_err(io(&options.data_dir))?;
    // The gateway's limits, timeouts and origins follow the same ORDERMESH_* variables as
    // `ordermesh serve edge-gateway`; its addresses are up's own.
    let gateway_config = ordermesh_edge_gateway::GatewayConfig {
        http_addr: gateway_addr,
        admin_addr: Some(admin_addr),
        ..ordermesh_edge_gateway::GatewayConfig::from_env()?
    };
    let gateway = crate::roles::build_gateway(&gateway_mesh, gateway_config, &upstreams)?;
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            gateway
                .serve_with_admin(gateway_listener, Some(admin_listener), shutdown)
                .await
                .map_err(RoleError::Io)
        });
    }
    info.gateway = format!("http://{gateway_addr}");
    info.gateway_admin = format!("http://{admin_addr}");
    info.metrics.insert(
        workloads::GATEWAY.to_string(),
        format!("http://{admin_addr}/metrics"),
    );
    info.health.insert(
        workloads::GATEWAY.to_string(),
        format!("http://{gateway_addr}/readyz"),
    );
    println!(
        "{:<20} http://{gateway_addr}  admin http://{admin_addr}/metrics",
        workloads::GATEWAY
    );

    let mesh_json = options.data_dir.join("mesh.json");
    let text = serde_json::to_string_pretty(&info).unwrap_or_default();
    std::fs::write(&mesh_json, text).map_err(io(&mesh_json))?;
    if let Some(addr) = info.services.values().next() {
        println!(
            "grpcurl: grpcurl -cacert {} -cert {} -key {} {addr} list",
            info.tls.ca.display(),
            info.tls.cert.display(),
            info.tls.key.display()
        );
    }
    println!("mesh described in {}", mesh_json.display());
    if admin.created {
        println!(
            "admin account (shown once, kept in {}): {} / {}",
            options.data_dir.join("admin.json").display(),
            admin.email,
            admin.password
        );
    }
    match &mail.transport {
        MailTransport::Smtp(smtp) => {
            println!(
                "emails go through the SMTP relay {}:{}",
                smtp.host, smtp.port
            )
        }
        MailTransport::Files(dir) => {
            println!("emails are written as .eml files to {}", dir.display())
        }
    }
    println!("try: curl {}/v1/products", info.gateway);
    println!("ordermesh is ready (Ctrl-C to stop)");

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        // One role failing stops the rest: a partial mesh is not a working one.
        shutdown.trigger();
        match joined {
            Ok(Err(e)) if first_error.is_none() => first_error = Some(e),
            Err(e) if first_error.is_none() => {
                first_error = Some(RoleError::Io(std::io::Error::other(e.to_string())))
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&mesh_json);
    println!("ordermesh stopped");
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
