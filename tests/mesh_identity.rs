//! The foundation end to end over real sockets with real mTLS: who may call a method is the
//! proto's say; health, reflection and metrics are there on every gRPC port.

use ordermesh::roles::Role;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::audit::{AppendRequest, AuditEvent, ListEventsRequest};
use ordermesh_platform::certs::{MeshCa, PemPair, local_dns_names};
use ordermesh_platform::identity::{WorkloadId, workloads};
use ordermesh_tests::mesh::{NAMESPACE, RunningService, TRUST_DOMAIN, TestCerts, http_get};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn event(id: &str) -> AuditEvent {
    AuditEvent {
        id: id.into(),
        actor: "users/u1".into(),
        resource: "orders/o1".into(),
        action: "order.created".into(),
        source: "payment-service".into(),
        ..Default::default()
    }
}

async fn count_events(certs: &TestCerts, svc: &RunningService) -> usize {
    let mut op = AuditServiceClient::new(certs.channel(
        workloads::OPERATOR,
        workloads::AUDIT,
        svc.grpc_addr,
    ));
    op.list_events(ListEventsRequest::default())
        .await
        .expect("operator may list")
        .into_inner()
        .records
        .len()
}

#[tokio::test]
async fn allowed_identity_succeeds_and_a_disallowed_one_is_denied() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;

    let mut payment =
        AuditServiceClient::new(certs.channel(workloads::PAYMENT, workloads::AUDIT, svc.grpc_addr));
    let ok = payment
        .append(AppendRequest {
            events: vec![event("e1")],
        })
        .await
        .expect("payment-service may append")
        .into_inner();
    assert_eq!(ok.appended, 1);

    let mut gateway =
        AuditServiceClient::new(certs.channel(workloads::GATEWAY, workloads::AUDIT, svc.grpc_addr));
    let denied = gateway
        .append(AppendRequest {
            events: vec![event("e2")],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("edge-gateway"),
        "{}",
        denied.message()
    );
    assert_eq!(
        count_events(&certs, &svc).await,
        1,
        "the denied call wrote nothing"
    );
    svc.stop().await;
}

/// A client presenting `cert` fails in the TLS handshake: an error, and not the authorization
/// layer's PERMISSION_DENIED (which would mean the handshake let it in).
async fn refused_in_handshake(uri: &str, ca_pem: &[u8], cert: &PemPair, what: &str) {
    let channel = Endpoint::from_shared(uri.to_string())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
                .domain_name(workloads::AUDIT),
        )
        .unwrap()
        .connect_lazy();
    let err = AuditServiceClient::new(channel)
        .append(AppendRequest {
            events: vec![event(what)],
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok, "{what}");
    assert_ne!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{what}: must fail in the handshake, not in authz"
    );
}

