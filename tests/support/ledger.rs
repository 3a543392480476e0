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

pub async fn all_transactions(
    wallets: &PaymentServiceClient<MeshChannel>,
    user: &str,
) -> Vec<Transaction> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = wallets
            .clone()
            .list_transactions(as_user(
                ListTransactionsRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
                user,
            ))
            .await
            .expect("list transactions")
            .into_inner();
        out.extend(page.transactions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub async fn balance(wallets: &PaymentServiceClient<MeshChannel>, user: &str) -> i64 {
    wallets
        .clone()
        .get_wallet(as_user(GetWalletRequest::default(), user))
        .await
        .expect("wallet")
        .into_inner()
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
