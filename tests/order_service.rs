//! order-service end to end over mTLS with payment and audit running: the saga's outcomes,
//! recovery after payment was down, racing transitions, and what one user cannot see of another.

use std::net::SocketAddr;
use std::time::Duration;

use ordermesh::roles::{Role, Upstreams};
use ordermesh_contracts::order::catalog_service_client::CatalogServiceClient;
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::order::{
    CancelOrderRequest, CreateOrderRequest, CreateProductRequest, DeliverOrderRequest,
    GetOrderRequest, GetProductRequest, ListOrdersRequest, Order, OrderItem, OrderState, Product,
    ShipOrderRequest,
};
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::payment::{
    DepositRequest, GetWalletRequest, ListTransactionsRequest, TransactionKind,
};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::money::money;
use ordermesh_platform::status;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::mesh::{RunningService, TestCerts, as_user, no_upstreams, with_roles};
use tempfile::TempDir;
use tonic::Code;

struct Mesh {
    certs: TestCerts,
    audit: RunningService,
    payment: Option<RunningService>,
    order: RunningService,
    payment_addr: SocketAddr,
    dirs: Vec<TempDir>,
}

impl Mesh {
    async fn start() -> Self {
        let certs = TestCerts::new();
        let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
        let up = |payment: SocketAddr| Upstreams {
            audit: format!("https://{}", audit.grpc_addr),
            payment: format!("https://{payment}"),
            ..no_upstreams()
        };
        let payment =
            RunningService::start_with(Role::Payment, &certs, dirs[1].path(), any, up(any)).await;
        let payment_addr = payment.grpc_addr;
        let order =
            RunningService::start_with(Role::Order, &certs, dirs[2].path(), any, up(payment_addr))
                .await;
        Self {
            certs,
            audit,
            payment: Some(payment),
            order,
            payment_addr,
            dirs,
        }
    }

    async fn stop_payment(&mut self) {
        if let Some(p) = self.payment.take() {
            p.stop().await;
        }
    }

    async fn start_payment(&mut self) {
        let upstreams = Upstreams {
            audit: format!("https://{}", self.audit.grpc_addr),
            ..no_upstreams()
        };
        let store = StoreConfig::Embedded {
            data_dir: self.dirs[1].path().to_path_buf(),
        };
        self.payment = Some(
            RunningService::start_on(
                Role::Payment,
                &self.certs,
                store,
                self.payment_addr,
                upstreams,
            )
            .await,
        );
    }

    fn orders(&self) -> OrderServiceClient<MeshChannel> {
        OrderServiceClient::new(self.certs.channel(
            workloads::GATEWAY,
            workloads::ORDER,
            self.order.grpc_addr,
        ))
    }
    fn catalog(&self) -> CatalogServiceClient<MeshChannel> {
        CatalogServiceClient::new(self.certs.channel(
            workloads::GATEWAY,
            workloads::ORDER,
            self.order.grpc_addr,
        ))
    }
    fn wallets(&self) -> PaymentServiceClient<MeshChannel> {
        PaymentServiceClient::new(self.certs.channel(
            workloads::GATEWAY,
            workloads::PAYMENT,
            self.payment_addr,
        ))
    }

    async fn stop(self) {
        self.order.stop().await;
        if let Some(p) = self.payment {
            p.stop().await;
        }
        self.audit.stop().await;
    }
}

fn as_admin<T>(msg: T) -> tonic::Request<T> {
    with_roles(msg, "admin-1", &["user", "admin"])
}

async fn product(mesh: &Mesh, sku: &str, price: i64, stock: i64) {
    mesh.catalog()
        .create_product(as_admin(CreateProductRequest {
            product: Some(Product {
                sku: sku.into(),
                display_name: format!("{sku} thing"),
                unit_price: Some(money("EUR", price)),
                stock,
                ..Default::default()
            }),
        }))
        .await
        .expect("create product");
}

async fn stock(mesh: &Mesh, sku: &str) -> i64 {
    mesh.catalog()
        .get_product(GetProductRequest {
            name: format!("products/{sku}"),
        })
        .await
        .unwrap()
        .into_inner()
        .stock
}

async fn deposit(mesh: &Mesh, user: &str, amount: i64) {
    mesh.wallets()
        .deposit(as_user(
            DepositRequest {
                amount: Some(money("EUR", amount)),
                idempotency_key: format!("dep-{user}-{amount}"),
            },
            user,
        ))
        .await
        .expect("deposit");
}

