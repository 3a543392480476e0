//! Servers the tests run as Python programs from the venv `.ci/run` prepares (moto, an SMTP
//! server, a webhook receiver): started on a free loopback port, waited for until they listen,
//! and gone when the test process is (each watches its parent). Servers that record what they
//! receive write one JSON file per item, renamed into place, which [`read_json_files`] reads.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes a Python server exit when the test process does (prepended to every script).
const EXIT_WITH_PARENT: &str = r#"
import os as _os, threading as _threading, time as _time
_parent = _os.getppid()
def _watch():
    while True:
        if _os.getppid() != _parent:
            _os._exit(0)
        _time.sleep(0.5)
_threading.Thread(target=_watch, daemon=True).start()
"#;

/// A loopback port nothing listens on now.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The venv's Python, or what to run to get it.
pub fn python() -> Result<PathBuf, String> {
    let python = crate::python_tool("python");
    if python.exists() {
        Ok(python)
    } else {
        Err(format!(
            "{} not found: run `bash tests/support/python-tools.sh` (the README's test command does)",
            python.display()
        ))
    }
}

/// Runs `script` with `args` and waits (up to `within`) until something listens on `port`.
pub fn spawn_listening(
    script: &str,
    args: &[&std::ffi::OsStr],
    port: u16,
    within: Duration,
) -> Result<Child, String> {
    let mut child = Command::new(python()?)
        .arg("-c")
        .arg(format!("{EXIT_WITH_PARENT}\n{script}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start python: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if started.elapsed() > within {
            let _ = child.kill();
            return Err(format!(
                "the server did not listen on {addr} within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child)
}

/// Every `*.json` file of `dir`, by name (the servers name them by time), parsed.
pub fn read_json_files<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}
