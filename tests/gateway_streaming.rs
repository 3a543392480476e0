//! The audit tail through the gateway: Server-Sent Events or newline-delimited JSON chosen by
//! `Accept`, admins only, new records as they are appended, and an error event (not a silent
//! close) when the backend goes away mid-stream.

use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams, build_gateway};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::http::{Api, HttpResponse, StreamingResponse};
use ordermesh_tests::mesh::{RunningService, TestCerts, audit_only, service_config};
use serde_json::json;

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
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let mut user_config = service_config(
        Role::User,
        &certs,
        StoreConfig::Embedded {
            data_dir: dirs[1].path().to_path_buf(),
        },
        any,
        audit_only(audit.grpc_addr),
    );
    user_config.bootstrap_admin = Some(("root@example.com".into(), "a long admin secret".into()));
    let user = RunningService::start_config(Role::User, user_config).await;

    let upstreams = Upstreams {
        user: format!("https://{}", user.grpc_addr),
        order: format!("https://{}", audit.grpc_addr),
        payment: format!("https://{}", audit.grpc_addr),
        audit: format!("https://{}", audit.grpc_addr),
    };
    let listener = tokio::net::TcpListener::bind(any).await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let config = GatewayConfig {
        http_addr: gateway_addr,
        ..Default::default()
    };
    let gateway =
        build_gateway(&certs.mesh_config(workloads::GATEWAY), config, &upstreams).unwrap();
    let stop_gateway = Shutdown::new();
    let serving = tokio::spawn(gateway.serve(listener, stop_gateway.clone()));

    let anon = Api {
        addr: gateway_addr,
        token: None,
    };
    let login = anon
        .post(
            "/v1/auth/login",
            json!({"email": "root@example.com", "password": "a long admin secret"}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let admin_token = login.json()["accessToken"].as_str().unwrap().to_string();
    let admin_auth = format!("Bearer {admin_token}");

    // Who may tail: nobody anonymous, no plain user.
    assert_eq!(anon.get(TAIL).await.status, 401);
    anon.post("/v1/users", json!({"email": "pat@example.com", "password": "correct horse battery", "displayName": "Pat"})).await;
    let pat = anon
        .post(
            "/v1/auth/login",
            json!({"email": "pat@example.com", "password": "correct horse battery"}),
        )
        .await;
    let pat = anon.with_token(pat.json()["accessToken"].as_str().unwrap());
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
    let created = anon.post("/v1/users", json!({"email": "quinn@example.com", "password": "correct horse battery", "displayName": "Quinn"})).await;
    assert_eq!(created.status, 200, "{}", created.text());
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
    let ended = ndjson
        .read_until(WAIT, |r| {
            ndjson_lines(r).last().is_some_and(|l| l["status"] == 503)
        })
        .await;
    assert!(ended.text().ends_with('\n'));
    sse.read_until(WAIT, |_| false).await;
    assert!(sse.is_closed(), "the stream closes after its error event");

    stop_gateway.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(15), serving).await;
    user.stop().await;
}
