//! One trace crosses workloads: a client span made by a workload's channel is the parent of
//! the server span in audit-service, both exported over OTLP to a receiver in this test.
//! (A test binary of its own: it installs the process-wide tracing subscriber.)

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ordermesh::roles::Role;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::audit::{AppendRequest, AuditEvent};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::telemetry::{self, LogFormat};
use ordermesh_tests::mesh::{RunningService, TestCerts};
use ordermesh_tests::otlp::{OtlpReceiver, ReceivedSpan};
use tracing::Instrument;

const APPEND: &str = "ordermesh.audit.v1.AuditService/Append";

fn find<'a>(spans: &'a [ReceivedSpan], name: &str, kind: SpanKind) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.span.name == name && s.span.kind == kind as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_the_client_and_server_hop() {
    let receiver = OtlpReceiver::start().await;
    // SAFETY of set_var: this binary has a single test, which sets it before any thread reads it.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        );
    }
    let guard = telemetry::init("ordermesh-tests", LogFormat::Text).expect("telemetry");

    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;

    let root = tracing::info_span!("test.place_order", otel.name = "test.place_order");
    async {
        let mut client = AuditServiceClient::new(certs.channel(
            workloads::ORDER,
            workloads::AUDIT,
            svc.grpc_addr,
        ));
        client
            .append(AppendRequest {
                events: vec![AuditEvent {
                    id: "trace-e1".into(),
                    actor: "users/u1".into(),
                    resource: "orders/o1".into(),
                    action: "order.created".into(),
                    source: "order-service".into(),
                    ..Default::default()
                }],
            })
            .await
            .expect("append");
    }
    .instrument(root)
    .await;

    let guard = tokio::task::spawn_blocking(move || {
        guard.flush();
        guard
    })
    .await
    .unwrap();
    let spans = receiver
        .wait_for(Duration::from_secs(10), |s| {
            find(s, APPEND, SpanKind::Server).is_some()
                && find(s, APPEND, SpanKind::Client).is_some()
                && s.iter().any(|x| x.span.name == "test.place_order")
        })
        .await;

    let root = spans
        .iter()
        .find(|s| s.span.name == "test.place_order")
        .expect("root span exported");
    let client = find(&spans, APPEND, SpanKind::Client).expect("client span exported");
    let server = find(&spans, APPEND, SpanKind::Server).expect("server span exported");
    assert_eq!(
        client.span.trace_id, root.span.trace_id,
        "client continues the caller's trace"
    );
    assert_eq!(
        server.span.trace_id, client.span.trace_id,
        "server continues the client's trace"
    );
    assert_eq!(client.span.parent_span_id, root.span.span_id);
    assert_eq!(
        server.span.parent_span_id, client.span.span_id,
        "server span is the child of the client span"
    );
    assert_eq!(server.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        server.attribute("rpc.service").as_deref(),
        Some("ordermesh.audit.v1.AuditService")
    );
    assert_eq!(server.attribute("rpc.method").as_deref(), Some("Append"));
    assert_eq!(
        server.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(server.service, "ordermesh-tests");

    svc.stop().await;
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
