//! A webhook receiver for tests: a Python HTTP server on a loopback port that checks every
//! request's signature with the published Standard Webhooks library (`standardwebhooks`, from
//! the venv `.ci/run` prepares), answers 500 to as many requests as it is told to fail, and
//! records each request (its `webhook-id`, whether the signature verified, what it answered,
//! the body) for the test to read. It exits when the test process does.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = r#"
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
parent = os.getppid()
def watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
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
        let python = crate::python_tool("python");
        assert!(python.exists(), "{} not found", python.display());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("receiver dir");
        let child = Command::new(&python)
            .args(["-c", SERVER, &port.to_string()])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "receiver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
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
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
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
