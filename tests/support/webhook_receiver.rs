//! A webhook receiver for tests: a Python HTTP server on a loopback port that checks every
//! request's signature with the published Standard Webhooks library (`standardwebhooks`, from
//! the venv `.ci/run` prepares), answers 500 to as many requests as it is told to fail, and
//! records each request (its `webhook-id`, whether the signature verified, what it answered,
//! the body) for the test to read. It exits when the test process does.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::python_server::{free_port, read_json_files, spawn_listening};

const SERVER: &str = r#"
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
out = sys.argv[2]
lock = threading.Lock()
count = [0]
def read(name, default):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(read("secret", "whsec_AAAA")).verify(body, headers)
            verified = True
        except Exception:
            verified = False
        with lock:
            failing = int(read("fail", "0"))
            status = 500 if failing > 0 else 200
            if failing > 0:
                with open(os.path.join(out, "fail"), "w") as f:
                    f.write(str(failing - 1))
            count[0] += 1
            record = {"id": headers.get("webhook-id", ""), "verified": verified,
                      "status": status, "body": body.decode("utf-8", "replace")}
            name = "%d-%06d" % (time.time_ns(), count[0])
            with open(os.path.join(out, "." + name), "w") as f:
                json.dump(record, f)
            os.rename(os.path.join(out, "." + name), os.path.join(out, name + ".json"))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// One request the receiver got.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Received {
    pub id: String,
    pub verified: bool,
    pub status: u16,
    pub body: String,
}

pub struct WebhookReceiver {
    pub url: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl WebhookReceiver {
    pub fn start() -> Self {
        let port = free_port().expect("free port");
        let dir = tempfile::tempdir().expect("receiver dir");
        let child = spawn_listening(
            SERVER,
            &[port.to_string().as_ref(), dir.path().as_os_str()],
            port,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("webhook receiver: {e}"));
        Self {
            url: format!("http://127.0.0.1:{port}/hooks/ordermesh"),
            dir,
            child,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The secret signatures are checked with.
    pub fn set_secret(&self, secret: &str) {
        std::fs::write(self.file("secret"), secret).expect("write secret");
    }

    /// Answers 500 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        std::fs::write(self.file("fail"), n.to_string()).expect("write fail count");
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        read_json_files(self.dir.path())
    }

    /// Waits up to `within` until `done` holds for what was received.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.received()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not received within {within:?}: {:#?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
