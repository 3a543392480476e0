//! One order placement through the gateway is one trace: the gateway's HTTP span, the hop to
//! order-service, its charge at payment-service, and the audit delivery of its events, each
//! span the child of the one that caused it. Spans go over OTLP to a receiver in this test.
//! (A test binary of its own: it installs the process-wide tracing subscriber.)

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::telemetry::{self, LogFormat};
use ordermesh_tests::http::{Api, request};
use ordermesh_tests::local_mesh::LocalMesh;
use ordermesh_tests::otlp::{OtlpReceiver, ReceivedSpan};
use serde_json::json;

fn find<'a>(
    spans: &'a [ReceivedSpan],
    trace: &[u8],
    name: &str,
    kind: SpanKind,
) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.span.trace_id == trace && s.span.name == name && s.span.kind == kind as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placement_is_one_trace_across_every_hop() {
    let receiver = OtlpReceiver::start().await;
    // SAFETY of set_var: the only test of this binary sets it before any thread reads it.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        );
    }
    // As `ordermesh up` does: one process, each role its own service in the trace backend.
    let guard =
        telemetry::init_roles("ordermesh", workloads::ROLES, LogFormat::Text).expect("telemetry");
    let mesh = LocalMesh::start().await;
    let api = Api {
        addr: mesh.gateway,
        token: None,
    };
    api.post("/v1/users", json!({"email": "tia@example.com", "password": "correct horse battery", "displayName": "Tia"})).await;
    let login = api
        .post(
            "/v1/auth/login",
            json!({"email": "tia@example.com", "password": "correct horse battery"}),
        )
        .await;
    let token = login.json()["accessToken"].as_str().unwrap().to_string();
    let tia = api.with_token(&token);
    tia.post(
        "/v1/wallet/deposits",
        json!({"amount": {"currency": "EUR", "amountMinor": "9000"}, "idempotencyKey": "d"}),
    )
    .await;

    let body = json!({"items": [{"sku": "TEE-002", "quantity": 1}], "currency": "EUR", "idempotencyKey": "traced"}).to_string();
    let res = request(
        mesh.gateway,
        "POST",
        "/v1/orders",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.json()["state"], "ORDER_STATE_CONFIRMED");
    let traceparent = res
        .header("traceparent")
        .expect("the response names its trace")
        .to_string();
    let trace_hex = traceparent.split('-').nth(1).unwrap().to_string();
    let trace: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();

    // Spans are exported as they end, a child before its parent: wait until the audit
    // delivery's whole chain of parents is in, up to the HTTP span.
    let wanted = |spans: &[ReceivedSpan]| {
        let by_id: HashMap<&[u8], &ReceivedSpan> = spans
            .iter()
            .map(|s| (s.span.span_id.as_slice(), s))
            .collect();
        let Some(mut at) = find(
            spans,
            &trace,
            "ordermesh.audit.v1.AuditService/Append",
            SpanKind::Server,
        ) else {
            return false;
        };
        while let Some(p) = by_id.get(at.span.parent_span_id.as_slice()) {
            at = p;
        }
        at.span.parent_span_id.is_empty()
            && at.span.name == "POST /v1/orders"
            && find(
                spans,
                &trace,
                "ordermesh.payment.v1.PaymentService/Charge",
                SpanKind::Client,
            )
            .is_some()
            // Every span of the trace is in, so none is an orphan.
            && spans
                .iter()
                .filter(|s| s.span.trace_id == trace && !s.span.parent_span_id.is_empty())
                .all(|s| by_id.contains_key(s.span.parent_span_id.as_slice()))
    };
    let mut spans = Vec::new();
    for _ in 0..60 {
        let g = &guard;
        tokio::task::block_in_place(|| g.flush());
        spans = receiver.spans();
        if wanted(&spans) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let by_id: HashMap<&[u8], &ReceivedSpan> = spans
        .iter()
        .map(|s| (s.span.span_id.as_slice(), s))
        .collect();
    let parent = |s: &ReceivedSpan| by_id.get(s.span.parent_span_id.as_slice()).copied();

    let http =
        find(&spans, &trace, "POST /v1/orders", SpanKind::Server).expect("the gateway's HTTP span");
    assert!(
        http.span.parent_span_id.is_empty(),
        "the HTTP span is the root"
    );
    let order_client = find(
        &spans,
        &trace,
        "ordermesh.order.v1.OrderService/CreateOrder",
        SpanKind::Client,
    )
    .expect("gateway → order client span");
    let order_server = find(
        &spans,
        &trace,
        "ordermesh.order.v1.OrderService/CreateOrder",
        SpanKind::Server,
    )
    .expect("order-service span");
    let charge_client = find(
        &spans,
        &trace,
        "ordermesh.payment.v1.PaymentService/Charge",
        SpanKind::Client,
    )
    .expect("order → payment client span");
    let charge_server = find(
        &spans,
        &trace,
        "ordermesh.payment.v1.PaymentService/Charge",
        SpanKind::Server,
    )
    .expect("payment-service span");
    assert_eq!(
        parent(order_client).map(|p| p.span.span_id.clone()),
        Some(http.span.span_id.clone())
    );
    assert_eq!(
        parent(order_server).map(|p| p.span.span_id.clone()),
        Some(order_client.span.span_id.clone())
    );
    assert_eq!(
        parent(charge_client).map(|p| p.span.span_id.clone()),
        Some(order_server.span.span_id.clone())
    );
    assert_eq!(
        parent(charge_server).map(|p| p.span.span_id.clone()),
        Some(charge_client.span.span_id.clone())
    );

    // The audit delivery of the order's events continues the same trace.
    let append = find(
        &spans,
        &trace,
        "ordermesh.audit.v1.AuditService/Append",
        SpanKind::Server,
    )
    .expect("audit delivery in the trace");
    let mut chain = vec![append.span.name.clone()];
    let mut at = append;
    while let Some(p) = parent(at) {
        chain.push(p.span.name.clone());
        at = p;
    }
    assert_eq!(
        at.span.span_id, http.span.span_id,
        "the delivery chain leads back to the HTTP request: {chain:?}"
    );
    assert!(chain.iter().any(|n| n == "outbox deliver"), "{chain:?}");
    assert_eq!(http.attribute("http.route").as_deref(), Some("/v1/orders"));

    // Each hop is its role's service, as in production.
    for (span, service) in [
        (http, "edge-gateway"),
        (order_client, "edge-gateway"),
        (order_server, "order-service"),
        (charge_client, "order-service"),
        (charge_server, "payment-service"),
        (append, "audit-service"),
    ] {
        assert_eq!(span.service, service, "{}", span.span.name);
    }
    // The tree, as Jaeger would draw it (printed for the record).
    fn print_tree(spans: &[&ReceivedSpan], at: &ReceivedSpan, depth: usize) {
        eprintln!("{}{} [{}]", "  ".repeat(depth), at.span.name, at.service);
        let mut children: Vec<&&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.span.parent_span_id == at.span.span_id)
            .collect();
        children.sort_by_key(|s| s.span.start_time_unix_nano);
        for c in children {
            print_tree(spans, c, depth + 1);
        }
    }
    let whole: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.trace_id == trace).collect();
    print_tree(&whole, http, 0);
    // One root, no orphans.
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.trace_id == trace).collect();
    let roots: Vec<&str> = in_trace
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .map(|s| s.span.name.as_str())
        .collect();
    assert_eq!(roots, ["POST /v1/orders"]);
    for s in &in_trace {
        if !s.span.parent_span_id.is_empty() {
            assert!(
                parent(s).is_some(),
                "{} ({}) is an orphan",
                s.span.name,
                s.service
            );
        }
    }
    // Store calls are CLIENT spans under the RPC that made them, named by the conventions.
    let under = |s: &ReceivedSpan, server: &ReceivedSpan| {
        parent(s).is_some_and(|p| p.span.span_id == server.span.span_id)
    };
    for (server, service) in [
        (order_server, "order-service"),
        (charge_server, "payment-service"),
    ] {
        let store = in_trace
            .iter()
            .find(|s| s.attribute("db.system.name").is_some() && under(s, server))
            .unwrap_or_else(|| panic!("no store span under {}", server.span.name));
        assert_eq!(store.span.kind, SpanKind::Client as i32);
        assert_eq!(store.service, service);
        assert_eq!(store.attribute("db.system.name").as_deref(), Some("redb"));
        assert!(store.attribute("db.operation.name").is_some());
        assert!(store.attribute("db.collection.name").is_some());
    }
    // None of tracing's bookkeeping attributes.
    for s in &in_trace {
        for noise in [
            "busy_ns",
            "idle_ns",
            "thread.id",
            "thread.name",
            "code.filepath",
        ] {
            assert!(
                s.attribute(noise).is_none(),
                "{} carries {noise}",
                s.span.name
            );
        }
    }
    assert_eq!(
        charge_server.attribute("rpc.system").as_deref(),
        Some("grpc")
    );

    mesh.stop().await;
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
