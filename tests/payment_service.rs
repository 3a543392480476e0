//! payment-service end to end over mTLS: deposits, charges, refunds, declines and idempotency,
//! and a concurrency proof that runs on both storage backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ordermesh::roles::Role;
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::payment::{
    ChargeRequest, DepositRequest, GetWalletRequest, ListTransactionsRequest, Payment,
    PaymentState, RefundRequest, Transaction, TransactionKind,
};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::money::money;
use ordermesh_platform::status;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::mesh::{RunningService, TestCerts, as_user, audit_only};
use tokio::sync::Mutex;
use tonic::Code;

struct Mesh {
    certs: TestCerts,
    audit: RunningService,
    payment: RunningService,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Mesh {
    async fn start(store: Option<StoreConfig>) -> Self {
        let certs = TestCerts::new();
        let (a, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let audit = RunningService::start(Role::Audit, &certs, a.path()).await;
        let store = store.unwrap_or(StoreConfig::Embedded {
            data_dir: p.path().to_path_buf(),
        });
        let payment = RunningService::start_on(
            Role::Payment,
            &certs,
            store,
            "127.0.0.1:0".parse().unwrap(),
            audit_only(audit.grpc_addr),
        )
        .await;
        Self {
            certs,
            audit,
            payment,
            _dirs: (a, p),
        }
    }
    fn client(&self, workload: &str) -> PaymentServiceClient<MeshChannel> {
        PaymentServiceClient::new(self.certs.channel(
            workload,
            workloads::PAYMENT,
            self.payment.grpc_addr,
        ))
    }
    async fn stop(self) {
        self.payment.stop().await;
        self.audit.stop().await;
    }
}

fn deposit(amount: i64, key: &str) -> DepositRequest {
    DepositRequest {
        amount: Some(money("EUR", amount)),
        idempotency_key: key.into(),
    }
}

fn charge(user: &str, order: &str, amount: i64, key: &str) -> ChargeRequest {
    ChargeRequest {
        user_id: user.into(),
        order: format!("orders/{order}"),
        amount: Some(money("EUR", amount)),
        idempotency_key: key.into(),
    }
}

fn refund(payment: &str, amount: Option<i64>, key: &str) -> RefundRequest {
    RefundRequest {
        payment: payment.into(),
        amount: amount.map(|a| money("EUR", a)),
        idempotency_key: key.into(),
    }
}

async fn balance(client: &mut PaymentServiceClient<MeshChannel>, user: &str) -> i64 {
    let wallet = client
        .get_wallet(as_user(GetWalletRequest::default(), user))
        .await
        .unwrap()
        .into_inner();
    wallet
        .balances
        .iter()
        .find(|b| b.currency == "EUR")
        .map_or(0, |b| b.amount_minor)
}

async fn all_transactions(
    client: &mut PaymentServiceClient<MeshChannel>,
    user: &str,
) -> Vec<Transaction> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_transactions(as_user(
                ListTransactionsRequest {
                    page_size: 37,
                    page_token: token,
                    currency: String::new(),
                },
                user,
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.transactions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    status::details(status).reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_charges_refunds_and_declines() {
    let mesh = Mesh::start(None).await;
    let mut gw = mesh.client(workloads::GATEWAY);
    let mut order = mesh.client(workloads::ORDER);

    let t = gw
        .deposit(as_user(deposit(5000, "d1"), "u1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.balance_after.unwrap().amount_minor, 5000);
    let again = gw
        .deposit(as_user(deposit(5000, "d1"), "u1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.name, t.name,
        "a retried deposit returns the first result"
    );
    assert_eq!(balance(&mut gw, "u1").await, 5000);
    let reused = gw
        .deposit(as_user(deposit(7000, "d1"), "u1"))
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), reason(&reused).as_deref()),
        (Code::FailedPrecondition, Some("IDEMPOTENCY_KEY_REUSED"))
    );

    let p = order
        .charge(charge("u1", "o1", 1250, "o1-charge"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state, PaymentState::Captured as i32);
    let p2 = order
        .charge(charge("u1", "o1", 1250, "o1-charge"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.name, p.name);
    assert_eq!(balance(&mut gw, "u1").await, 3750, "charged once");

    let declined = order
        .charge(charge("u1", "o2", 10_000, "o2-charge"))
        .await
        .unwrap_err();
    assert_eq!(
        (declined.code(), reason(&declined).as_deref()),
        (Code::FailedPrecondition, Some("INSUFFICIENT_FUNDS"))
    );
    assert_eq!(balance(&mut gw, "u1").await, 3750);

    let part = order
        .refund(refund(&p.name, Some(250), "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(part.state, PaymentState::PartiallyRefunded as i32);
    let too_much = order
        .refund(refund(&p.name, Some(5000), "r2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&too_much).as_deref(), Some("REFUND_EXCEEDS_CHARGE"));
    let rest = order
        .refund(refund(&p.name, None, "r3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.state, PaymentState::Refunded as i32);
    assert_eq!(rest.refunded.unwrap().amount_minor, 1250);
    let rest_again = order
        .refund(refund(&p.name, None, "r3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest_again.refunded.unwrap().amount_minor,
        1250,
        "retrying 'refund the rest' returns the first result"
    );
    assert_eq!(balance(&mut gw, "u1").await, 5000);

    // Only order-service charges; users see only their own wallet.
    let denied = gw.charge(charge("u1", "o3", 1, "x")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let other = gw
        .get_wallet(as_user(
            GetWalletRequest {
                user_id: "u1".into(),
            },
            "u2",
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);

    for (bad, field) in [
        (deposit(0, "k"), "amount.amount_minor"),
        (deposit(-5, "k"), "amount.amount_minor"),
        (
            DepositRequest {
                amount: Some(money("XBT", 5)),
                idempotency_key: "k".into(),
            },
            "amount.currency",
        ),
        (deposit(5, ""), "idempotency_key"),
    ] {
        let err = gw.deposit(as_user(bad, "u1")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(status::details(&err).violations[0].field, field);
    }

    let txns = all_transactions(&mut gw, "u1").await;
    let kinds: Vec<_> = txns
        .iter()
        .map(|t| TransactionKind::try_from(t.kind).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            TransactionKind::Refund,
            TransactionKind::Refund,
            TransactionKind::Charge,
            TransactionKind::Deposit
        ],
        "newest first"
    );
    mesh.stop().await;
}

/// Many movements on one wallet at once, some retried with the same key.
async fn concurrency_proof(store: Option<StoreConfig>) {
    let mesh = Arc::new(Mesh::start(store).await);
    let user = "wallet-owner";
    let mut gw = mesh.client(workloads::GATEWAY);
    gw.deposit(as_user(deposit(20_000, "seed"), user))
        .await
        .unwrap();

    // Watches the balance the whole time: it must never be seen below zero.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (mesh, stop) = (mesh.clone(), stop.clone());
        tokio::spawn(async move {
            let mut gw = mesh.client(workloads::GATEWAY);
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let b = balance(&mut gw, user).await;
                assert!(b >= 0, "negative balance observed: {b}");
                seen += 1;
            }
            seen
        })
    };

    // key -> the signed wallet delta it was accepted with
    let accepted: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let charges: Arc<Mutex<Vec<Payment>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (mesh, accepted, charges) = (mesh.clone(), accepted.clone(), charges.clone());
            tokio::spawn(async move {
                let order = mesh.client(workloads::ORDER);
                let gw = mesh.client(workloads::GATEWAY);
                for i in 0..15u32 {
                    // Every fourth operation repeats an earlier key of this worker.
                    let n = if i % 4 == 3 { i - 2 } else { i };
                    let key = format!("w{w}-op{n}");
                    let amount = 300 + i64::from((w * 97 + n * 131) % 900);
                    let outcome = match n % 3 {
                        0 | 1 => {
                            let r = retry_aborted(|| {
                                let mut order = order.clone();
                                let req = charge(user, &format!("w{w}o{n}"), amount, &key);
                                async move { order.charge(req).await }
                            })
                            .await;
                            r.map(|p| {
                                let delta = -p.amount.as_ref().unwrap().amount_minor;
                                (p, delta)
                            })
                            .map(|(p, d)| (Some(p), d))
                        }
                        _ => retry_aborted(|| {
                            let mut gw = gw.clone();
                            let req = as_user(deposit(amount / 2, &key), user);
                            async move { gw.deposit(req).await }
                        })
                        .await
                        .map(|t| (None, t.amount.unwrap().amount_minor)),
                    };
                    match outcome {
                        Ok((payment, delta)) => {
                            let mut acc = accepted.lock().await;
                            if let Some(prev) = acc.insert(key.clone(), delta) {
                                assert_eq!(
                                    prev, delta,
                                    "a retried key returned a different result"
                                );
                            } else if let Some(p) = payment {
                                charges.lock().await.push(p);
                            }
                        }
                        Err(s) => {
                            assert_eq!(reason(&s).as_deref(), Some("INSUFFICIENT_FUNDS"), "{s:?}")
                        }
                    }
                    // Now and then refund part of some earlier charge (maybe more than is left).
                    if i % 5 == 4 {
                        let target = charges
                            .lock()
                            .await
                            .get((w as usize + i as usize) % 3)
                            .cloned();
                        if let Some(p) = target {
                            let key = format!("w{w}-refund{i}");
                            let r = retry_aborted(|| {
                                let mut order = order.clone();
                                let req = refund(&p.name, Some(200), &key);
                                async move { order.refund(req).await }
                            })
                            .await;
                            match r {
                                Ok(_) => {
                                    accepted.lock().await.insert(key, 200);
                                }
                                Err(s) => assert_eq!(
                                    reason(&s).as_deref(),
                                    Some("REFUND_EXCEEDS_CHARGE"),
                                    "{s:?}"
                                ),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let polls = watcher.await.unwrap();
    assert!(polls > 0);

    let accepted = accepted.lock().await.clone();
    let expected: i64 = 20_000 + accepted.values().sum::<i64>();
    let final_balance = balance(&mut gw, user).await;
    assert_eq!(
        final_balance, expected,
        "balance = deposits - charges + refunds"
    );

    let txns = all_transactions(&mut gw, user).await;
    assert_eq!(
        txns.len(),
        accepted.len() + 1,
        "one transaction per accepted key: no key moved money twice"
    );
    let mut ledger_sum = 0;
    let mut wallet_sum = 0;
    for t in &txns {
        assert!(t.balance_after.as_ref().unwrap().amount_minor >= 0);
        for p in &t.postings {
            let a = p.amount.as_ref().unwrap().amount_minor;
            ledger_sum += a;
            if p.account.starts_with("wallets/") {
                wallet_sum += a;
            }
        }
    }
    assert_eq!(ledger_sum, 0, "the ledger sums to zero");
    assert_eq!(
        wallet_sum, final_balance,
        "the wallet's postings add up to its balance"
    );
    let mesh = Arc::into_inner(mesh).expect("all tasks done");
    mesh.stop().await;
}

/// Retries ABORTED (lost races), as a client with retries would.
async fn retry_aborted<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..20 {
        match call().await {
            Err(s) if s.code() == Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
    call().await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_movements_keep_every_invariant_embedded() {
    concurrency_proof(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_movements_keep_every_invariant_dynamodb() {
    let config = ordermesh_tests::stores::dynamo_config();
    config.create_tables().await.unwrap();
    concurrency_proof(Some(config)).await;
}
