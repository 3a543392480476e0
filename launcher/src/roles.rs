//! One image, many roles: each role is one workload of the mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ordermesh_audit_service::{AuditLog, AuditServer};
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::notification::notification_service_client::NotificationServiceClient;
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::user::user_service_client::UserServiceClient;
use ordermesh_edge_gateway::auth::Verifier;
use ordermesh_edge_gateway::backends::Backends;
use ordermesh_edge_gateway::{Gateway, GatewayConfig};
use ordermesh_notification_service::{
    DeliveryMetrics, Dispatcher, Inbox, MailSettings, MailTransport, Mailer, NotificationServer,
    Parts, SmtpSettings, Wakes, WebhookSender, WebhookSettings, Webhooks,
};
use ordermesh_order_service::catalog::Catalog;
use ordermesh_order_service::orders::Orders;
use ordermesh_order_service::{CatalogServer, OrderSaga, OrderServer, SagaSettings};
use ordermesh_payment_service::{PaymentServer, Wallets};
use ordermesh_platform::client::{ChannelFactory, ClientError};
use ordermesh_platform::config::{ConfigError, ListenConfig, MeshConfig, env_opt, env_or};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::outbox::{Destination, Outbox};
use ordermesh_platform::server::{GrpcServer, Listeners, ServeError};
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::StoreError;
use ordermesh_platform::store::schema::{self, StoreConfig};
use ordermesh_user_service::grpc::TokenConfig;
use ordermesh_user_service::keys::KeyError;
use ordermesh_user_service::{SigningKeys, UserServer, UserStore};
use tokio::net::TcpListener;

/// The roles `ordermesh serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    User,
    Order,
    Payment,
    Audit,
    Notification,
    /// The edge gateway (HTTP, not gRPC).
    Gateway,
}

impl Role {
    /// Every service role, in start order.
    pub const SERVICES: &'static [Role] = &[
        Role::Audit,
        Role::Notification,
        Role::User,
        Role::Payment,
        Role::Order,
    ];

    /// The short name `serve` and `mesh.json` use.
    pub fn short_name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Order => "order",
            Role::Payment => "payment",
            Role::Audit => "audit",
            Role::Notification => "notification",
            Role::Gateway => "gateway",
        }
    }

    /// The workload (service account) name of the role.
    pub fn workload(self) -> &'static str {
        match self {
            Role::User => workloads::USER,
            Role::Order => workloads::ORDER,
            Role::Payment => workloads::PAYMENT,
            Role::Audit => workloads::AUDIT,
            Role::Notification => workloads::NOTIFICATION,
            Role::Gateway => workloads::GATEWAY,
        }
    }

    /// Offset of the role's port from the local base port (50051).
    pub fn port_offset(self) -> u16 {
        match self {
            Role::User => 0,
            Role::Order => 1,
            Role::Payment => 2,
            Role::Audit => 3,
            Role::Gateway => 4,
            Role::Notification => 5,
        }
    }

    /// The local default gRPC address.
    pub fn default_grpc_addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], LOCAL_BASE_PORT + self.port_offset()))
    }
}

/// The first local gRPC port; roles sit at fixed offsets from it.
pub const LOCAL_BASE_PORT: u16 = 50051;

/// Where the other workloads are: `https://host:port` (builtin mTLS) or `http://…` to the
/// sidecar (Istio), comma-separated for several endpoints.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub user: String,
    pub order: String,
    pub payment: String,
    pub audit: String,
    pub notification: String,
}

impl Upstreams {
    /// The endpoints of a workload (empty for one that is not an upstream).
    pub fn of(&self, workload: &str) -> &str {
        match workload {
            workloads::USER => &self.user,
            workloads::ORDER => &self.order,
            workloads::PAYMENT => &self.payment,
            workloads::AUDIT => &self.audit,
            workloads::NOTIFICATION => &self.notification,
            _ => "",
        }
    }

