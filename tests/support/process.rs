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
        let files = certs.files(role.workload());
        let log = std::fs::File::create(data_dir.join(format!("{}.log", role.workload())))
            .expect("log file");
        let child = Command::new(binary.path())
            .arg("serve")
            .arg(role.short_name())
            .env("RUST_LOG", "warn")
            .env("ORDERMESH_TLS_CA", &files.ca)
            .env("ORDERMESH_TLS_CERT", &files.cert)
            .env("ORDERMESH_TLS_KEY", &files.key)
            .env("ORDERMESH_GRPC_ADDR", grpc_addr.to_string())
            .env("ORDERMESH_DATA_DIR", data_dir)
            .env("ORDERMESH_USER_ENDPOINT", &upstreams.user)
            .env("ORDERMESH_ORDER_ENDPOINT", &upstreams.order)
            .env("ORDERMESH_PAYMENT_ENDPOINT", &upstreams.payment)
            .env("ORDERMESH_AUDIT_ENDPOINT", &upstreams.audit)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ordermesh serve");
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