#[tokio::test]
async fn no_certificate_another_ca_or_an_expired_one_never_reaches_a_handler() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;
    let ca_pem = std::fs::read(certs.files(workloads::AUDIT).ca).unwrap();
    let uri = format!("https://{}", svc.grpc_addr);

    // Trusts the server, presents no certificate.
    let anonymous = Endpoint::from_shared(uri.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .domain_name(workloads::AUDIT),
        )
        .unwrap()
        .connect_lazy();
    let err = AuditServiceClient::new(anonymous)
        .append(AppendRequest {
            events: vec![event("anon")],
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // A certificate with an allowed identity, issued by another CA.
    let rogue_ca = MeshCa::generate("rogue CA").unwrap();
    let id = WorkloadId::new(TRUST_DOMAIN, NAMESPACE, workloads::PAYMENT);
    let rogue = rogue_ca
        .issue_for_days(&id, &local_dns_names(workloads::PAYMENT), 1)
        .unwrap();
    refused_in_handshake(&uri, &ca_pem, &rogue, "rogue").await;

    // A certificate from the mesh CA with an allowed identity that expired yesterday.
    let mesh_ca = MeshCa::from_pem(
        &std::fs::read_to_string(certs.certs.ca_cert()).unwrap(),
        &std::fs::read_to_string(certs.certs.ca_key()).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = mesh_ca
        .issue(
            &id,
            &local_dns_names(workloads::PAYMENT),
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap();
    refused_in_handshake(&uri, &ca_pem, &expired, "expired").await;

    assert_eq!(
        count_events(&certs, &svc).await,
        0,
        "nothing reached the handler"
    );
    svc.stop().await;
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_service_and_health_is_serving() {
    use tonic_reflection::pb::{v1, v1alpha};
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;
    let channel = certs.channel(workloads::OPERATOR, workloads::AUDIT, svc.grpc_addr);

    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = r1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"ordermesh.audit.v1.AuditService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(
        !names.contains(&"ordermesh.order.v1.OrderService"),
        "lists only what it serves: {names:?}"
    );

    // `describe`: the file defining the service resolves, with its options.
    let mut r1a = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "ordermesh.audit.v1.AuditService".into(),
            ),
        ),
    };
    let mut stream = r1a
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(resp.message_response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{resp:?}"
    );

    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel);
    for service in ["", "ordermesh.audit.v1.AuditService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    // The plaintext health port, for kubelet's gRPC probes.
    let probe = Endpoint::from_shared(format!("http://{}", svc.health_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(probe)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    svc.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_per_method_and_status() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;
    let mut payment =
        AuditServiceClient::new(certs.channel(workloads::PAYMENT, workloads::AUDIT, svc.grpc_addr));
    payment
        .append(AppendRequest {
            events: vec![event("m1")],
        })
        .await
        .unwrap();
    let mut gateway =
        AuditServiceClient::new(certs.channel(workloads::GATEWAY, workloads::AUDIT, svc.grpc_addr));
    let _ = gateway
        .append(AppendRequest {
            events: vec![event("m2")],
        })
        .await;

    let (status, body) = http_get(svc.metrics_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(
        r#"ordermesh_rpc_server_requests_total{rpc_service="ordermesh.audit.v1.AuditService",rpc_method="Append",grpc_code="OK"} 1"#
    ), "{body}");
    assert!(body.contains(
        r#"ordermesh_rpc_server_requests_total{rpc_service="ordermesh.audit.v1.AuditService",rpc_method="Append",grpc_code="PERMISSION_DENIED"} 1"#
    ), "{body}");
    assert!(
        body.contains("ordermesh_rpc_server_duration_seconds_bucket"),
        "{body}"
    );
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_gets_field_violations() {
    let certs = TestCerts::new();
    let data = tempfile::tempdir().unwrap();
    let svc = RunningService::start(Role::Audit, &certs, data.path()).await;
    let mut payment =
        AuditServiceClient::new(certs.channel(workloads::PAYMENT, workloads::AUDIT, svc.grpc_addr));
    let mut bad = event("");
    bad.actor = "x".repeat(300);
    let err = payment
        .append(AppendRequest { events: vec![bad] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let details = ordermesh_platform::status::details(&err);
    let fields: Vec<_> = details
        .violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["events[0].id", "events[0].actor"]);
    let err = payment
        .append(AppendRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    svc.stop().await;
}

#[tokio::test]
async fn the_operator_reads_and_only_operator_admin_may_write() {
    use ordermesh_contracts::order::catalog_service_client::CatalogServiceClient;
    use ordermesh_contracts::order::order_service_client::OrderServiceClient;
    use ordermesh_contracts::order::{ListProductsRequest, ShipOrderRequest};
    use ordermesh_contracts::user::user_service_client::UserServiceClient;
    use ordermesh_contracts::user::{GetUserRequest, SetUserRolesRequest};

    let certs = TestCerts::new();
    certs
        .certs
        .ensure(TRUST_DOMAIN, NAMESPACE, &[workloads::OPERATOR_ADMIN])
        .unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Both need upstreams to start; this test never makes them call one.
    let user = RunningService::start_with(
        Role::User,
        &certs,
        dirs[1].path(),
        "127.0.0.1:0".parse().unwrap(),
        ordermesh_tests::mesh::all_at("127.0.0.1:1".parse().unwrap()),
    )
    .await;
    let order = RunningService::start_with(
        Role::Order,
        &certs,
        dirs[0].path(),
        "127.0.0.1:0".parse().unwrap(),
        ordermesh_tests::mesh::all_at(user.grpc_addr),
    )
    .await;
    let as_op = |w: &str, target: &str, addr| certs.channel(w, target, addr);

    // Reads: the operator may.
    CatalogServiceClient::new(as_op(
        workloads::OPERATOR,
        workloads::ORDER,
        order.grpc_addr,
    ))
    .list_products(ListProductsRequest::default())
    .await
    .expect("the operator lists products");
    let read = UserServiceClient::new(as_op(workloads::OPERATOR, workloads::USER, user.grpc_addr))
        .get_user(GetUserRequest {
            name: "users/nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        read.code(),
        tonic::Code::NotFound,
        "reached the handler: {read:?}"
    );

    // Writes: the operator may not.
    let roles = || SetUserRolesRequest {
        name: "users/nobody".into(),
        roles: vec![2],
    };
    let denied =
        UserServiceClient::new(as_op(workloads::OPERATOR, workloads::USER, user.grpc_addr))
            .set_user_roles(roles())
            .await
            .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let ship = OrderServiceClient::new(as_op(
        workloads::OPERATOR,
        workloads::ORDER,
        order.grpc_addr,
    ))
    .ship_order(ShipOrderRequest {
        name: "orders/x".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(ship.code(), tonic::Code::PermissionDenied, "{ship:?}");

    // The identity named for writes gets past the identity check.
    let admin_write = UserServiceClient::new(as_op(
        workloads::OPERATOR_ADMIN,
        workloads::USER,
        user.grpc_addr,
    ))
    .set_user_roles(roles())
    .await
    .unwrap_err();
    assert_ne!(
        admin_write.code(),
        tonic::Code::PermissionDenied,
        "{admin_write:?}"
    );
    order.stop().await;
    user.stop().await;
}
