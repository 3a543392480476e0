//! A real SMTP server for mail tests: aiosmtpd (from the venv `.ci/run` prepares) on a
//! loopback port, saving each message it accepts as a JSON file (envelope, subject, and the
//! decoded text and HTML parts) that the test reads. It can be stopped and started again on
//! the same port, to play a mail relay that goes away and comes back. It exits when the test
//! process does.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::python_server::{free_port, read_json_files, spawn_listening};

const SERVER: &str = r#"
import email, json, os, sys, threading, time
from email import policy
from aiosmtpd.controller import Controller
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
        let mut server = Self {
            port: free_port().expect("free port"),
            dir: tempfile::tempdir().expect("mail dir"),
            child: None,
        };
        server.resume();
        server
    }

    /// Starts it again on its port (after [`SmtpServer::stop`]).
    pub fn resume(&mut self) {
        let port = self.port.to_string();
        let child = spawn_listening(
            SERVER,
            &[port.as_ref(), self.dir.path().as_os_str()],
            self.port,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("aiosmtpd: {e}"));
        self.child = Some(child);
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
        read_json_files(self.dir.path())
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

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
