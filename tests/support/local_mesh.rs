//! The whole mesh as `ordermesh up` runs it, in-process on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ordermesh::up::{UpOptions, UpStore, up};
use ordermesh_platform::shutdown::Shutdown;

pub struct LocalMesh {
    pub gateway: SocketAddr,
    /// The gateway's admin listener (`/metrics`, `/health/backends`).
    pub gateway_admin: SocketAddr,
    pub data_dir: PathBuf,
    pub mesh_json: serde_json::Value,
    pub admin: (String, String),
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), ordermesh::up::UpError>>,
    _dir: tempfile::TempDir,
}

impl LocalMesh {
    pub async fn start() -> Self {
        Self::start_on(UpStore::Embedded).await
    }

    pub async fn start_on(store: UpStore) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let shutdown = Shutdown::new();
        let task = tokio::spawn(up(
            UpOptions {
                data_dir: data_dir.clone(),
                base_port: 0,
                http_port: 0,
                store,
            },
            shutdown.clone(),
        ));
        let mesh_json = wait_for_mesh_json(&data_dir, Duration::from_secs(15)).await;
        let gateway: SocketAddr = mesh_json["gateway"]
            .as_str()
            .and_then(|g| g.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .expect("mesh.json names the gateway");
        let gateway_admin: SocketAddr = mesh_json["gateway_admin"]
            .as_str()
            .and_then(|g| g.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .expect("mesh.json names the gateway's admin endpoints");
        let admin: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("admin.json")).expect("admin.json"),
        )
        .unwrap();
        // Ready when the gateway is, and every backend answers health checks through it.
        for _ in 0..100 {
            let ready = crate::http::request(gateway, "GET", "/readyz", &[], b"")
                .await
                .status
                == 200;
            let backends =
                crate::http::request(gateway_admin, "GET", "/health/backends", &[], b"").await;
            if ready && backends.json()["status"] == "serving" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            gateway,
            gateway_admin,
            data_dir,
            mesh_json,
            admin: (
                admin["email"].as_str().unwrap().into(),
                admin["password"].as_str().unwrap().into(),
            ),
            shutdown,
            task,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("mesh stops within 20 s")
            .expect("joins")
            .expect("up ran without error");
        assert!(
            !self.data_dir.join("mesh.json").exists(),
            "mesh.json is removed on shutdown"
        );
    }
}

/// The `mesh.json` that `up` writes into `data_dir` once every role is bound, waited for up to
/// `within` (`Null` if it never came).
pub async fn wait_for_mesh_json(data_dir: &std::path::Path, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(data_dir.join("mesh.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serde_json::Value::Null
}
