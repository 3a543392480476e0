//! `ordermesh up` as a child process, as a person runs it (not attached to a terminal, so its
//! logs are JSON lines), on ephemeral ports with its own data directory and log file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::http::request;
use crate::local_mesh::wait_for_mesh_json;
use crate::process::OrdermeshBinary;

pub struct UpProcess {
    pub gateway: SocketAddr,
    pub mesh_json: serde_json::Value,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl UpProcess {
    /// Starts `up` with `env` added, and waits (bounded) until its gateway is ready.
    pub async fn start(binary: &OrdermeshBinary, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let log = dir.path().join("up.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = tokio::process::Command::new(binary.path());
        command
            .args(["up", "--http-port", "0", "--base-port", "0", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start ordermesh up");
        let mesh_json = wait_for_mesh_json(&data_dir, Duration::from_secs(60)).await;
        let gateway: SocketAddr = mesh_json["gateway"]
            .as_str()
            .and_then(|g| g.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "ordermesh up wrote no mesh.json within 60 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        for _ in 0..100 {
            if request(gateway, "GET", "/readyz", &[], b"").await.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            gateway,
            mesh_json,
            data_dir,
            log,
            child,
            _dir: dir,
        }
    }

    /// The admin account `up` created.
    pub fn admin(&self) -> (String, String) {
        let admin: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir.join("admin.json")).expect("admin.json"),
        )
        .expect("admin.json is JSON");
        (
            admin["email"].as_str().unwrap_or_default().to_string(),
            admin["password"].as_str().unwrap_or_default().to_string(),
        )
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Stops it as Ctrl-C or Kubernetes would (SIGTERM); whether it exited within 30 s.
    pub async fn stop(&mut self) -> bool {
        let Some(pid) = self.child.id() else {
            return true;
        };
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_ok()
    }
}
