//! A real SMTP server for mail tests: aiosmtpd (from the venv `.ci/run` prepares) on a
//! loopback port, saving each message it accepts as a JSON file (envelope, subject, and the
//! decoded text and HTML parts) that the test reads. It can be stopped and started again on
//! the same port, to play a mail relay that goes away and comes back. It exits when the test
//! process does.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = r#"
import email, json, os, sys, threading, time
from email import policy
from aiosmtpd.controller import Controller
parent = os.getppid()
def watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
out = sys.argv[2]
class Capture:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "text": text.get_content() if text else "",
            "html": html.get_content() if html else "",
        }
        Capture.count += 1
        name = "%d-%d" % (time.time_ns(), Capture.count)
        tmp = os.path.join(out, "." + name)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out, name + ".json"))
        return "250 OK"
controller = Controller(Capture(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
threading.Event().wait()
"#;

/// A message the server accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CapturedMail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: String,
}

pub struct SmtpServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SmtpServer {
    /// Starts the server on a free loopback port.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self {
            port,
            dir: tempfile::tempdir().expect("mail dir"),
            child: None,
        };
        server.resume();
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts it again on its port (after [`SmtpServer::stop`]).
    pub fn resume(&mut self) {
        let python = crate::python_tool("python");
        assert!(
            python.exists(),
            "{} not found: run `bash tests/support/python-tools.sh` (the README's test command does)",
            python.display()
        );
        let child = Command::new(&python)
            .args(["-c", SERVER, &self.port.to_string()])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "aiosmtpd did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it; connections to its port are refused until [`SmtpServer::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<CapturedMail> {
        read_dir(self.dir.path())
    }

    /// Waits up to `within` for a message `matches` accepts.
    pub async fn wait_for(
        &self,
        within: Duration,
        matches: impl Fn(&CapturedMail) -> bool,
    ) -> CapturedMail {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| matches(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no such message within {within:?}; got {:#?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn read_dir(dir: &Path) -> Vec<CapturedMail> {
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

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