    /// `https://127.0.0.1:<port>` for every role at its local default port.
    pub fn local(base_port: u16) -> Self {
        let at = |offset: u16| format!("https://127.0.0.1:{}", base_port + offset);
        Self {
            user: at(0),
            order: at(1),
            payment: at(2),
            audit: at(3),
            notification: at(5),
        }
    }

    /// `ORDERMESH_{USER,ORDER,PAYMENT,AUDIT,NOTIFICATION}_ENDPOINT`, defaulting to the local
    /// ports.
    pub fn from_env() -> Result<Self, ConfigError> {
        let local = Self::local(LOCAL_BASE_PORT);
        Ok(Self {
            user: env_or("ORDERMESH_USER_ENDPOINT", local.user)?,
            order: env_or("ORDERMESH_ORDER_ENDPOINT", local.order)?,
            payment: env_or("ORDERMESH_PAYMENT_ENDPOINT", local.payment)?,
            audit: env_or("ORDERMESH_AUDIT_ENDPOINT", local.audit)?,
            notification: env_or("ORDERMESH_NOTIFICATION_ENDPOINT", local.notification)?,
        })
    }
}

/// How user-service signs access tokens.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// Ed25519 PKCS#8 PEM; when unset, a key is generated under the data directory.
    pub signing_key_file: Option<PathBuf>,
    /// Keys that signed tokens still in circulation; published in the JWKS, not used.
    pub previous_key_files: Vec<PathBuf>,
    /// How long a just-replaced refresh token may be presented again (a retry) and get the
    /// same new pair instead of revoking the session.
    pub refresh_reuse_grace: std::time::Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: ordermesh_platform::jwt::DEFAULT_ISSUER.into(),
            audience: ordermesh_platform::jwt::DEFAULT_AUDIENCE.into(),
            signing_key_file: None,
            previous_key_files: Vec::new(),
            refresh_reuse_grace: TokenConfig::default().refresh_reuse_grace,
        }
    }
}