async fn balance(mesh: &Mesh, user: &str) -> i64 {
    let w = mesh
        .wallets()
        .get_wallet(as_user(GetWalletRequest::default(), user))
        .await
        .unwrap()
        .into_inner();
    w.balances
        .iter()
        .find(|b| b.currency == "EUR")
        .map_or(0, |b| b.amount_minor)
}

async fn charges(mesh: &Mesh, user: &str) -> usize {
    let page = mesh
        .wallets()
        .list_transactions(as_user(
            ListTransactionsRequest {
                page_size: 100,
                ..Default::default()
            },
            user,
        ))
        .await
        .unwrap()
        .into_inner();
    page.transactions
        .iter()
        .filter(|t| t.kind == TransactionKind::Charge as i32)
        .count()
}

fn create(items: &[(&str, i64)], key: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        items: items
            .iter()
            .map(|(sku, q)| OrderItem {
                sku: sku.to_string(),
                quantity: *q,
                unit_price: Some(money("EUR", 1)),
            })
            .collect(),
        currency: "EUR".into(),
        idempotency_key: key.into(),
    }
}

fn state(o: &Order) -> OrderState {
    OrderState::try_from(o.state).unwrap()
}

async fn get(mesh: &Mesh, user: &str, name: &str) -> Order {
    mesh.orders()
        .get_order(as_user(GetOrderRequest { name: name.into() }, user))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_and_decline() {
    let mesh = Mesh::start().await;
    product(&mesh, "MUG", 1250, 10).await;
    product(&mesh, "TEE", 2400, 5).await;
    deposit(&mesh, "alice", 10_000).await;

    let order = mesh
        .orders()
        .create_order(as_user(create(&[("MUG", 2), ("TEE", 1)], "k1"), "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&order), OrderState::Confirmed);
    assert_eq!(
        order.total.as_ref().unwrap().amount_minor,
        2 * 1250 + 2400,
        "priced from the catalog, not the client"
    );
    assert!(order.payment.starts_with("payments/"));
    assert_eq!(
        (stock(&mesh, "MUG").await, stock(&mesh, "TEE").await),
        (8, 4)
    );
    assert_eq!(balance(&mesh, "alice").await, 10_000 - 4900);

    let again = mesh
        .orders()
        .create_order(as_user(create(&[("MUG", 2), ("TEE", 1)], "k1"), "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.name, order.name,
        "the same key returns the same order"
    );
    assert_eq!(charges(&mesh, "alice").await, 1);

    // Bob has no money: declined, cancelled, stock back.
    let declined = mesh
        .orders()
        .create_order(as_user(create(&[("TEE", 2)], "b1"), "bob"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&declined), OrderState::Cancelled);
    assert!(
        declined.cancel_reason.contains("declined"),
        "{}",
        declined.cancel_reason
    );
    assert_eq!(stock(&mesh, "TEE").await, 4);

    let out = mesh
        .orders()
        .create_order(as_user(create(&[("TEE", 50)], "k2"), "alice"))
        .await
        .unwrap_err();
    assert_eq!(
        (out.code(), status::details(&out).reason.as_deref()),
        (Code::FailedPrecondition, Some("OUT_OF_STOCK"))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_down_then_back_finishes_with_exactly_one_charge() {
    let mut mesh = Mesh::start().await;
    product(&mesh, "BOOK", 3900, 3).await;
    deposit(&mesh, "carol", 5_000).await;
    mesh.stop_payment().await;

    let order = mesh
        .orders()
        .create_order(as_user(create(&[("BOOK", 1)], "c1"), "carol"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(&order),
        OrderState::PendingPayment,
        "outcome unknown: not cancelled, not confirmed"
    );
    assert_eq!(stock(&mesh, "BOOK").await, 2, "stock stays reserved");

    mesh.start_payment().await;
    let mut now = order.clone();
    for _ in 0..100 {
        now = get(&mesh, "carol", &order.name).await;
        if state(&now) != OrderState::PendingPayment {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state(&now),
        OrderState::Confirmed,
        "the re-driver finished it"
    );
    assert_eq!(charges(&mesh, "carol").await, 1);
    assert_eq!(balance(&mesh, "carol").await, 5_000 - 3900);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_ship_has_exactly_one_winner() {
    let mesh = Mesh::start().await;
    product(&mesh, "STICKER", 300, 100).await;
    deposit(&mesh, "dan", 100_000).await;
    let mut cancelled = 0;
    for i in 0..6 {
        let order = mesh
            .orders()
            .create_order(as_user(create(&[("STICKER", 2)], &format!("r{i}")), "dan"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&order), OrderState::Confirmed);
        let (mut a, mut b) = (mesh.orders(), mesh.orders());
        let (n1, n2) = (order.name.clone(), order.name.clone());
        let cancel = tokio::spawn(async move {
            a.cancel_order(as_user(
                CancelOrderRequest {
                    name: n1,
                    reason: String::new(),
                },
                "dan",
            ))
            .await
        });
        let ship =
            tokio::spawn(
                async move { b.ship_order(as_admin(ShipOrderRequest { name: n2 })).await },
            );
        let (c, s) = (cancel.await.unwrap(), ship.await.unwrap());
        assert!(
            c.is_ok() != s.is_ok(),
            "exactly one transition wins: cancel {c:?} ship {s:?}"
        );
        let loser = c.as_ref().err().or(s.as_ref().err()).unwrap();
        assert_eq!(loser.code(), Code::FailedPrecondition);
        let last = get(&mesh, "dan", &order.name).await;
        if c.is_ok() {
            cancelled += 1;
            assert_eq!(state(&last), OrderState::Cancelled);
            assert!(loser.message().contains("CANCELLED"), "{}", loser.message());
        } else {
            assert_eq!(state(&last), OrderState::Shipped);
            assert!(loser.message().contains("SHIPPED"), "{}", loser.message());
        }
    }
    // Every cancelled order was refunded and its stock returned.
    let shipped = 6 - cancelled;
    assert_eq!(balance(&mesh, "dan").await, 100_000 - shipped * 600);
    assert_eq!(stock(&mesh, "STICKER").await, 100 - shipped * 2);
    mesh.stop().await;
}

/// Shoppers racing for one product (and, three at a time, for one wallet) all get their
/// orders: lost races are retried inside the service, not handed to the client as ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_product_confirms_every_order() {
    const SHOPPERS: usize = 8;
    const EACH: usize = 4;
    let mesh = Mesh::start().await;
    product(&mesh, "HOT", 100, 1_000).await;
    for s in 0..SHOPPERS {
        deposit(&mesh, &format!("shopper-{s}"), 10_000).await;
    }
    let mut burst = tokio::task::JoinSet::new();
    for s in 0..SHOPPERS {
        for n in 0..EACH {
            let mut orders = mesh.orders();
            burst.spawn(async move {
                let user = format!("shopper-{s}");
                orders
                    .create_order(as_user(create(&[("HOT", 1)], &format!("burst-{n}")), &user))
                    .await
            });
        }
    }
    let mut confirmed = 0;
    while let Some(placed) = burst.join_next().await {
        let order = placed.unwrap().expect("no placement fails").into_inner();
        assert_eq!(state(&order), OrderState::Confirmed, "{order:?}");
        confirmed += 1;
    }
    assert_eq!(confirmed, SHOPPERS * EACH);
    assert_eq!(stock(&mesh, "HOT").await, 1_000 - (SHOPPERS * EACH) as i64);
    for s in 0..SHOPPERS {
        let user = format!("shopper-{s}");
        assert_eq!(balance(&mesh, &user).await, 10_000 - 100 * EACH as i64);
        assert_eq!(charges(&mesh, &user).await, EACH);
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_see_or_touch_anothers_orders() {
    let mesh = Mesh::start().await;
    product(&mesh, "MUG", 1250, 10).await;
    deposit(&mesh, "erin", 10_000).await;
    let order = mesh
        .orders()
        .create_order(as_user(create(&[("MUG", 1)], "e1"), "erin"))
        .await
        .unwrap()
        .into_inner();

    let read = mesh
        .orders()
        .get_order(as_user(
            GetOrderRequest {
                name: order.name.clone(),
            },
            "mallory",
        ))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound);
    let missing = mesh
        .orders()
        .get_order(as_user(
            GetOrderRequest {
                name: "orders/does-not-exist".into(),
            },
            "mallory",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        missing.message(),
        read.message(),
        "indistinguishable from a missing order"
    );
    let cancel = mesh
        .orders()
        .cancel_order(as_user(
            CancelOrderRequest {
                name: order.name.clone(),
                reason: String::new(),
            },
            "mallory",
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    let theirs = mesh
        .orders()
        .list_orders(as_user(
            ListOrdersRequest {
                user_id: "erin".into(),
                ..Default::default()
            },
            "mallory",
        ))
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::PermissionDenied);
    let mine = mesh
        .orders()
        .list_orders(as_user(ListOrdersRequest::default(), "mallory"))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.orders.is_empty());
    let admin = mesh
        .orders()
        .get_order(as_admin(GetOrderRequest {
            name: order.name.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(admin.into_inner().user_id, "erin");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_newest_first_illegal_transitions_and_bad_input() {
    let mesh = Mesh::start().await;
    product(&mesh, "MUG", 100, 100).await;
    deposit(&mesh, "fay", 10_000).await;
    let mut names = Vec::new();
    for i in 0..5 {
        let o = mesh
            .orders()
            .create_order(as_user(create(&[("MUG", 1)], &format!("f{i}")), "fay"))
            .await
            .unwrap()
            .into_inner();
        names.push(o.name);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = mesh
            .orders()
            .list_orders(as_user(
                ListOrdersRequest {
                    page_size: 2,
                    page_token: token,
                    user_id: String::new(),
                },
                "fay",
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.orders.into_iter().map(|o| o.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    names.reverse();
    assert_eq!(listed, names, "newest first, every order once");

    let deliver = mesh
        .orders()
        .deliver_order(as_admin(DeliverOrderRequest {
            name: names[0].clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(deliver.code(), Code::FailedPrecondition);
    assert!(
        deliver.message().contains("CONFIRMED"),
        "names the current state: {}",
        deliver.message()
    );
    let ship_as_user = mesh
        .orders()
        .ship_order(as_user(
            ShipOrderRequest {
                name: names[0].clone(),
            },
            "fay",
        ))
        .await
        .unwrap_err();
    assert_eq!(ship_as_user.code(), Code::PermissionDenied);
    mesh.orders()
        .ship_order(as_admin(ShipOrderRequest {
            name: names[0].clone(),
        }))
        .await
        .unwrap();
    let delivered = mesh
        .orders()
        .deliver_order(as_admin(DeliverOrderRequest {
            name: names[0].clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&delivered), OrderState::Delivered);
    let late = mesh
        .orders()
        .cancel_order(as_user(
            CancelOrderRequest {
                name: names[0].clone(),
                reason: String::new(),
            },
            "fay",
        ))
        .await
        .unwrap_err();
    assert!(late.message().contains("DELIVERED"), "{}", late.message());

    let order_of = |first_quantity: i64, third_sku: &str, key: &str| CreateOrderRequest {
        items: vec![
            OrderItem {
                sku: "MUG".into(),
                quantity: first_quantity,
                unit_price: None,
            },
            OrderItem {
                sku: "MUG".into(),
                quantity: 1,
                unit_price: None,
            },
            OrderItem {
                sku: third_sku.into(),
                quantity: 1,
                unit_price: None,
            },
        ],
        currency: "XXX".into(),
        idempotency_key: key.into(),
    };
    let violated = |s: &tonic::Status| -> Vec<String> {
        assert_eq!(s.code(), Code::InvalidArgument);
        status::details(s)
            .violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    };
    // The constraints the contract declares answer first, all of them at once...
    let bad = mesh
        .orders()
        .create_order(as_user(order_of(0, "bad sku!", ""), "fay"))
        .await
        .unwrap_err();
    assert_eq!(
        violated(&bad),
        ["items[0].quantity", "items[2].sku", "idempotency_key"]
    );
    // ...then the handler's own: a SKU listed twice, a currency not supported.
    let bad = mesh
        .orders()
        .create_order(as_user(order_of(1, "CUP", "k-1"), "fay"))
        .await
        .unwrap_err();
    assert_eq!(violated(&bad), ["items[1].sku", "currency"]);
    let unknown = mesh
        .orders()
        .create_order(as_user(create(&[("NOPE", 1)], "u1"), "fay"))
        .await
        .unwrap_err();
    assert_eq!(
        status::details(&unknown).violations[0].field,
        "items[0].sku"
    );
    mesh.stop().await;
}
