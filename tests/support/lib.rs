//! Helpers shared by the end-to-end tests: repository paths, a DynamoDB-compatible server,
//! stores on either backend.

pub mod gateway;
pub mod http;
pub mod ledger;
pub mod local_mesh;
pub mod mesh;
pub mod moto;
pub mod otlp;
pub mod process;
pub mod python_server;
pub mod smtp;
pub mod stores;
pub mod up_process;
pub mod webhook_receiver;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A program of the Python tools' venv (`ORDERMESH_PY_VENV`, which `.ci/run` prepares with
/// `tests/support/python-tools.sh`).
pub fn python_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("ORDERMESH_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ordermesh-venv")
        });
    venv.join("bin").join(name)
}