impl JwtSettings {
    /// `ORDERMESH_JWT_ISSUER`, `ORDERMESH_JWT_AUDIENCE`, `ORDERMESH_JWT_SIGNING_KEY_FILE`,
    /// `ORDERMESH_JWT_PREVIOUS_KEY_FILES` (comma-separated), `ORDERMESH_REFRESH_REUSE_GRACE_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let previous: String = env_or("ORDERMESH_JWT_PREVIOUS_KEY_FILES", String::new())?;
        Ok(Self {
            issuer: env_or("ORDERMESH_JWT_ISSUER", d.issuer)?,
            audience: env_or("ORDERMESH_JWT_AUDIENCE", d.audience)?,
            signing_key_file: env_opt("ORDERMESH_JWT_SIGNING_KEY_FILE")?,
            previous_key_files: previous
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            refresh_reuse_grace: std::time::Duration::from_millis(env_or(
                "ORDERMESH_REFRESH_REUSE_GRACE_MS",
                d.refresh_reuse_grace.as_millis() as u64,
            )?),
        })
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
    #[error("upstream: {0}")]
    Client(#[from] ClientError),
    #[error("JWT signing key: {0}")]
    Keys(#[from] KeyError),
    #[error("ORDERMESH_JWT_SIGNING_KEY_FILE must be set when the store is not embedded")]
    NoSigningKey,
    #[error("set ORDERMESH_SMTP_HOST (or ORDERMESH_MAIL_DIR) when the store is not embedded")]
    NoMailTransport,
    #[error("the gateway is not a gRPC role; use serve_gateway")]
    NotGrpc,
    #[error("gateway routes: {0}")]
    Routes(#[from] ordermesh_edge_gateway::routes::TemplateError),
    #[error("seeding the demo catalog: {0}")]
    Seed(String),
    #[error("bootstrapping the admin account: {0}")]
    Bootstrap(tonic::Status),
    #[error("email: {0}")]
    Mail(#[from] ordermesh_notification_service::mail::MailError),
    #[error("webhook client: {0}")]
    Webhooks(String),
}

/// Everything a service role needs to run.
pub struct ServiceConfig {
    pub mesh: MeshConfig,
    pub listen: ListenConfig,
    pub store: StoreConfig,
    pub upstreams: Upstreams,
    pub jwt: JwtSettings,
    /// user-service creates this admin account at start if it does not exist (`up`).
    pub bootstrap_admin: Option<(String, String)>,
    /// order-service: payment deadline and re-drive interval.
    pub saga: SagaSettings,
    /// order-service adds demo products to an empty catalog (`up`).
    pub seed_demo_catalog: bool,
    /// notification-service: how email leaves (`None`: `.eml` files under the data directory).
    pub mail: Option<MailSettings>,
    /// notification-service: webhook delivery.
    pub webhooks: WebhookSettings,
}

impl ServiceConfig {
    /// From `ORDERMESH_*` variables (see the README), with local defaults.
    pub fn from_env(role: Role) -> Result<Self, ConfigError> {
        Ok(Self {
            mesh: MeshConfig::from_env()?,
            listen: ListenConfig::from_env(role.default_grpc_addr())?,
            store: StoreConfig::from_env(PathBuf::from(".ordermesh/data"))?,
            upstreams: Upstreams::from_env()?,
            jwt: JwtSettings::from_env()?,
            bootstrap_admin: bootstrap_admin_from_env()?,
            saga: SagaSettings::default(),
            seed_demo_catalog: env_or("ORDERMESH_SEED_DEMO_CATALOG", false)?,
            mail: mail_from_env()?,
            webhooks: webhooks_from_env()?,
        })
    }
}

/// `ORDERMESH_WEBHOOKS_ALLOW_PRIVATE` (local runs: http and private targets),
/// `ORDERMESH_WEBHOOK_MAX_ATTEMPTS`, `ORDERMESH_WEBHOOK_RETRY_BASE_MS`,
/// `ORDERMESH_WEBHOOK_DISABLE_AFTER`.
pub fn webhooks_from_env() -> Result<WebhookSettings, ConfigError> {
    let d = WebhookSettings::default();
    Ok(WebhookSettings {
        allow_private: env_or("ORDERMESH_WEBHOOKS_ALLOW_PRIVATE", d.allow_private)?,
        max_attempts: env_or("ORDERMESH_WEBHOOK_MAX_ATTEMPTS", d.max_attempts)?,
        retry_base: std::time::Duration::from_millis(env_or(
            "ORDERMESH_WEBHOOK_RETRY_BASE_MS",
            d.retry_base.as_millis() as u64,
        )?),
        disable_after: env_or("ORDERMESH_WEBHOOK_DISABLE_AFTER", d.disable_after)?,
        ..d
    })
}

/// `ORDERMESH_SMTP_HOST` (with `_PORT`, `_SECURITY` none|starttls|tls, `_USERNAME`,
/// `_PASSWORD_FILE`, `_CA_FILE`) sends through a relay; else `ORDERMESH_MAIL_DIR` names where
/// `.eml` files go (unset: under the embedded data directory). `ORDERMESH_MAIL_FROM`,
/// `ORDERMESH_PUBLIC_URL`, `ORDERMESH_MAIL_MAX_ATTEMPTS` and `ORDERMESH_MAIL_RETRY_BASE_MS`
/// apply to both.
pub fn mail_from_env() -> Result<Option<MailSettings>, ConfigError> {
    let host: Option<String> = env_opt("ORDERMESH_SMTP_HOST")?;
    let dir: Option<PathBuf> = env_opt("ORDERMESH_MAIL_DIR")?;
    let transport = match (host, dir) {
        (Some(host), _) => {
            let password_file: Option<PathBuf> = env_opt("ORDERMESH_SMTP_PASSWORD_FILE")?;
            let password = password_file
                .map(|file| {
                    std::fs::read_to_string(&file)
                        .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                        .map_err(|e| ConfigError::Invalid {
                            var: "ORDERMESH_SMTP_PASSWORD_FILE".into(),
                            value: file.display().to_string(),
                            reason: e.to_string(),
                        })
                })
                .transpose()?;
            MailTransport::Smtp(SmtpSettings {
                host,
                port: env_or("ORDERMESH_SMTP_PORT", 587)?,
                security: env_or(
                    "ORDERMESH_SMTP_SECURITY",
                    ordermesh_notification_service::SmtpSecurity::StartTls,
                )?,
                username: env_opt("ORDERMESH_SMTP_USERNAME")?,
                password,
                ca_file: env_opt("ORDERMESH_SMTP_CA_FILE")?,
                timeout: std::time::Duration::from_secs(10),
            })
        }
        (None, Some(dir)) => MailTransport::Files(dir),
        (None, None) => return Ok(None),
    };
    let d = MailSettings::files(PathBuf::new());
    Ok(Some(MailSettings {
        from: env_or("ORDERMESH_MAIL_FROM", d.from)?,
        public_url: env_or("ORDERMESH_PUBLIC_URL", d.public_url)?,
        transport,
        max_attempts: env_or("ORDERMESH_MAIL_MAX_ATTEMPTS", d.max_attempts)?,
        retry_base: std::time::Duration::from_millis(env_or(
            "ORDERMESH_MAIL_RETRY_BASE_MS",
            d.retry_base.as_millis() as u64,
        )?),
        retry_max: d.retry_max,
    }))
}

/// `ORDERMESH_BOOTSTRAP_ADMIN_EMAIL` with `ORDERMESH_BOOTSTRAP_ADMIN_PASSWORD_FILE` (a file, so
/// the secret stays out of the environment): both or neither.
fn bootstrap_admin_from_env() -> Result<Option<(String, String)>, ConfigError> {
    const EMAIL: &str = "ORDERMESH_BOOTSTRAP_ADMIN_EMAIL";
    const PASSWORD_FILE: &str = "ORDERMESH_BOOTSTRAP_ADMIN_PASSWORD_FILE";
    let email: Option<String> = env_opt(EMAIL)?;
    let file: Option<PathBuf> = env_opt(PASSWORD_FILE)?;
    match (email, file) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Missing {
            var: PASSWORD_FILE.into(),
            reason: format!("{EMAIL} is set"),
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            var: EMAIL.into(),
            reason: format!("{PASSWORD_FILE} is set"),
        }),
        (Some(email), Some(file)) => {
            let password = std::fs::read_to_string(&file).map_err(|e| ConfigError::Invalid {
                var: PASSWORD_FILE.into(),
                value: file.display().to_string(),
                reason: e.to_string(),
            })?;
            Ok(Some((
                email,
                password.trim_end_matches(['\r', '\n']).to_string(),
            )))
        }
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

    /// The configuration the role will serve with (e.g. to point it at upstreams bound later).
    pub fn config_mut(&mut self) -> &mut ServiceConfig {
        &mut self.config
    }

    /// Opens the role's store and serves until `shutdown` triggers and calls drain.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), RoleError> {
        let metrics = Arc::new(Metrics::new());
        metrics.set_role(self.role.workload());
        let config = &self.config;
        let channels = ChannelFactory::new(&config.mesh, metrics.clone())?;
        let server = GrpcServer::new(config.mesh.clone(), metrics.clone());
        // Background work (outbox relays, the re-driver): stopped and awaited before this
        // returns, so a stopped role holds its store no longer (a restart reopens it).
        let mut background = Vec::new();
        let server = match self.role {
            Role::Gateway => return Err(RoleError::NotGrpc),
            Role::Notification => {
                let table = config.store.open(schema::NOTIFICATIONS).await?;
                let settings = match (&config.mail, config.store.embedded_dir()) {
                    (Some(settings), _) => settings.clone(),
                    (None, Some(data_dir)) => MailSettings::files(data_dir.join("mail")),
                    (None, None) => return Err(RoleError::NoMailTransport),
                };
                if let MailTransport::Files(dir) = &settings.transport {
                    tracing::info!(dir = %dir.display(), "emails are written as .eml files");
                }
                let mailer = Mailer::new(settings)?;
                let inbox = Inbox::new(table.clone());
                let webhooks = Webhooks::new(table.clone(), config.webhooks.allow_private);
                let wakes = Wakes::default();
                let delivery_metrics = DeliveryMetrics::registered(&metrics);
                // Its own events (webhook endpoint changes) go to the audit trail.
                let outbox = Outbox::new(workloads::NOTIFICATION).observed_in(&metrics);
                background.extend(spawn_relays(&outbox, &table, &channels, config, &shutdown)?);
                background.push(
                    Dispatcher::queue(
                        inbox.clone(),
                        mailer.clone(),
                        delivery_metrics.clone(),
                        wakes.mail.clone(),
                    )
                    .spawn(shutdown.clone()),
                );
                background.push(
                    WebhookSender::queue(
                        webhooks.clone(),
                        config.webhooks.clone(),
                        delivery_metrics,
                        outbox.clone(),
                        wakes.hooks.clone(),
                    )
                    .map_err(|e| RoleError::Webhooks(e.to_string()))?
                    .spawn(shutdown.clone()),
                );
                let users = UserServiceClient::new(
                    channels.channel(workloads::USER, &config.upstreams.user)?,
                );
                let parts = Parts {
                    inbox,
                    mailer,
                    webhooks,
                    users,
                    outbox,
                    wakes,
                };
                server.add_service(NotificationServer::new(parts, shutdown.clone()).into_service())
            }
            Role::Audit => {
                let table = config.store.open(schema::AUDIT).await?;
                server.add_service(
                    AuditServer::new(AuditLog::new(table), shutdown.clone()).into_service(),
                )
            }
            Role::Order => {
                let table = config.store.open(schema::ORDERS).await?;
                let outbox = producer_outbox(workloads::ORDER, config, &metrics);
                background.extend(spawn_relays(&outbox, &table, &channels, config, &shutdown)?);
                let payment = PaymentServiceClient::new(
                    channels.channel(workloads::PAYMENT, &config.upstreams.payment)?,
                );
                let catalog = Catalog::new(table.clone());
                if config.seed_demo_catalog {
                    let added = catalog
                        .seed_demo()
                        .await
                        .map_err(|e| RoleError::Seed(e.to_string()))?;
                    if added > 0 {
                        tracing::info!(products = added, "seeded the demo catalog");
                    }
                }
                let saga = OrderSaga::new(
                    Orders::new(table),
                    catalog.clone(),
                    Arc::new(payment),
                    outbox,
                    config.saga.clone(),
                );
                let saga_pending = prometheus_client::metrics::gauge::Gauge::<i64>::default();
                metrics.with_registry(|r| {
                    r.register(
                        "saga_pending_items",
                        "Charges and refunds left unfinished, as the re-driver last saw them (up to 100)",
                        saga_pending.clone(),
                    )
                });
                background.push(saga.spawn_redriver(shutdown.clone(), saga_pending));
                server
                    .add_service(CatalogServer::new(catalog).into_service())
                    .add_service(OrderServer::new(saga).into_service())
            }
            Role::Payment => {
                let table = config.store.open(schema::PAYMENTS).await?;
                let outbox = producer_outbox(workloads::PAYMENT, config, &metrics);
                background.extend(spawn_relays(&outbox, &table, &channels, config, &shutdown)?);
                server.add_service(PaymentServer::new(Wallets::new(table, outbox)).into_service())
            }
            Role::User => {
                let table = config.store.open(schema::USERS).await?;
                let outbox = producer_outbox(workloads::USER, config, &metrics);
                background.extend(spawn_relays(&outbox, &table, &channels, config, &shutdown)?);
                let keys = signing_keys(config)?;
                let tokens = TokenConfig {
                    issuer: config.jwt.issuer.clone(),
                    audience: config.jwt.audience.clone(),
                    refresh_reuse_grace: config.jwt.refresh_reuse_grace,
                    ..TokenConfig::default()
                };
                let users = UserServer::new(UserStore::new(table), Arc::new(keys), outbox, tokens);
                if let Some((email, password)) = &config.bootstrap_admin {
                    users
                        .ensure_admin(email, password)
                        .await
                        .map_err(RoleError::Bootstrap)?;
                }
                server.add_service(users.into_service())
            }
        };
        let served = server.serve(self.listeners, shutdown.clone()).await;
        shutdown.trigger();
        for mut task in background {
            // Each stops at its next pause; one in the middle of a call gets that call's time.
            if tokio::time::timeout(BACKGROUND_STOP, &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        served?;
        Ok(())
    }
}

/// A producing service's outbox: every event for audit-service, and those that notify someone
/// for notification-service (unless its endpoint is set empty: a mesh without it).
fn producer_outbox(workload: &str, config: &ServiceConfig, metrics: &Metrics) -> Outbox {
    let outbox = Outbox::new(workload);
    let outbox = if config.upstreams.notification.is_empty() {
        outbox
    } else {
        outbox.notifying(ordermesh_notification_service::notifies)
    };
    outbox.observed_in(metrics)
}

/// The outbox relays of a producing service: to audit-service, and to notification-service.
fn spawn_relays(
    outbox: &Outbox,
    table: &ordermesh_platform::store::Table,
    channels: &ChannelFactory,
    config: &ServiceConfig,
    shutdown: &Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RoleError> {
    let audit =
        AuditServiceClient::new(channels.channel(workloads::AUDIT, &config.upstreams.audit)?);
    let mut relays =
        vec![outbox.spawn_relay(table.clone(), Destination::Audit(audit), shutdown.clone())];
    if outbox.feeds_notifications() {
        let notification = NotificationServiceClient::new(
            channels.channel(workloads::NOTIFICATION, &config.upstreams.notification)?,
        );
        relays.push(outbox.spawn_relay(
            table.clone(),
            Destination::Notification(notification),
            shutdown.clone(),
        ));
    }
    Ok(relays)
}

/// How long background work gets to stop after the server has.
const BACKGROUND_STOP: std::time::Duration = std::time::Duration::from_secs(6);

fn read_key(path: &std::path::Path) -> Result<String, RoleError> {
    std::fs::read_to_string(path).map_err(|source| {
        RoleError::Keys(KeyError::Io {
            path: path.display().to_string(),
            source,
        })
    })
}

/// The configured signing key, or one generated under the embedded data directory.
fn signing_keys(config: &ServiceConfig) -> Result<SigningKeys, RoleError> {
    let current = match (&config.jwt.signing_key_file, config.store.embedded_dir()) {
        (Some(path), _) => read_key(path)?,
        (None, Some(data_dir)) => {
            SigningKeys::load_or_create(&data_dir.join("jwt-signing-key.pem"))?
        }
        (None, None) => return Err(RoleError::NoSigningKey),
    };
    let previous = config
        .jwt
        .previous_key_files
        .iter()
        .map(|p| read_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SigningKeys::from_pem(&current, &previous)?)
}

/// Builds the edge gateway: a channel per backend workload, the JWKS verifier and the routes.
pub fn build_gateway(
    mesh: &MeshConfig,
    config: GatewayConfig,
    upstreams: &Upstreams,
) -> Result<Arc<Gateway>, RoleError> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_role(ordermesh_platform::identity::workloads::GATEWAY);
    let channels = ChannelFactory::new(mesh, metrics.clone())?;
    let gateway_metrics =
        ordermesh_edge_gateway::gateway_metrics::GatewayMetrics::registered(&metrics);
    let mut backends = Backends::new(config.deadline, gateway_metrics.clone());
    for package in ordermesh_contracts::descriptors::SERVED_PACKAGES {
        let Some(workload) = ordermesh_platform::istio_policy::workload_of_package(package) else {
            continue;
        };
        backends.add(
            package,
            workload,
            channels.channel(workload, upstreams.of(workload))?,
        );
    }
    let users = UserServiceClient::new(channels.channel(workloads::USER, &upstreams.user)?);
    let verifier = Verifier::new(users, &config.jwt_issuer, &config.jwt_audience)
        .counting_refresh_failures(gateway_metrics.jwks_refresh_failures.clone());
    Ok(Arc::new(Gateway::new(config, backends, verifier, metrics)?))
}
