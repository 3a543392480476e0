//! `/openapi.json` of a real `ordermesh up` passes openapi-spec-validator, and schemathesis
//! (property-based; both from the Python tools' venv) runs against it, once as a signed-in shopper and once as an admin: every operation the
//! document lists is called with generated valid and invalid input, and every answer must
//! be no server error, a documented status and content type, and match its schema. Bounded
//! (a fixed number of examples per operation, deterministic generation) so a run is
//! repeatable. The audit tail and the notification stream are left out: they are endless
//! streams, which schemathesis reads to the end; the conformance suite, the gateway tests and
//! the notification tests cover them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ordermesh_tests::http::{Api, request};
use ordermesh_tests::ordermesh_binary;
use ordermesh_tests::python_tool;
use ordermesh_tests::up_process::UpProcess;

const EXAMPLES_PER_OPERATION: &str = "25";
const BOUND: Duration = Duration::from_secs(600);

fn schemathesis(gateway: &str, token: &str, report: &std::path::Path) -> (bool, String) {
    let tool = python_tool("schemathesis");
    assert!(
        tool.exists(),
        "{} not found: run `bash tests/support/python-tools.sh` (the README's test command does)",
        tool.display()
    );
    let out = std::fs::File::create(report).expect("report file");
    let mut child = Command::new(&tool)
        .args([
            "run",
            &format!("{gateway}/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            EXAMPLES_PER_OPERATION,
            "--generation-deterministic",
            "--exclude-operation-id",
            "TailEvents",
            "--exclude-operation-id",
            "StreamNotifications",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        // Its caches go to the test's directory, never into the source tree.
        .current_dir(report.parent().expect("the report is in a directory"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("report file"))
        .stderr(out)
        .spawn()
        .expect("start schemathesis");
    let started = Instant::now();
    let ok = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.success();
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (ok, std::fs::read_to_string(report).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    // The fuzzer is one client sending thousands of requests: it tests the API, not the
    // limiter (the limits have tests of their own).
    let unlimited = [
        ("ORDERMESH_ADDRESS_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("ORDERMESH_ADDRESS_RATE_LIMIT_BURST", "100000"),
        ("ORDERMESH_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("ORDERMESH_RATE_LIMIT_BURST", "100000"),
        ("ORDERMESH_ACCOUNT_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("ORDERMESH_ACCOUNT_RATE_LIMIT_BURST", "100000"),
    ];
    let mut up = UpProcess::start(&ordermesh_binary!(), &unlimited).await;
    let addr = up.gateway;
    let gateway = format!("http://{addr}");
    let anonymous = Api { addr, token: None };
    let shopper = anonymous.new_user("fuzz@example.com").await;
    let (email, password) = up.admin();
    let admin = anonymous.login(&email, &password).await;
    let dir = up.dir().to_path_buf();

    // The document itself is valid OpenAPI 3.1 (what generators load).
    let document = request(addr, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(document.status, 200);
    let document_path = dir.join("openapi.json");
    std::fs::write(&document_path, &document.body).unwrap();
    let validator = python_tool("openapi-spec-validator");
    let validated = Command::new(&validator)
        .arg(&document_path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", validator.display()));
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let mut failed = Vec::new();
    for (who, api) in [("shopper", &shopper), ("admin", &admin)] {
        let token = api.token.clone().unwrap();
        let report = dir.join(format!("schemathesis-{who}.txt"));
        let gw = gateway.clone();
        let (ok, text) = tokio::task::spawn_blocking(move || schemathesis(&gw, &token, &report))
            .await
            .unwrap();
        let summary = text
            .lines()
            .skip_while(|l| !l.starts_with("Test cases:"))
            .nth(1)
            .unwrap_or("(no summary)")
            .trim()
            .to_string();
        eprintln!("schemathesis as {who}: {summary}");
        if !ok {
            failed.push(format!("as {who}:\n{text}"));
        }
    }
    assert!(up.stop().await, "ordermesh up stops on SIGTERM");
    assert!(
        failed.is_empty(),
        "schemathesis failed\n{}",
        failed.join("\n")
    );
}
