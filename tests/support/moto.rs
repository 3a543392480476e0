//! A DynamoDB-compatible server (moto, from the venv `.ci/run` prepares) on a loopback port,
//! shared by the tests of one binary. It exits when the test process does.
//!
//! moto's own `moto_server` serves requests on many threads, and its DynamoDB model checks a
//! condition and writes without a lock, so two conditional writes to one item can both pass:
//! DynamoDB never allows that, and our invariants rest on it. So the app is served on one
//! thread here: requests from concurrent clients still interleave, each one is atomic.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const WRAPPER: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, use_reloader=False, request_handler=MotoRequestHandler)
"#;

pub struct MotoServer {
    pub endpoint: String,
    _child: Mutex<Child>,
}

fn python() -> PathBuf {
    crate::python_tool("python")
}

fn start() -> Result<MotoServer, String> {
    let python = python();
    if !python.exists() {
        return Err(format!(
            "{} not found: run `bash tests/support/python-tools.sh` (the README's test command does)",
            python.display()
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new(&python)
        .args(["-c", WRAPPER, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start moto: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("moto did not start listening within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(MotoServer {
        endpoint: format!("http://127.0.0.1:{port}"),
        _child: Mutex::new(child),
    })
}

/// The shared server, started on first use.
pub fn moto() -> &'static MotoServer {
    static SERVER: OnceLock<Result<MotoServer, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}
