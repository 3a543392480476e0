//! Faults with money in flight. payment-service is a real process SIGKILLed while orders are
//! being placed, and audit-service is stopped during the same traffic; after both return,
//! every order is CONFIRMED or CANCELLED, nobody was charged twice, each wallet equals
//! deposits − confirmed charges + refunds, every ledger transaction balances, and each order's
//! events reached the audit log exactly once. Storage failures injected under order- and
//! payment-service leave no partial write and answer with a retryable status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};
use ordermesh_contracts::audit::ListEventsRequest;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::order::catalog_service_client::CatalogServiceClient;
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::order::{
    CancelOrderRequest, CreateOrderRequest, CreateProductRequest, GetProductRequest, Order,
    OrderItem, OrderState, Product,
};
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::payment::{DepositRequest, TransactionKind};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::money::money;
use ordermesh_platform::store::faults::{Faults, WriteFault};
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::ledger::{all_transactions, assert_books_balance, balance, settled};
use ordermesh_tests::mesh::{RunningService, TestCerts, as_user, no_upstreams, with_roles};
use ordermesh_tests::process::ServiceProcess;
use tonic::Code;

const SHOPPERS: usize = 4;
const ORDERS_EACH: usize = 10;
const FUNDS: i64 = 100_000;

fn as_admin<T>(msg: T) -> tonic::Request<T> {
    with_roles(msg, "admin-1", &["user", "admin"])
}

fn orders(certs: &TestCerts, addr: SocketAddr) -> OrderServiceClient<MeshChannel> {
    OrderServiceClient::new(certs.channel(workloads::GATEWAY, workloads::ORDER, addr))
}

fn wallets(certs: &TestCerts, addr: SocketAddr) -> PaymentServiceClient<MeshChannel> {
    PaymentServiceClient::new(certs.channel(workloads::GATEWAY, workloads::PAYMENT, addr))
}

async fn create_product(certs: &TestCerts, order: SocketAddr, sku: &str, price: i64) {
    CatalogServiceClient::new(certs.channel(workloads::GATEWAY, workloads::ORDER, order))
        .create_product(as_admin(CreateProductRequest {
            product: Some(Product {
                sku: sku.into(),
                display_name: sku.into(),
                unit_price: Some(money("EUR", price)),
                stock: 10_000,
                ..Default::default()
            }),
        }))
        .await
        .expect("create product");
}

fn order_of(sku: &str, quantity: i64, key: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        items: vec![OrderItem {
            sku: sku.into(),
            quantity,
            unit_price: None,
        }],
        currency: "EUR".into(),
        idempotency_key: key.into(),
    }
}

