//! Wallets in payment-service's table. Layout:
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `wallet#<user>` | `bal#<currency>` | the balance (versioned) |
//! | `wallet#<user>` | `txn#<uuid v7>` | a ledger transaction, newest last; indexed by house account |
//! | `move#<movement id>` | `move` | the first result of an idempotency key |
//! | `payment#<id>` | `payment` | a charge and how much of it was refunded (versioned) |
//!
//! A movement is one atomic batch: its marker (must not exist), the balance (must still be at
//! the version read, and never goes below zero), the transaction, the payment change and the
//! audit event. A retry of the same key finds the marker and gets the first result back; a
//! lost race re-reads and tries again.

use std::sync::Arc;

use ordermesh_contracts::audit::AuditEvent;
use ordermesh_contracts::payment::{Payment, PaymentState, Transaction, TransactionKind};
use ordermesh_platform::money::money;
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::store::{
    Attempts, Condition, Cursor, KeyLocks, KeyRange, NewItem, Query, StoreError, Table, Write,
};
use prost::Message;

use crate::ledger;

const MAX_ATTEMPTS: u32 = 16;

#[derive(Clone, PartialEq, Message)]
pub struct Balance {
    #[prost(string, tag = "1")]
    pub currency: String,
    #[prost(int64, tag = "2")]
    pub amount_minor: i64,
    #[prost(message, optional, tag = "3")]
    pub update_time: Option<prost_types::Timestamp>,
}

/// What an idempotency key produced the first time.
#[derive(Clone, PartialEq, Message)]
pub struct MovementRecord {
    #[prost(string, tag = "1")]
    pub fingerprint: String,
    #[prost(message, optional, tag = "2")]
    pub transaction: Option<Transaction>,
    #[prost(message, optional, tag = "3")]
    pub payment: Option<Payment>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("insufficient funds: the balance is {balance} {currency}, {needed} is needed")]
    InsufficientFunds {
        balance: i64,
        needed: i64,
        currency: String,
    },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("refund exceeds what is left of the charge ({refundable} {currency} refundable)")]
    RefundExceeds { refundable: i64, currency: String },
    #[error("refund currency {got} differs from the charge's {want}")]
    CurrencyMismatch { got: String, want: String },
    #[error("the wallet is busy; retry")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored payment data is unreadable: {0}")]
    Corrupt(String),
}

