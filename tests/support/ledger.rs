//! The money checks every scenario with payments ends with: nothing charged twice, every
//! ledger transaction balances, and each wallet equals deposits − charges + refunds.

use std::collections::HashMap;

use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::order::{GetOrderRequest, Order, OrderState};
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::payment::{
    GetWalletRequest, ListTransactionsRequest, Transaction, TransactionKind,
};
use ordermesh_platform::client::MeshChannel;

use crate::mesh::as_user;

/// A read by the checker itself, tried again (up to 5 s) when the connection under it broke:
/// replicas were killed and restarted during the scenario, and a connection the checker's
/// channel held to one of them can fail once before the channel moves on. Answers from a
/// service are never retried.
async fn read<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    use std::error::Error as _;
    let mut last = None;
    for _ in 0..50 {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable || s.source().is_some() => {
                last = Some(s);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
    panic!("{what}: {last:?}")
}

pub async fn all_transactions(
    wallets: &PaymentServiceClient<MeshChannel>,
    user: &str,
) -> Vec<Transaction> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = read("list transactions", || {
            let mut client = wallets.clone();
            let request = as_user(
                ListTransactionsRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
                user,
            );
            async move { client.list_transactions(request).await }
        })
        .await;
        out.extend(page.transactions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub async fn balance(wallets: &PaymentServiceClient<MeshChannel>, user: &str) -> i64 {
    read("wallet", || {
        let mut client = wallets.clone();
        let request = as_user(GetWalletRequest::default(), user);
        async move { client.get_wallet(request).await }
    })
    .await
    .balances
    .iter()
    .find(|b| b.currency == "EUR")
    .map_or(0, |b| b.amount_minor)
}

/// Checks one user's books against the orders they placed (in their final state).
pub async fn assert_books_balance(
    wallets: &PaymentServiceClient<MeshChannel>,
    user: &str,
    deposits: i64,
    placed: &[Order],
) {
    let txs = all_transactions(wallets, user).await;
    let mut charged: HashMap<&str, usize> = HashMap::new();
    let mut charges = 0;
    let mut refunds = 0;
    for t in &txs {
        let amount = t.amount.as_ref().map_or(0, |m| m.amount_minor);
        if t.kind == TransactionKind::Charge as i32 {
            *charged.entry(t.order.as_str()).or_default() += 1;
            charges += amount.abs();
        } else if t.kind == TransactionKind::Refund as i32 {
            refunds += amount.abs();
        }
        let postings: i64 = t
            .postings
            .iter()
            .map(|p| p.amount.as_ref().map_or(0, |m| m.amount_minor))
            .sum();
        assert_eq!(postings, 0, "transaction {} does not balance", t.name);
    }
    assert!(
        charged.values().all(|n| *n == 1),
        "an order was charged twice: {charged:?}"
    );
    let paid: Vec<&Order> = placed.iter().filter(|o| !o.payment.is_empty()).collect();
    assert_eq!(
        charged.len(),
        paid.len(),
        "exactly the orders that were paid for were charged"
    );
    let paid_total: i64 = paid
        .iter()
        .map(|o| o.total.as_ref().map_or(0, |m| m.amount_minor))
        .sum();
    assert_eq!(charges, paid_total);
    assert_eq!(
        balance(wallets, user).await,
        deposits - charges + refunds,
        "wallet = deposits − charges + refunds"
    );
}

/// The order once its payment is settled (no longer PENDING_PAYMENT), waiting up to 60 s; a
/// read that fails meanwhile (a replica restarting) is tried again.
pub async fn settled(orders: &OrderServiceClient<MeshChannel>, user: &str, name: &str) -> Order {
    for _ in 0..600 {
        if let Ok(o) = orders
            .clone()
            .get_order(as_user(GetOrderRequest { name: name.into() }, user))
            .await
        {
            let o = o.into_inner();
            if o.state != OrderState::PendingPayment as i32 {
                return o;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name} still PENDING_PAYMENT after 60 s");
}
