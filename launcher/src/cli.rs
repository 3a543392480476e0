//! The `ordermesh` command line: one image, many roles. A library module so that the
//! launcher's binary and the end-to-end tests' copy of it run the same code.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::roles::{BoundService, Role, ServiceConfig};
use clap::{Parser, Subcommand};
use ordermesh_platform::certs::CertDir;
use ordermesh_platform::config::MeshConfig;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_platform::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "ordermesh",
    version,
    about = "A Rust gRPC service mesh for order processing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue a dev mesh CA and a certificate per workload (kept if already present).
    Certs {
        #[arg(long, default_value = ".ordermesh/certs")]
        dir: PathBuf,
        #[arg(long, env = "ORDERMESH_TRUST_DOMAIN", default_value = MeshConfig::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, env = "ORDERMESH_NAMESPACE", default_value = MeshConfig::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Also issue these identities (e.g. `operator-admin`, which may make admin writes
        /// and is not issued by default).
        #[arg(long = "with", value_name = "WORKLOAD")]
        with: Vec<String>,
    },
    /// Run the whole mesh locally: dev certificates on first run, every role on loopback with
    /// mTLS between them, the embedded store under --data-dir.
    Up {
        #[arg(long, default_value = ".ordermesh")]
        data_dir: PathBuf,
        /// First gRPC port; roles use consecutive ports, or free ones when taken.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// The gateway's HTTP port (a free one is used when it is taken).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// `embedded` (default) or `dynamodb`.
        #[arg(long, default_value = "embedded", value_parser = ["embedded", "dynamodb"])]
        store: String,
        /// DynamoDB endpoint, e.g. a local DynamoDB-compatible server (default: AWS).
        #[arg(long, env = "AWS_ENDPOINT_URL_DYNAMODB")]
        dynamodb_endpoint: Option<String>,
        /// Prefix of the DynamoDB table names.
        #[arg(long, default_value = "ordermesh-")]
        table_prefix: String,
    },
    /// Run one role of the mesh, as each Kubernetes pod does. Configured by `ORDERMESH_*`
    /// variables (see the README); stops on SIGTERM/SIGINT after draining in-flight calls.
    Serve {
        #[arg(value_enum)]
        role: Role,
    },
    /// DynamoDB tables (keys, `gsi1` index, TTL) for every service.
    Tables {
        #[command(subcommand)]
        what: TablesCommand,
    },
    /// Istio resources derived from the contracts.
    Istio {
        #[command(subcommand)]
        what: IstioCommand,
    },
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create the tables that do not exist yet (idempotent). Reads `ORDERMESH_STORE`,
    /// `ORDERMESH_DYNAMODB_TABLE_PREFIX` and the standard AWS variables.
    Create,
}

#[derive(Subcommand)]
enum IstioCommand {
    /// Print the AuthorizationPolicies that the proto access options imply.
    Policies {
        #[arg(long, env = "ORDERMESH_TRUST_DOMAIN", default_value = MeshConfig::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, env = "ORDERMESH_NAMESPACE", default_value = MeshConfig::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

/// glibc raises its mmap threshold after large frees, so the ~19 MiB argon2 working areas
/// end up on per-thread heaps that keep them after the hash is done: a burst of logins left
/// user-service holding hundreds of MiB. A fixed threshold sends large blocks to mmap, which
/// returns them to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks_to_the_system() {
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_system() {}

/// Parses the command line and runs it; what `fn main` of every `ordermesh` binary calls.
pub fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    // Every connection costs a descriptor; the usual soft limit (1,024) is a denial of service
    // waiting to happen, and only the process itself may raise it to the hard limit.
    if let Err(e) = ordermesh_platform::fd_limit::raise_to_hard_limit() {
        eprintln!("ordermesh: could not raise the open-files limit: {e}");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ordermesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs {
            dir,
            trust_domain,
            namespace,
            with,
        } => {
            let certs = CertDir::new(&dir);
            let mut wanted: Vec<&str> = workloads::ALL.to_vec();
            wanted.extend(with.iter().map(String::as_str));
            let issued = certs.ensure(&trust_domain, &namespace, &wanted)?;
            if issued.is_empty() {
                println!("certificates in {} are up to date", dir.display());
            } else {
                println!("issued {} in {}", issued.join(", "), dir.display());
            }
            let op = certs.files_for(workloads::OPERATOR);
            println!(
                "grpcurl: -cacert {} -cert {} -key {}",
                op.ca.display(),
                op.cert.display(),
                op.key.display()
            );
            Ok(())
        }
        Command::Up {
            data_dir,
            base_port,
            http_port,
            store,
            dynamodb_endpoint,
            table_prefix,
        } => {
            let store = match store.as_str() {
                "dynamodb" => crate::up::UpStore::DynamoDb {
                    endpoint: dynamodb_endpoint,
                    table_prefix,
                },
                _ => crate::up::UpStore::Embedded,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                // Every role under its own service name in traces; JSON log lines (with the
                // request and trace ids) unless a person is watching the terminal.
                let format = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                };
                let telemetry = telemetry::init_roles("ordermesh", workloads::ROLES, format)?;
                let shutdown = Shutdown::new();
                shutdown.on_signal();
                let result = crate::up::up(
                    crate::up::UpOptions {
                        data_dir,
                        base_port,
                        http_port,
                        store,
                    },
                    shutdown,
                )
                .await;
                let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
                Ok(result?)
            })
        }
        Command::Serve { role } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(role))
        }
        Command::Tables {
            what: TablesCommand::Create,
        } => {
            let config = StoreConfig::from_env(PathBuf::from(".ordermesh/data"))?;
            let runtime = tokio::runtime::Runtime::new()?;
            let created = runtime.block_on(config.create_tables())?;
            match (&config, created.is_empty()) {
                (StoreConfig::Embedded { data_dir }, _) => println!(
                    "embedded store: tables are created on first open under {}",
                    data_dir.display()
                ),
                (_, true) => println!("all tables exist"),
                (_, false) => println!("created {}", created.join(", ")),
            }
            Ok(())
        }
        Command::Istio {
            what:
                IstioCommand::Policies {
                    trust_domain,
                    namespace,
                },
        } => {
            print!(
                "{}",
                ordermesh_platform::istio_policy::render(&trust_domain, &namespace)
            );
            Ok(())
        }
    }
}

async fn serve(role: Role) -> anyhow::Result<()> {
    let telemetry = telemetry::init(role.workload(), LogFormat::Json)?;
    let shutdown = Shutdown::new();
    shutdown.on_signal();
    let result: anyhow::Result<()> = if role == Role::Gateway {
        async {
            let mesh = ordermesh_platform::config::MeshConfig::from_env()?;
            let config = ordermesh_edge_gateway::GatewayConfig::from_env()?;
            let upstreams = crate::roles::Upstreams::from_env()?;
            let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
            let admin = match config.admin_addr {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
                None => None,
            };
            let gateway = crate::roles::build_gateway(&mesh, config, &upstreams)?;
            Ok(gateway.serve_with_admin(listener, admin, shutdown).await?)
        }
        .await
    } else {
        async {
            let config = ServiceConfig::from_env(role)?;
            let bound = BoundService::bind(role, config).await?;
            Ok(bound.serve(shutdown).await?)
        }
        .await
    };
    let flushed = tokio::task::spawn_blocking(move || telemetry.flush()).await;
    if let Err(e) = flushed {
        eprintln!("trace flush failed: {e}");
    }
    result
}
