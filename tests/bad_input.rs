//! The bad-input corpus: every malformed, oversized, out-of-range or hostile request, through
//! the gateway and directly over gRPC, gets its documented error, and nothing is written.

use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::order::{CreateOrderRequest, OrderItem};
use ordermesh_contracts::payment::DepositRequest;
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::money::money;
use ordermesh_tests::http::{Api, request};
use ordermesh_tests::local_mesh::LocalMesh;
use ordermesh_tests::mesh::{RunningService, TestCerts, as_user, audit_only};
use serde_json::json;
use tonic::Code;

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    status: u16,
    /// A word the problem's detail or a field violation must contain.
    mentions: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    mentions: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        body: body.into(),
        status,
        mentions,
    }
}

fn order_body(items: serde_json::Value, currency: &str) -> Vec<u8> {
    json!({"items": items, "currency": currency, "idempotencyKey": "k"})
        .to_string()
        .into_bytes()
}

fn deposit_body(amount: serde_json::Value, currency: &str) -> Vec<u8> {
    json!({"amount": {"currency": currency, "amountMinor": amount}, "idempotencyKey": "d"})
        .to_string()
        .into_bytes()
}

async fn state(
    api: &Api,
    admin: &Api,
) -> (
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
) {
    (
        api.get("/v1/wallet").await.json()["balances"].clone(),
        api.get("/v1/orders").await.json()["orders"].clone(),
        admin.get("/v1/products/MUG-001").await.json()["stock"].clone(),
        admin.get("/v1/audit:verify").await.json()["recordsChecked"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_every_bad_request_with_its_problem_and_writes_nothing() {
    let mesh = LocalMesh::start().await;
    let anon = Api {
        addr: mesh.gateway,
        token: None,
    };
    let admin = anon.login(&mesh.admin.0, &mesh.admin.1).await;
    let eve = anon.new_user("eve@example.com").await;
    let funded = eve
        .post(
            "/v1/wallet/deposits",
            json!({"amount": {"currency": "EUR", "amountMinor": "5000"}, "idempotencyKey": "seed"}),
        )
        .await;
    assert_eq!(funded.status, 200);
    // Let the deposit's audit event land before taking the "before" picture.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = state(&eve, &admin).await;

    let deep = format!(
        "{{\"items\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let thousands: Vec<_> = (0..5000)
        .map(|_| json!({"sku": "MUG-001", "quantity": 1}))
        .collect();
    let mut invalid_utf8 = br#"{"items": [{"sku": "MUG-"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    invalid_utf8
        .extend_from_slice(br#"", "quantity": 1}], "currency": "EUR", "idempotencyKey": "u"}"#);
    let corpus = vec![
        case(
            "malformed JSON",
            "POST",
            "/v1/orders",
            r#"{"items": [}"#,
            400,
            "JSON",
        ),
        case(
            "truncated JSON",
            "POST",
            "/v1/orders",
            r#"{"items":[{"sku":"MUG-001","quantity":1}],"currency":"EU"#,
            400,
            "JSON",
        ),
        case("empty body", "POST", "/v1/orders", "", 400, ""),
        case(
            "a JSON array, not an object",
            "POST",
            "/v1/orders",
            "[1,2,3]",
            400,
            "",
        ),
        case(
            "wrong type: quantity as text",
            "POST",
            "/v1/orders",
            order_body(json!([{"sku": "MUG-001", "quantity": "two"}]), "EUR"),
            400,
            "quantity",
        ),
        case(
            "wrong type: items as a string",
            "POST",
            "/v1/orders",
            order_body(json!("MUG-001"), "EUR"),
            400,
            "items",
        ),
        case(
            "huge quantity",
            "POST",
            "/v1/orders",
            order_body(
                json!([{"sku": "MUG-001", "quantity": "99999999999999999999999"}]),
                "EUR",
            ),
            400,
            "quantity",
        ),
        case(
            "float quantity",
            "POST",
            "/v1/orders",
            order_body(json!([{"sku": "MUG-001", "quantity": 1.5}]), "EUR"),
            400,
            "quantity",
        ),
        case(
            "zero quantity",
            "POST",
            "/v1/orders",
            order_body(json!([{"sku": "MUG-001", "quantity": 0}]), "EUR"),
            400,
            "quantity",
        ),
        case(
            "negative quantity",
            "POST",
            "/v1/orders",
            order_body(json!([{"sku": "MUG-001", "quantity": -3}]), "EUR"),
            400,
            "quantity",
        ),
        case(
            "quantity beyond stock math",
            "POST",
            "/v1/orders",
            order_body(
                json!([{"sku": "MUG-001", "quantity": "9223372036854775807"}]),
                "EUR",
            ),
            400,
            "quantity",
        ),
        case(
            "unknown currency on an order",
            "POST",
            "/v1/orders",
            order_body(json!([{"sku": "MUG-001", "quantity": 1}]), "XXX"),
            400,
            "currency",
        ),
        case(
            "no items",
            "POST",
            "/v1/orders",
            order_body(json!([]), "EUR"),
            400,
            "items",
        ),
        case(
            "thousands of items",
            "POST",
            "/v1/orders",
            order_body(json!(thousands), "EUR"),
            400,
            "items",
        ),
        case("deeply nested JSON", "POST", "/v1/orders", deep, 400, ""),
        case("invalid UTF-8", "POST", "/v1/orders", invalid_utf8, 400, ""),
        case(
            "unknown field",
            "POST",
            "/v1/orders",
            r#"{"items": [], "currency": "EUR", "idempotencyKey": "k", "discount": 100}"#,
            400,
            "discount",
        ),
        case(
            "zero deposit",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!("0"), "EUR"),
            400,
            "amount",
        ),
        case(
            "negative deposit",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!("-500"), "EUR"),
            400,
            "amount",
        ),
        case(
            "deposit beyond int64",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!("9223372036854775808"), "EUR"),
            400,
            "amount",
        ),
        case(
            "deposit of a huge number",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!(1e300), "EUR"),
            400,
            "amount",
        ),
        case(
            "unknown currency on a deposit",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!("100"), "ZZZ"),
            400,
            "currency",
        ),
        case(
            "lower-case currency",
            "POST",
            "/v1/wallet/deposits",
            deposit_body(json!("100"), "eur"),
            400,
            "currency",
        ),
        case(
            "deposit without a key",
            "POST",
            "/v1/wallet/deposits",
            r#"{"amount": {"currency": "EUR", "amountMinor": "100"}}"#,
            400,
            "idempotency",
        ),
        case(
            "oversized body",
            "POST",
            "/v1/orders",
            vec![b' '; 2 * 1024 * 1024],
            413,
            "",
        ),
        case(
            "encoded slash in a path parameter",
            "GET",
            "/v1/orders/abc%2F..%2Fusers",
            "",
            400,
            "",
        ),
        case(
            "unknown query parameter",
            "GET",
            "/v1/orders?pageSize=2&admin=true",
            "",
            400,
            "admin",
        ),
        case(
            "query parameter of the wrong type",
            "GET",
            "/v1/orders?pageSize=many",
            "",
            400,
            "page",
        ),
    ];
    let auth = format!("Bearer {}", eve.token.as_deref().unwrap());
    for c in &corpus {
        let res = request(
            mesh.gateway,
            c.method,
            &c.path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &c.body,
        )
        .await;
        assert_eq!(res.status, c.status, "{}: {}", c.what, res.text());
        assert_eq!(
            res.header("content-type"),
            Some("application/problem+json"),
            "{}",
            c.what
        );
        let problem = res.json();
        assert_eq!(problem["status"], c.status, "{}", c.what);
        assert!(problem["requestId"].is_string(), "{}", c.what);
        assert!(
            problem
                .to_string()
                .to_lowercase()
                .contains(&c.mentions.to_lowercase()),
            "{}: {problem}",
            c.what
        );
    }

    // Headers too large for the server: refused before any route runs.
    let huge = "x".repeat(1024 * 1024);
    let res = request(
        mesh.gateway,
        "POST",
        "/v1/orders",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("x-padding", &huge),
        ],
        &order_body(json!([{"sku": "MUG-001", "quantity": 1}]), "EUR"),
    )
    .await;
    assert_eq!(res.status, 431, "{}", res.text());

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&eve, &admin).await, before, "nothing was written");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_grpc_callers_get_invalid_argument_and_nothing_is_written() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let audit = RunningService::start(Role::Audit, &certs, dirs[2].path()).await;
    let any = "127.0.0.1:0".parse().unwrap();
    let payment = RunningService::start_with(
        Role::Payment,
        &certs,
        dirs[0].path(),
        any,
        audit_only(audit.grpc_addr),
    )
    .await;
    let order = RunningService::start_with(
        Role::Order,
        &certs,
        dirs[1].path(),
        any,
        Upstreams {
            payment: format!("https://{}", payment.grpc_addr),
            ..audit_only(audit.grpc_addr)
        },
    )
    .await;
    let mut wallets = PaymentServiceClient::new(certs.channel(
        workloads::GATEWAY,
        workloads::PAYMENT,
        payment.grpc_addr,
    ));
    let mut orders = OrderServiceClient::new(certs.channel(
        workloads::GATEWAY,
        workloads::ORDER,
        order.grpc_addr,
    ));
    let deposits = [
        ("zero", money("EUR", 0), "k1"),
        ("negative", money("EUR", -1), "k2"),
        ("unknown currency", money("XXX", 100), "k3"),
        ("most negative", money("EUR", i64::MIN), "k4"),
        ("no key", money("EUR", 100), ""),
        ("key with a newline", money("EUR", 100), "a\nb"),
    ];
    for (what, amount, key) in deposits {
        let err = wallets
            .deposit(as_user(
                DepositRequest {
                    amount: Some(amount),
                    idempotency_key: key.into(),
                },
                "mallory",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            !ordermesh_platform::status::details(&err)
                .violations
                .is_empty(),
            "{what}: field violations are attached"
        );
    }
    let line = |sku: &str, quantity: i64| OrderItem {
        sku: sku.into(),
        quantity,
        unit_price: None,
    };
    let orders_corpus = [
        ("zero quantity", vec![line("A", 0)], "EUR"),
        ("negative quantity", vec![line("A", -5)], "EUR"),
        ("huge quantity", vec![line("A", i64::MAX)], "EUR"),
        ("no items", vec![], "EUR"),
        (
            "thousands of items",
            (0..5000).map(|_| line("A", 1)).collect(),
            "EUR",
        ),
        ("unknown currency", vec![line("A", 1)], "XXX"),
        ("empty sku", vec![line("", 1)], "EUR"),
    ];
    for (what, items, currency) in orders_corpus {
        let err = orders
            .create_order(as_user(
                CreateOrderRequest {
                    items,
                    currency: currency.into(),
                    idempotency_key: "k".into(),
                },
                "mallory",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }

    // Bytes that are not a valid message (a string field that is not UTF-8).
    let mut raw = tonic::client::Grpc::new(certs.channel(
        workloads::GATEWAY,
        workloads::PAYMENT,
        payment.grpc_addr,
    ));
    raw.ready().await.unwrap();
    let mut req = tonic::Request::new(bytes::Bytes::from_static(&[0x12, 0x03, 0xff, 0xfe, 0x80]));
    req.metadata_mut()
        .insert("x-ordermesh-user-id", "mallory".parse().unwrap());
    req.metadata_mut()
        .insert("x-ordermesh-user-roles", "user".parse().unwrap());
    let err = raw
        .unary(
            req,
            "/ordermesh.payment.v1.PaymentService/Deposit"
                .parse()
                .unwrap(),
            ordermesh_edge_gateway::codec::RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let wallet = wallets
        .get_wallet(as_user(Default::default(), "mallory"))
        .await
        .unwrap()
        .into_inner();
    assert!(wallet.balances.is_empty(), "nothing was deposited");
    let listed = orders
        .list_orders(as_user(Default::default(), "mallory"))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.orders.is_empty(), "nothing was ordered");
    order.stop().await;
    payment.stop().await;
    audit.stop().await;
}
