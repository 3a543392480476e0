//! A DynamoDB-compatible server (moto, from the venv `.ci/run` prepares) on a loopback port,
//! shared by the tests of one binary. It exits when the test process does.
//!
//! moto's own `moto_server` serves requests on many threads, and its DynamoDB model checks a
//! condition and writes without a lock, so two conditional writes to one item can both pass:
//! DynamoDB never allows that, and our invariants rest on it. So the app is served on one
//! thread here: requests from concurrent clients still interleave, each one is atomic.

use std::process::Child;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const WRAPPER: &str = r#"
import sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, use_reloader=False, request_handler=MotoRequestHandler)
"#;

pub struct MotoServer {
    pub endpoint: String,
    _child: Mutex<Child>,
}

fn start() -> Result<MotoServer, String> {
    let port = crate::python_server::free_port()?;
    let child = crate::python_server::spawn_listening(
        WRAPPER,
        &[port.to_string().as_ref()],
        port,
        Duration::from_secs(60),
    )?;
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
