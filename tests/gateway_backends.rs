//! The gateway and its backends: the audit tail as Server-Sent Events or newline-delimited
//! JSON chosen by `Accept` (admins only, records as they are appended, an error event rather
//! than a silent close when the backend goes away mid-stream), and calls balanced over every
//! endpoint configured for a service.

use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_tests::gateway::{
    ADMIN_EMAIL, ADMIN_PASSWORD, RunningGateway, user_service_with_admin,
};
use ordermesh_tests::http::{HttpResponse, StreamingResponse};
use ordermesh_tests::mesh::{RunningService, TestCerts, all_at, http_get};

const TAIL: &str = "/v1/audit/events:tail";
const WAIT: Duration = Duration::from_secs(20);

fn sse_events(res: &HttpResponse) -> Vec<(String, serde_json::Value)> {
    res.text()
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

fn ndjson_lines(res: &HttpResponse) -> Vec<serde_json::Value> {
    res.text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn is_registration(record: &serde_json::Value) -> bool {
    record["event"]["action"] == "user.registered" && record["event"]["source"] == "user-service"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_tail_streams_as_sse_or_ndjson_and_ends_with_an_error_event() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let user = user_service_with_admin(&certs, dirs[1].path(), audit.grpc_addr).await;
    let upstreams = Upstreams {
        user: format!("https://{}", user.grpc_addr),
        ..all_at(audit.grpc_addr)
    };
    let gateway = RunningGateway::start(&certs, &upstreams, GatewayConfig::default()).await;
    let gateway_addr = gateway.addr;
    let anon = gateway.anonymous();
    let admin = gateway.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let admin_auth = format!("Bearer {}", admin.token.as_deref().unwrap());

    // Who may tail: nobody anonymous, no plain user.
    assert_eq!(anon.get(TAIL).await.status, 401);
    let pat = gateway.new_user("pat@example.com").await;
    let refused = pat.get(TAIL).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );

    let mut sse = StreamingResponse::get(
        gateway_addr,
        TAIL,
        &[
            ("authorization", &admin_auth),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    let mut ndjson = StreamingResponse::get(
        gateway_addr,
        TAIL,
        &[
            ("authorization", &admin_auth),
            ("accept", "application/x-ndjson"),
        ],
    )
    .await;
    let head = sse.read_until(WAIT, |_| true).await;
    assert_eq!(head.status, 200, "{}", head.text());
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let head = ndjson.read_until(WAIT, |_| true).await;
    assert_eq!(head.status, 200, "{}", head.text());
    assert_eq!(head.header("content-type"), Some("application/x-ndjson"));

    // A new account is audited; both tails see the record as it is appended.
    gateway.new_user("quinn@example.com").await;
    let got = sse
        .read_until(WAIT, |r| {
            sse_events(r)
                .iter()
                .any(|(e, d)| e == "message" && is_registration(d))
        })
        .await;
    let (_, record) = sse_events(&got)
        .into_iter()
        .find(|(e, _)| e == "message")
        .unwrap();
    assert!(
        record["sequence"].as_str().is_some(),
        "int64 as a string: {record}"
    );
    assert!(record["prevHash"].is_string() && record["recordTime"].is_string());
    let got = ndjson
        .read_until(WAIT, |r| ndjson_lines(r).iter().any(is_registration))
        .await;
    assert!(!ndjson_lines(&got).is_empty());

    // The backend goes away mid-stream: each tail ends with an error, then closes.
    audit.stop().await;
    let ended = sse
        .read_until(WAIT, |r| sse_events(r).iter().any(|(e, _)| e == "error"))
        .await;
    let (_, error) = sse_events(&ended)
        .into_iter()
        .find(|(e, _)| e == "error")
        .unwrap();
    assert_eq!(error["status"], 503, "{error}");
    assert!(error["requestId"].is_string(), "{error}");
    assert_eq!(
        error["type"], "urn:ordermesh:problem:unavailable",
        "{error}"
    );
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("resume with after_sequence=")),
        "the backend's own message, with its resume hint, reaches the client: {error}"
    );
    let ended = ndjson
        .read_until(WAIT, |r| {
            ndjson_lines(r).last().is_some_and(|l| l["status"] == 503)
        })
        .await;
    assert!(ended.text().ends_with('\n'));
    sse.read_until(WAIT, |_| false).await;
    assert!(sse.is_closed(), "the stream closes after its error event");

    gateway.stop().await;
    user.stop().await;
}

fn verify_calls(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("ordermesh_rpc_server_requests_total")
                && l.contains(r#"rpc_method="VerifyChain",grpc_code="OK""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_balanced_over_every_endpoint_and_survive_one_going_away() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let second = RunningService::start(Role::Audit, &certs, dirs[1].path()).await;
    let user = user_service_with_admin(&certs, dirs[2].path(), first.grpc_addr).await;
    let upstreams = Upstreams {
        user: format!("https://{}", user.grpc_addr),
        audit: format!("https://{},https://{}", first.grpc_addr, second.grpc_addr),
        ..all_at(first.grpc_addr)
    };
    let gateway = RunningGateway::start(&certs, &upstreams, GatewayConfig::default()).await;
    let admin = gateway.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    for _ in 0..40 {
        let res = admin.get("/v1/audit:verify").await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    let on_first = verify_calls(&http_get(first.metrics_addr, "/metrics").await.1);
    let on_second = verify_calls(&http_get(second.metrics_addr, "/metrics").await.1);
    assert_eq!(on_first + on_second, 40);
    assert!(
        on_first >= 5 && on_second >= 5,
        "both endpoints serve: {on_first} and {on_second}"
    );

    // One endpoint goes away: after at most the first failures, the other serves every call.
    second.stop().await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(admin.get("/v1/audit:verify").await.status);
    }
    let tail = &statuses[statuses.len() - 10..];
    assert!(tail.iter().all(|s| *s == 200), "{statuses:?}");

    gateway.stop().await;
    user.stop().await;
    first.stop().await;
}
