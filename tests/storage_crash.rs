//! A committed write survives `kill -9`: a child process writes concurrently through the
//! embedded store (so commits are grouped) and acknowledges each write on stdout; the parent
//! kills it with SIGKILL mid-stream and checks the reopened store holds every acknowledged
//! write.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_platform::store::{Condition, NewItem};

const CHILD_DIR: &str = "ORDERMESH_CRASH_CHILD_DIR";
const WRITERS: usize = 8;

/// Runs only as the child of `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = StoreConfig::Embedded {
            data_dir: dir.into(),
        };
        let table = config.open("orders").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for w in 0..WRITERS {
            let table = table.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    let key = format!("w{w}-{n:06}");
                    table
                        .put(
                            NewItem::new(&key, "v", key.clone().into_bytes()),
                            Condition::NotExists,
                        )
                        .await
                        .unwrap();
                    if tx.send(key).is_err() {
                        return;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(key) = rx.recv().await {
            writeln!(out, "ack {key}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(key) = line.strip_prefix("ack ") {
                acked.push(key.to_string());
            }
        }
        acked
    });
    // Let it write for two seconds, then kill it without warning.
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(
        acked.len() >= 20,
        "child acknowledged only {} writes",
        acked.len()
    );

    let table = StoreConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    }
    .open("orders")
    .await
    .unwrap();
    for key in &acked {
        let item = table.get(key, "v").await.unwrap();
        assert_eq!(
            item.map(|i| i.data.to_vec()),
            Some(key.clone().into_bytes()),
            "acknowledged write {key} lost"
        );
    }
    eprintln!("{} acknowledged writes all survived SIGKILL", acked.len());
}
