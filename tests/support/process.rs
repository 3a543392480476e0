//! A role as a real `ordermesh serve` child process, so a test can SIGKILL it mid-call the way
//! a node failure or OOM kill would, and start it again on the same address and data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};

use crate::mesh::TestCerts;

/// The `ordermesh` binary built from the code under test: this package's
/// `ordermesh-under-test` target, which `cargo test` builds before the tests that name it.
/// A macro because cargo tells only the integration test being compiled where it is.
#[macro_export]
macro_rules! ordermesh_binary {
    () => {
        $crate::process::OrdermeshBinary::at(env!("CARGO_BIN_EXE_ordermesh-under-test"))
    };
}

/// Where the `ordermesh` binary under test is (see [`ordermesh_binary!`]).
#[derive(Clone, Debug)]
pub struct OrdermeshBinary(PathBuf);

impl OrdermeshBinary {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        assert!(
            path.exists(),
            "{} is missing: build it with `cargo test -p ordermesh-tests` (or `cargo test --workspace`), \
             which builds the `ordermesh-under-test` binary before running the tests",
            path.display()
        );
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

pub struct ServiceProcess {
    pub grpc_addr: SocketAddr,
    child: Child,
}

/// How a test starts one `ordermesh serve <role>` process: its environment and log file.
#[derive(Clone, Debug)]
pub struct RoleCommand {
    pub role: Role,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl RoleCommand {
    pub fn new(role: Role, log: PathBuf) -> Self {
        Self {
            role,
            env: vec![("RUST_LOG".into(), "warn".into())],
            log,
        }
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The workload's certificate files (built-in mTLS).
    pub fn tls(self, certs: &TestCerts) -> Self {
        let files = certs.files(self.role.workload());
        self.env("ORDERMESH_TLS_CA", files.ca.display())
            .env("ORDERMESH_TLS_CERT", files.cert.display())
            .env("ORDERMESH_TLS_KEY", files.key.display())
    }

    pub fn upstreams(self, upstreams: &Upstreams) -> Self {
        self.env("ORDERMESH_USER_ENDPOINT", &upstreams.user)
            .env("ORDERMESH_ORDER_ENDPOINT", &upstreams.order)
            .env("ORDERMESH_PAYMENT_ENDPOINT", &upstreams.payment)
            .env("ORDERMESH_AUDIT_ENDPOINT", &upstreams.audit)
    }

    /// Spawns the process (its output appended to the log file).
    pub fn spawn(&self, binary: &OrdermeshBinary) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        Command::new(binary.path())
            .arg("serve")
            .arg(self.role.short_name())
            .envs(self.env.iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ordermesh serve")
    }
}

/// Asks a process to stop the way Kubernetes does (SIGTERM), and waits (bounded) for it to
/// drain and exit; returns whether it exited by itself in time.
pub async fn terminate(child: &mut Child, within: Duration) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl ServiceProcess {
    /// Starts `role` on `grpc_addr` with an embedded store in `data_dir`, and waits (bounded)
    /// until it accepts connections.
    pub async fn start(
        binary: &OrdermeshBinary,
        role: Role,
        certs: &TestCerts,
        data_dir: &Path,
        grpc_addr: SocketAddr,
        upstreams: &Upstreams,
    ) -> Self {
        Self::start_with_env(binary, role, certs, data_dir, grpc_addr, upstreams, &[]).await
    }

    /// Like [`Self::start`], with extra environment variables.
    pub async fn start_with_env(
        binary: &OrdermeshBinary,
        role: Role,
        certs: &TestCerts,
        data_dir: &Path,
        grpc_addr: SocketAddr,
        upstreams: &Upstreams,
        extra_env: &[(&str, String)],
    ) -> Self {
        let mut command = RoleCommand::new(role, data_dir.join(format!("{}.log", role.workload())))
            .tls(certs)
            .upstreams(upstreams)
            .env("ORDERMESH_GRPC_ADDR", grpc_addr)
            .env("ORDERMESH_DATA_DIR", data_dir.display());
        for (name, value) in extra_env {
            command = command.env(name, value);
        }
        let child = command.spawn(binary);
        let mut this = Self { grpc_addr, child };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(grpc_addr).await.is_ok() {
                return this;
            }
            if let Ok(Some(status)) = this.child.try_wait() {
                panic!("{} exited at start: {status}", role.workload());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = this.child.kill();
        panic!("{} did not listen within 30 s", role.workload());
    }

    /// SIGKILL: no drain, no flush, calls in flight are cut.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