/// Places an order the way a client does: retrying a failed call with the same key.
async fn place(
    client: &OrderServiceClient<MeshChannel>,
    user: &str,
    req: CreateOrderRequest,
) -> Order {
    for _ in 0..100 {
        match client
            .clone()
            .create_order(as_user(req.clone(), user))
            .await
        {
            Ok(o) => return o.into_inner(),
            Err(s) => assert!(
                matches!(
                    s.code(),
                    Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
                ),
                "only retryable failures: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order never placed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_killed_and_audit_stopped_mid_traffic_lose_no_money_and_no_events() {
    let binary = ordermesh_tests::ordermesh_binary!();
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let audit_addr = audit.grpc_addr;
    let payment_addr = std::net::TcpListener::bind(any)
        .unwrap()
        .local_addr()
        .unwrap();
    let upstreams = Upstreams {
        audit: format!("https://{audit_addr}"),
        payment: format!("https://{payment_addr}"),
        ..no_upstreams()
    };
    let payment = ServiceProcess::start(
        &binary,
        Role::Payment,
        &certs,
        dirs[1].path(),
        payment_addr,
        &upstreams,
    )
    .await;
    let order =
        RunningService::start_with(Role::Order, &certs, dirs[2].path(), any, upstreams.clone())
            .await;
    let order_addr = order.grpc_addr;
    for (sku, price) in [("A", 300), ("B", 700), ("C", 1100)] {
        create_product(&certs, order_addr, sku, price).await;
    }
    let users: Vec<String> = (0..SHOPPERS).map(|i| format!("shopper-{i}")).collect();
    for u in &users {
        wallets(&certs, payment_addr)
            .deposit(as_user(
                DepositRequest {
                    amount: Some(money("EUR", FUNDS)),
                    idempotency_key: "funds".into(),
                },
                u,
            ))
            .await
            .expect("deposit");
    }

    // Traffic: every shopper places orders back to back while the faults happen.
    let traffic: Vec<_> = users
        .iter()
        .map(|u| {
            let u = u.clone();
            let client = orders(&certs, order_addr);
            tokio::spawn(async move {
                let mut placed = Vec::new();
                for i in 0..ORDERS_EACH {
                    let sku = ["A", "B", "C"][i % 3];
                    let req = order_of(sku, 1 + (i as i64 % 2), &format!("{u}-{i}"));
                    placed.push(place(&client, &u, req).await);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                (u, placed)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(150)).await;
    payment.kill();
    tokio::time::sleep(Duration::from_millis(150)).await;
    audit.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payment = ServiceProcess::start(
        &binary,
        Role::Payment,
        &certs,
        dirs[1].path(),
        payment_addr,
        &upstreams,
    )
    .await;
    let audit = RunningService::start_at(Role::Audit, &certs, dirs[0].path(), audit_addr).await;

    let mut by_user: HashMap<String, Vec<Order>> = HashMap::new();
    for t in traffic {
        let (u, placed) = t.await.expect("traffic task");
        let mut settled_orders = Vec::new();
        for o in placed {
            settled_orders.push(settled(&orders(&certs, order_addr), &u, &o.name).await);
        }
        by_user.insert(u, settled_orders);
    }
    let mut confirmed = 0;
    for (u, placed) in &by_user {
        assert_eq!(placed.len(), ORDERS_EACH);
        for o in placed {
            let state = OrderState::try_from(o.state).unwrap();
            assert!(
                matches!(state, OrderState::Confirmed | OrderState::Cancelled),
                "{} ended {state:?}",
                o.name
            );
            if state == OrderState::Confirmed {
                confirmed += 1;
            }
        }
        assert_books_balance(&wallets(&certs, payment_addr), u, FUNDS, placed).await;
    }
    assert!(confirmed > 0, "funds were ample: orders confirm");

    // Refunds count too: cancel one confirmed order per shopper.
    for (u, placed) in &by_user {
        if let Some(o) = placed
            .iter()
            .find(|o| o.state == OrderState::Confirmed as i32)
        {
            let cancelled = orders(&certs, order_addr)
                .cancel_order(as_user(
                    CancelOrderRequest {
                        name: o.name.clone(),
                        reason: "changed my mind".into(),
                    },
                    u,
                ))
                .await
                .expect("cancel")
                .into_inner();
            assert_eq!(cancelled.state, OrderState::Cancelled as i32);
        }
        let mut now = Vec::new();
        for o in placed {
            now.push(settled(&orders(&certs, order_addr), u, &o.name).await);
        }
        // Refunds settle asynchronously; wait (bounded) for the books to show them.
        let mut ok = false;
        for _ in 0..100 {
            let txs = all_transactions(&wallets(&certs, payment_addr), u).await;
            if txs.iter().any(|t| t.kind == TransactionKind::Refund as i32) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "the refund for {u} landed");
        assert_books_balance(&wallets(&certs, payment_addr), u, FUNDS, &now).await;
    }

    // Every order's creation and outcome reached the audit log exactly once.
    let audit_client =
        AuditServiceClient::new(certs.channel(workloads::GATEWAY, workloads::AUDIT, audit_addr));
    for placed in by_user.values() {
        for o in placed {
            let expected = ["order.created", "order.confirmed"];
            let mut seen = HashMap::new();
            for _ in 0..150 {
                let records = audit_client
                    .clone()
                    .list_events(as_admin(ListEventsRequest {
                        resource: o.name.clone(),
                        page_size: 100,
                        ..Default::default()
                    }))
                    .await
                    .expect("list events")
                    .into_inner()
                    .records;
                seen = records.iter().fold(HashMap::new(), |mut m, r| {
                    let action = r
                        .event
                        .as_ref()
                        .map(|e| e.action.clone())
                        .unwrap_or_default();
                    *m.entry(action).or_insert(0) += 1;
                    m
                });
                let outcome_there = if o.payment.is_empty() {
                    seen.contains_key("order.cancelled")
                } else {
                    seen.contains_key("order.confirmed")
                };
                if seen.contains_key("order.created") && outcome_there {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(seen.get(expected[0]), Some(&1), "{}: {seen:?}", o.name);
            if !o.payment.is_empty() {
                assert_eq!(seen.get(expected[1]), Some(&1), "{}: {seen:?}", o.name);
            }
            assert!(seen.values().all(|n| *n == 1), "{}: {seen:?}", o.name);
        }
    }

    order.stop().await;
    payment.kill();
    audit.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_leave_no_partial_write_and_answer_retryably() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let faulty = |dir: &std::path::Path, faults: &Faults| StoreConfig::Faulty {
        inner: Box::new(StoreConfig::Embedded {
            data_dir: dir.to_path_buf(),
        }),
        faults: faults.clone(),
    };
    let (payment_faults, order_faults) = (Faults::new(), Faults::new());
    let with_audit = Upstreams {
        audit: format!("https://{}", audit.grpc_addr),
        ..no_upstreams()
    };
    let payment = RunningService::start_on(
        Role::Payment,
        &certs,
        faulty(dirs[1].path(), &payment_faults),
        any,
        with_audit.clone(),
    )
    .await;
    let order = RunningService::start_on(
        Role::Order,
        &certs,
        faulty(dirs[2].path(), &order_faults),
        any,
        Upstreams {
            payment: format!("https://{}", payment.grpc_addr),
            ..with_audit
        },
    )
    .await;
    let (order_addr, payment_addr) = (order.grpc_addr, payment.grpc_addr);
    create_product(&certs, order_addr, "A", 500).await;
    let user = "ada";
    let deposit = |key: &str| {
        as_user(
            DepositRequest {
                amount: Some(money("EUR", 10_000)),
                idempotency_key: key.into(),
            },
            user,
        )
    };

    // The store refuses every write for a while: the service's own retries give up with
    // UNAVAILABLE, and nothing of the deposit exists.
    let refusing = |touching: &str| WriteFault {
        touching: touching.into(),
        skip: 0,
        times: usize::MAX,
        after_commit: false,
    };
    payment_faults.fail_writes(refusing("wallet#"));
    let refused = wallets(&certs, payment_addr)
        .deposit(deposit("dep-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    payment_faults.clear();
    assert_eq!(balance(&wallets(&certs, payment_addr), user).await, 0);
    assert!(
        all_transactions(&wallets(&certs, payment_addr), user)
            .await
            .is_empty()
    );
    // The client's retry with the same key lands once.
    wallets(&certs, payment_addr)
        .deposit(deposit("dep-1"))
        .await
        .expect("retried deposit");
    assert_eq!(balance(&wallets(&certs, payment_addr), user).await, 10_000);

    // A write that lands but whose answer is lost: the service's retry finds it done, and a
    // client's retry gets the same transaction; counted once either way.
    let injected = payment_faults.injected();
    payment_faults.fail_writes(WriteFault {
        touching: "wallet#".into(),
        skip: 0,
        times: 1,
        after_commit: true,
    });
    let first = wallets(&certs, payment_addr)
        .deposit(deposit("dep-2"))
        .await
        .expect("deposit despite the lost answer")
        .into_inner();
    assert_eq!(payment_faults.injected(), injected + 1);
    let again = wallets(&certs, payment_addr)
        .deposit(deposit("dep-2"))
        .await
        .expect("retried deposit")
        .into_inner();
    assert_eq!(again.name, first.name);
    assert_eq!(balance(&wallets(&certs, payment_addr), user).await, 20_000);

    // Placement refused by the store: retryable, and no stock moved.
    order_faults.fail_writes(refusing("order#"));
    let refused = orders(&certs, order_addr)
        .create_order(as_user(order_of("A", 2, "o-1"), user))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    order_faults.clear();
    let product =
        CatalogServiceClient::new(certs.channel(workloads::GATEWAY, workloads::ORDER, order_addr))
            .get_product(GetProductRequest {
                name: "products/A".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        product.stock, 10_000,
        "no stock reserved by a failed placement"
    );
    assert_eq!(balance(&wallets(&certs, payment_addr), user).await, 20_000);

    // The charge lands but its answer is lost: charged once, the order confirmed.
    payment_faults.fail_writes(WriteFault {
        touching: "wallet#".into(),
        skip: 0,
        times: 1,
        after_commit: true,
    });
    let placed = place(&orders(&certs, order_addr), user, order_of("A", 2, "o-2")).await;
    let first = settled(&orders(&certs, order_addr), user, &placed.name).await;
    assert_eq!(first.state, OrderState::Confirmed as i32, "{first:?}");

    // The charge lands but confirming the order cannot be written: the call fails
    // retryably, the order waits, and once the store is back the re-driver confirms it
    // without charging again.
    order_faults.fail_writes(WriteFault {
        touching: "order#".into(),
        skip: 1,
        times: usize::MAX,
        after_commit: false,
    });
    let failed = orders(&certs, order_addr)
        .create_order(as_user(order_of("A", 1, "o-3"), user))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    order_faults.clear();
    let placed = place(&orders(&certs, order_addr), user, order_of("A", 1, "o-3")).await;
    let second = settled(&orders(&certs, order_addr), user, &placed.name).await;
    assert_eq!(second.state, OrderState::Confirmed as i32, "{second:?}");
    assert_books_balance(
        &wallets(&certs, payment_addr),
        user,
        20_000,
        &[first, second],
    )
    .await;

    order.stop().await;
    payment.stop().await;
    audit.stop().await;
}