impl From<WalletError> for tonic::Status {
    fn from(e: WalletError) -> Self {
        use ordermesh_platform::status::with_reason;
        use tonic::Code;
        match &e {
            WalletError::InsufficientFunds { .. } => with_reason(
                Code::FailedPrecondition,
                "INSUFFICIENT_FUNDS",
                e.to_string(),
            ),
            WalletError::KeyReused => with_reason(
                Code::FailedPrecondition,
                "IDEMPOTENCY_KEY_REUSED",
                e.to_string(),
            ),
            WalletError::PaymentNotFound => tonic::Status::not_found(e.to_string()),
            WalletError::RefundExceeds { .. } => with_reason(
                Code::FailedPrecondition,
                "REFUND_EXCEEDS_CHARGE",
                e.to_string(),
            ),
            WalletError::CurrencyMismatch { .. } => {
                with_reason(Code::FailedPrecondition, "CURRENCY_MISMATCH", e.to_string())
            }
            WalletError::Contended => tonic::Status::aborted(e.to_string()),
            WalletError::Store(_) => match e {
                WalletError::Store(s) => s.into(),
                _ => tonic::Status::internal("storage error"),
            },
            WalletError::Corrupt(detail) => {
                tracing::error!(%detail, "corrupt payment data");
                tonic::Status::data_loss("stored payment data is unreadable")
            }
        }
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, WalletError> {
    M::decode(bytes).map_err(|e| WalletError::Corrupt(e.to_string()))
}

fn wallet_pk(user: &str) -> String {
    format!("wallet#{user}")
}

use ordermesh_platform::clock::timestamp as now;

/// One requested movement of money.
pub struct Movement {
    pub kind: TransactionKind,
    pub user_id: String,
    pub currency: String,
    /// Signed change of the wallet (negative for a charge).
    pub delta: i64,
    pub order: String,
    /// What the idempotency key is scoped to (the user, or the payment for refunds).
    pub scope: String,
    pub idempotency_key: String,
    pub fingerprint: String,
    /// For refunds: the payment refunded.
    pub refund_of: Option<String>,
}

#[derive(Clone)]
pub struct Wallets {
    table: Table,
    outbox: Outbox,
    /// Movements on one wallet take turns in this process instead of racing at the store.
    turns: Arc<KeyLocks>,
}

impl Wallets {
    pub fn new(table: Table, outbox: Outbox) -> Self {
        Self {
            table,
            outbox,
            turns: Arc::new(KeyLocks::default()),
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    async fn balance(&self, user: &str, currency: &str) -> Result<(i64, Condition), WalletError> {
        match self
            .table
            .get(&wallet_pk(user), &format!("bal#{currency}"))
            .await?
        {
            Some(item) => {
                let b: Balance = decode(&item.data)?;
                Ok((b.amount_minor, Condition::Version(item.version)))
            }
            None => Ok((0, Condition::NotExists)),
        }
    }

    pub async fn payment(&self, id: &str) -> Result<Option<(Payment, u64)>, WalletError> {
        match self.table.get(&format!("payment#{id}"), "payment").await? {
            Some(item) => Ok(Some((decode(&item.data)?, item.version))),
            None => Ok(None),
        }
    }

    /// Applies `m` once; a repeat of the same key returns the first result.
    pub async fn apply(&self, m: Movement) -> Result<MovementRecord, WalletError> {
        let id = ledger::movement_id(m.kind, &m.scope, &m.idempotency_key);
        let marker_pk = format!("move#{id}");
        let mut attempts = Attempts::new(MAX_ATTEMPTS);
        while attempts.next().await {
            if let Some(item) = self.table.get(&marker_pk, "move").await? {
                let first: MovementRecord = decode(&item.data)?;
                return if first.fingerprint == m.fingerprint {
                    Ok(first)
                } else {
                    Err(WalletError::KeyReused)
                };
            }
            let _turn = self.turns.lock([m.user_id.as_str()]).await;
            let (balance, balance_condition) = self.balance(&m.user_id, &m.currency).await?;
            let after = balance + m.delta;
            if after < 0 {
                return Err(WalletError::InsufficientFunds {
                    balance,
                    needed: -m.delta,
                    currency: m.currency.clone(),
                });
            }
            let mut writes = Vec::with_capacity(6);
            let payment = match m.kind {
                TransactionKind::Charge => {
                    let p = Payment {
                        name: format!("payments/{id}"),
                        user_id: m.user_id.clone(),
                        order: m.order.clone(),
                        amount: Some(money(&m.currency, -m.delta)),
                        refunded: Some(money(&m.currency, 0)),
                        state: PaymentState::Captured as i32,
                        create_time: Some(now()),
                    };
                    writes.push(Write::put(
                        NewItem::new(format!("payment#{id}"), "payment", p.encode_to_vec()),
                        Condition::NotExists,
                    ));
                    Some(p)
                }
                TransactionKind::Refund => {
                    let pid = m.refund_of.as_deref().unwrap_or_default();
                    let (mut p, version) = self
                        .payment(pid)
                        .await?
                        .ok_or(WalletError::PaymentNotFound)?;
                    let charged = p.amount.as_ref().map_or(0, |a| a.amount_minor);
                    let refunded = p.refunded.as_ref().map_or(0, |a| a.amount_minor);
                    if m.delta <= 0 || refunded + m.delta > charged {
                        return Err(WalletError::RefundExceeds {
                            refundable: charged - refunded,
                            currency: m.currency.clone(),
                        });
                    }
                    let now_refunded = refunded + m.delta;
                    p.refunded = Some(money(&m.currency, now_refunded));
                    p.state = if now_refunded == charged {
                        PaymentState::Refunded
                    } else {
                        PaymentState::PartiallyRefunded
                    } as i32;
                    writes.push(Write::put(
                        NewItem::new(format!("payment#{pid}"), "payment", p.encode_to_vec()),
                        Condition::Version(version),
                    ));
                    Some(p)
                }
                _ => None,
            };
            let txn_sk = format!("txn#{}", uuid::Uuid::now_v7());
            let house = ledger::postings(m.kind, &m.user_id, &m.currency, m.delta)
                .get(1)
                .map(|p| p.account.clone())
                .unwrap_or_default();
            let transaction = Transaction {
                name: format!("transactions/{id}"),
                kind: m.kind as i32,
                amount: Some(money(&m.currency, m.delta)),
                balance_after: Some(money(&m.currency, after)),
                order: m.order.clone(),
                create_time: Some(now()),
                postings: ledger::postings(m.kind, &m.user_id, &m.currency, m.delta),
            };
            let record = MovementRecord {
                fingerprint: m.fingerprint.clone(),
                transaction: Some(transaction.clone()),
                payment: payment.clone(),
            };
            let balance_item = Balance {
                currency: m.currency.clone(),
                amount_minor: after,
                update_time: Some(now()),
            };
            writes.insert(
                0,
                Write::put(
                    NewItem::new(marker_pk.clone(), "move", record.encode_to_vec()),
                    Condition::NotExists,
                ),
            );
            writes.push(Write::put(
                NewItem::new(
                    wallet_pk(&m.user_id),
                    format!("bal#{}", m.currency),
                    balance_item.encode_to_vec(),
                ),
                balance_condition,
            ));
            writes.push(Write::put(
                NewItem::new(
                    wallet_pk(&m.user_id),
                    txn_sk.clone(),
                    transaction.encode_to_vec(),
                )
                .with_index(format!("acct#{house}"), txn_sk),
                Condition::NotExists,
            ));
            writes.extend(self.outbox.writes(self.event(&m, &id, &transaction)));
            match self.outbox.commit(self.table.write(writes)).await {
                Ok(_) => return Ok(record),
                // Lost a race (same key, or another movement on this wallet or payment): re-read.
                Err(e) => attempts.lost(e)?,
            }
        }
        Err(attempts.exhausted(WalletError::Contended))
    }

    fn event(&self, m: &Movement, id: &str, t: &Transaction) -> AuditEvent {
        let (action, resource) = match m.kind {
            TransactionKind::Deposit => ("payment.deposited", format!("transactions/{id}")),
            TransactionKind::Charge => ("payment.charged", format!("payments/{id}")),
            _ => (
                "payment.refunded",
                m.refund_of
                    .as_ref()
                    .map(|p| format!("payments/{p}"))
                    .unwrap_or_default(),
            ),
        };
        let mut e = self
            .outbox
            .event(&format!("users/{}", m.user_id), action, &resource);
        e.attributes
            .insert("amount_minor".into(), m.delta.to_string());
        e.attributes.insert("currency".into(), m.currency.clone());
        e.attributes.insert("transaction".into(), t.name.clone());
        if !m.order.is_empty() {
            e.attributes.insert("order".into(), m.order.clone());
        }
        e
    }

    /// Every balance of a user's wallet.
    pub async fn balances(&self, user: &str) -> Result<Vec<Balance>, WalletError> {
        let page = self
            .table
            .query(
                Query::partition(wallet_pk(user))
                    .range(KeyRange::Prefix("bal#".into()))
                    .limit(1000),
            )
            .await?;
        page.items.iter().map(|i| decode(&i.data)).collect()
    }

    /// A user's transactions, newest first, optionally in one currency.
    pub async fn transactions(
        &self,
        user: &str,
        currency: &str,
        page_size: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Transaction>, Option<Cursor>), WalletError> {
        self.table
            .query_filtered(
                Query::partition(wallet_pk(user))
                    .range(KeyRange::Prefix("txn#".into()))
                    .descending()
                    .after(cursor),
                page_size,
                |item| {
                    let t: Transaction = decode(&item.data)?;
                    let wanted = currency.is_empty()
                        || t.amount.as_ref().is_some_and(|a| a.currency == currency);
                    Ok::<_, WalletError>(wanted.then_some(t))
                },
            )
            .await
    }
}
