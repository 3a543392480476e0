//! What an operator of `ordermesh up` sees: one JSON access line per gateway request (route
//! template, method, status, duration, request id, trace id, user; never a token, password or
//! body), `mesh.json` naming every role's metrics and health endpoints, and each role's
//! `/metrics` with its build info, process resources and the gateway's breakers and limits.

use ordermesh_tests::http::{Api, request};
use ordermesh_tests::ordermesh_binary;
use ordermesh_tests::up_process::UpProcess;
use serde_json::{Value, json};

const ROLES: [&str; 5] = [
    "edge-gateway",
    "user-service",
    "order-service",
    "payment-service",
    "audit-service",
];

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// A field of a JSON log line: on the event, or on any span of its context.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["fields"].get(name).or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .find_map(|s| s.get(name))
            .or_else(|| line["span"].get(name))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_mesh_json_and_metrics_tell_an_operator_what_runs() {
    let mut up = UpProcess::start(&ordermesh_binary!(), &[("RUST_LOG", "info")]).await;
    let api = Api {
        addr: up.gateway,
        token: None,
    };
    let password = "a secret passphrase 42";
    api.post(
        "/v1/users",
        json!({"email": "olive@example.com", "password": password, "displayName": "Olive"}),
    )
    .await;
    let olive = api.login("olive@example.com", password).await;
    let token = olive.token.clone().unwrap();
    let traced = request(
        up.gateway,
        "GET",
        "/v1/orders",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", "ops-req-1"),
        ],
        b"",
    )
    .await;
    assert_eq!(traced.status, 200, "{}", traced.text());
    let trace_id = traced
        .header("traceparent")
        .and_then(|t| t.split('-').nth(1))
        .expect("the answer names its trace")
        .to_string();

    // mesh.json: every role's metrics and health endpoint.
    for role in ROLES {
        let metrics = up.mesh_json["metrics"][role]
            .as_str()
            .unwrap_or_else(|| panic!("mesh.json names {role}'s metrics: {}", up.mesh_json));
        assert!(up.mesh_json["health"][role].is_string(), "{role}'s health");
        let addr: std::net::SocketAddr = metrics
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        let text = request(addr, "GET", "/metrics", &[], b"").await.text();
        assert!(
            text.contains(&format!("role=\"{role}\"")) && text.contains("ordermesh_build_info"),
            "{role}: {text}"
        );
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "{role} has no {name}");
        }
        if role == "edge-gateway" {
            assert!(
                text.contains("ordermesh_client_circuit_breaker_open{backend=\"order-service\"} 0"),
                "{text}"
            );
            // Status codes by their canonical names.
            assert!(text.contains("grpc_code=\"OK\""), "{text}");
        }
        if role == "order-service" {
            assert!(
                text.contains("ordermesh_outbox_pending_items{outbox=\"order-service\"}"),
                "{text}"
            );
            assert!(text.contains("ordermesh_store_operation_duration_seconds_count{operation=\"Query\",backend=\"embedded\""), "{text}");
        }
    }
    assert!(up.stop().await, "up stops on SIGTERM");

    let log = std::fs::read_to_string(&up.log).unwrap();
    assert!(!log.contains(password), "a password reached the log");
    assert!(!log.contains(&token), "a token reached the log");
    let lines = json_lines(&log);
    assert!(
        !lines.is_empty(),
        "up's log is JSON lines when not on a terminal:\n{log}"
    );
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    let line = access
        .iter()
        .find(|l| field(l, "request_id").and_then(Value::as_str) == Some("ops-req-1"))
        .unwrap_or_else(|| panic!("no access line for the request: {access:?}"));
    assert_eq!(
        field(line, "route").and_then(Value::as_str),
        Some("/v1/orders")
    );
    assert_eq!(field(line, "method").and_then(Value::as_str), Some("GET"));
    assert_eq!(field(line, "status").and_then(Value::as_u64), Some(200));
    assert!(field(line, "duration_ms").and_then(Value::as_f64).is_some());
    assert_eq!(
        field(line, "trace_id").and_then(Value::as_str),
        Some(trace_id.as_str())
    );
    assert!(
        field(line, "enduser.id")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty()),
        "the user is named: {line}"
    );
    // One access line per request: the sign-up, the login and the listing at least.
    assert!(access.len() >= 3, "{}", access.len());
}
