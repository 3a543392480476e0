//! Placing, paying for and unwinding orders.
//!
//! Create: one batch reserves stock (versioned product writes), stores the order as
//! PENDING_PAYMENT, claims the idempotency key, marks the charge pending and records the
//! event. Then the charge goes to payment-service under a deadline with a key derived from the
//! order, so any number of attempts charge at most once:
//! - charged: CONFIRMED;
//! - declined: CANCELLED with the reason, stock released;
//! - unknown (timeout, payment down): stays PENDING_PAYMENT; the re-driver retries later.
//!
//! Every transition is a write conditional on the version read, so of two racing transitions
//! exactly one wins. Cancelling a confirmed order marks it CANCELLED (and a refund owed) first,
//! then refunds; a refund that cannot be made now is finished by the re-driver.
//!
//! The re-driver runs on every replica. It leaves alone work younger than the payment
//! deadline (its first attempt may still be in flight), and works an item only while holding
//! that item's lease, so one replica re-drives an order at a time and another takes over when
//! it dies.

use std::time::Duration;

use ordermesh_contracts::order::{Order, OrderItem, OrderState};
use std::sync::Arc;

use ordermesh_contracts::payment::{ChargeRequest, RefundRequest};
use ordermesh_platform::lease::Leases;
use ordermesh_platform::money::{MAX_AMOUNT_MINOR, money};
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::{Attempts, Condition, NewItem, StoreError, Write};
use ordermesh_platform::telemetry;
use tonic::Code;
use tracing::Instrument;

use crate::catalog::Catalog;
use crate::orders::{OrderError, OrderRecord, Orders, PENDING, PendingWork, key_pk, state_name};
use crate::payments::Payments;

const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// Deadline of each call to payment-service.
    pub payment_deadline: Duration,
    /// How often the re-driver looks for unfinished work.
    pub redrive_every: Duration,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            payment_deadline: Duration::from_secs(3),
            redrive_every: Duration::from_secs(5),
        }
    }
}

/// A line of a new order, as the client asked for it.
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Clone)]
pub struct OrderSaga {
    pub orders: Orders,
    pub catalog: Catalog,
    payment: Arc<dyn Payments>,
    outbox: Outbox,
    settings: SagaSettings,
    leases: Leases,
}

use ordermesh_platform::clock::timestamp as now;
use ordermesh_platform::identity::workloads;

/// The saga's own moves (a charge settled or declined) are made by order-service itself.
fn self_actor() -> String {
    format!("workloads/{}", workloads::ORDER)
}

fn now_ms() -> u64 {
    ordermesh_platform::clock::unix_millis().max(0) as u64
}

fn pending_write(kind: &str, id: &str) -> Write {
    Write::put(
        NewItem::new(
            PENDING,
            format!("{kind}#{id}"),
            PendingWork::payload(now_ms(), &telemetry::current_traceparent()),
        ),
        Condition::NotExists,
    )
}

fn pending_done(kind: &str, id: &str) -> Write {
    Write::Delete {
        pk: PENDING.into(),
        sk: format!("{kind}#{id}"),
        condition: Condition::None,
    }
}

/// A charge that failed for good (the payment said no) rather than for now.
fn is_decline(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound
    )
}

impl OrderSaga {
    pub fn new(
        orders: Orders,
        catalog: Catalog,
        payment: Arc<dyn Payments>,
        outbox: Outbox,
        settings: SagaSettings,
    ) -> Self {
        Self {
            leases: Leases::new(
                orders.table().clone(),
                Leases::replica_owner(workloads::ORDER),
            ),
            orders,
            catalog,
            payment,
            outbox,
            settings,
        }
    }

    /// Work younger than this is left to its first attempt, which may still be in flight.
    fn redrive_after(&self) -> Duration {
        self.settings.payment_deadline + Duration::from_secs(1)
    }

    /// How long one replica may hold an item before another may take it over: longer than
    /// any attempt (one payment call plus the store writes around it) can take.
    fn redrive_lease(&self) -> Duration {
        self.settings.payment_deadline * 2 + Duration::from_secs(5)
    }

    /// Re-drives one item if it is old enough and no other replica is on it; returns whether
    /// this replica worked it.
    pub async fn redrive(&self, work: &PendingWork) -> Result<bool, OrderError> {
        if !work.older_than(self.redrive_after(), now_ms()) {
            return Ok(false);
        }
        let name = format!("redrive/{}#{}", work.kind, work.order_id);
        let Some(claim) = self.leases.try_claim(&name, self.redrive_lease()).await? else {
            return Ok(false);
        };
        // Its own trace, linked to the request that left the work unfinished.
        let span = tracing::info_span!(
            "saga.redrive",
            otel.name = %format!("redrive {}", work.kind),
            "ordermesh.role" = ordermesh_platform::identity::workloads::ORDER,
            order = %work.order_id,
        );
        telemetry::link_to(&span, &work.origin);
        let outcome = self.finish(work).instrument(span).await;
        if let Err(e) = self.leases.release(claim).await {
            tracing::debug!(order = %work.order_id, error = %e, "re-drive lease not released; it will expire");
        }
        outcome.map(|()| true)
    }

    async fn finish(&self, work: &PendingWork) -> Result<(), OrderError> {
        match work.kind.as_str() {
            "pay" => self.settle_charge(&work.order_id).await.map(|_| ()),
            "refund" => self.settle_refund(&work.order_id).await,
            _ => Ok(()),
        }
    }

    /// The outbox writes of an order event; `owner` names whom it concerns (notifications).
    fn event(&self, order: &Order, actor: &str, action: &str) -> Vec<Write> {
        let mut e = self.outbox.event(actor, action, &order.name);
        e.attributes.insert(
            "state".into(),
            state_name(OrderState::try_from(order.state).unwrap_or_default()).into(),
        );
        if let Some(t) = &order.total {
            e.attributes
                .insert("total_minor".into(), t.amount_minor.to_string());
            e.attributes.insert("currency".into(), t.currency.clone());
        }
        e.attributes
            .insert("owner".into(), format!("users/{}", order.user_id));
        self.outbox.writes(e)
    }

    /// Places an order (or returns the one this key placed before) and tries to pay for it.
    pub async fn place(
        &self,
        user: &str,
        lines: &[Line],
        currency: &str,
        key: &str,
    ) -> Result<Order, OrderError> {
        let mut placed = None;
        let mut attempts = Attempts::new(MAX_ATTEMPTS);
        while attempts.next().await {
            if let Some(id) = self.orders.by_key(user, key).await? {
                let (rec, _) = self.orders.get(&id).await?.ok_or(OrderError::NotFound)?;
                return rec.order.ok_or(OrderError::NotFound);
            }
            let _turn = self
                .catalog
                .turn(lines.iter().map(|l| l.sku.as_str()))
                .await;
            let mut writes = Vec::new();
            let mut items = Vec::with_capacity(lines.len());
            let mut total: i64 = 0;
            for line in lines {
                let (product, version) =
                    self.catalog
                        .get(&line.sku)
                        .await?
                        .ok_or_else(|| OrderError::OutOfStock {
                            sku: line.sku.clone(),
                            available: 0,
                        })?;
                let price = product.unit_price.clone().unwrap_or_default();
                if price.currency != currency {
                    return Err(OrderError::Corrupt(format!(
                        "{} is priced in {}, not {currency}",
                        line.sku, price.currency
                    )));
                }
                if product.stock < line.quantity {
                    return Err(OrderError::OutOfStock {
                        sku: line.sku.clone(),
                        available: product.stock,
                    });
                }
                total = price
                    .amount_minor
                    .checked_mul(line.quantity)
                    .and_then(|t| total.checked_add(t))
                    .filter(|t| *t <= MAX_AMOUNT_MINOR)
                    .ok_or(OrderError::TooLarge)?;
                writes.push(Catalog::stock_write(
                    &product,
                    version,
                    product.stock - line.quantity,
                ));
                items.push(OrderItem {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price: Some(price),
                });
            }
            let id = uuid::Uuid::now_v7().to_string();
            let order = Order {
                name: format!("orders/{id}"),
                user_id: user.to_string(),
                items,
                total: Some(money(currency, total)),
                state: OrderState::PendingPayment as i32,
                cancel_reason: String::new(),
                payment: String::new(),
                create_time: Some(now()),
                update_time: Some(now()),
            };
            let rec = OrderRecord {
                order: Some(order.clone()),
                idempotency_key: key.to_string(),
                refund_pending: false,
            };
            let mut batch = vec![
                Write::put(
                    NewItem::new(key_pk(user, key), "key", id.clone().into_bytes()),
                    Condition::NotExists,
                ),
                Orders::put(&rec, None),
                pending_write("pay", &id),
            ];
            batch.extend(self.event(&order, &format!("users/{user}"), "order.created"));
            batch.append(&mut writes);
            match self.outbox.commit(self.orders.table().write(batch)).await {
                Ok(_) => {
                    placed = Some(id);
                    break;
                }
                // Key taken by a concurrent twin, or stock moved: look again.
                Err(e) => attempts.lost(e)?,
            }
        }
        let Some(id) = placed else {
            return Err(attempts.exhausted(OrderError::Contended));
        };
        self.settle_charge(&id).await
    }

    /// Tries to charge a PENDING_PAYMENT order and moves it on by the outcome.
    pub async fn settle_charge(&self, id: &str) -> Result<Order, OrderError> {
        let (rec, _) = self.orders.get(id).await?.ok_or(OrderError::NotFound)?;
        let order = rec.order.clone().ok_or(OrderError::NotFound)?;
        if rec.state() != OrderState::PendingPayment {
            return Ok(order);
        }
        let req = ChargeRequest {
            user_id: order.user_id.clone(),
            order: order.name.clone(),
            amount: order.total.clone(),
            idempotency_key: format!("order:{id}"),
        };
        match self
            .payment
            .charge(req, self.settings.payment_deadline)
            .await
        {
            Ok(payment) => {
                let payment = payment.name;
                self.transition(
                    id,
                    &[OrderState::PendingPayment],
                    OrderState::Confirmed,
                    "order.confirmed",
                    &self_actor(),
                    |rec| {
                        if let Some(o) = rec.order.as_mut() {
                            o.payment = payment.clone();
                        }
                        vec![pending_done("pay", id)]
                    },
                )
                .await
            }
            Err(status) if is_decline(&status) => {
                let reason = format!("payment declined: {}", status.message());
                self.cancel_with_release(
                    id,
                    &[OrderState::PendingPayment],
                    &reason,
                    &self_actor(),
                    false,
                )
                .await
            }
            Err(status) => {
                tracing::warn!(order = id, code = ?status.code(), "charge outcome unknown; the re-driver will retry");
                Ok(order)
            }
        }
    }

    /// Moves an order from one of `from` to `to`, with `extra` writes, if nobody moved it first.
    async fn transition(
        &self,
        id: &str,
        from: &[OrderState],
        to: OrderState,
        action: &str,
        actor: &str,
        extra: impl Fn(&mut OrderRecord) -> Vec<Write>,
    ) -> Result<Order, OrderError> {
        let mut attempts = Attempts::new(MAX_ATTEMPTS);
        while attempts.next().await {
            match self
                .try_transition(id, from, to, action, actor, &extra)
                .await?
            {
                Ok(order) => return Ok(order),
                Err(lost) => attempts.lost(lost)?,
            }
        }
        Err(attempts.exhausted(OrderError::Contended))
    }

    /// One attempt at a transition: the order moved, or the store error of a lost race
    /// (another writer moved the order or the stock first) for the caller to judge.
    async fn try_transition(
        &self,
        id: &str,
        from: &[OrderState],
        to: OrderState,
        action: &str,
        actor: &str,
        extra: &impl Fn(&mut OrderRecord) -> Vec<Write>,
    ) -> Result<Result<Order, StoreError>, OrderError> {
        let (mut rec, version) = self.orders.get(id).await?.ok_or(OrderError::NotFound)?;
        let current = rec.state();
        if current == to && from.contains(&OrderState::PendingPayment) {
            // Someone (the re-driver or a retry) already finished it.
            return rec.order.ok_or(OrderError::NotFound).map(Ok);
        }
        if !from.contains(&current) {
            return Err(OrderError::IllegalTransition {
                current: state_name(current),
                wanted: state_name(to),
            });
        }
        let mut writes = extra(&mut rec);
        if let Some(o) = rec.order.as_mut() {
            o.state = to as i32;
            o.update_time = Some(now());
        }
        let order = rec.order.clone().unwrap_or_default();
        writes.insert(0, Orders::put(&rec, Some(version)));
        writes.extend(self.event(&order, actor, action));
        match self.outbox.commit(self.orders.table().write(writes)).await {
            Ok(_) => Ok(Ok(order)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// CANCELLED with stock back on the shelf; `refund` marks a refund as owed.
    async fn cancel_with_release(
        &self,
        id: &str,
        from: &[OrderState],
        reason: &str,
        actor: &str,
        refund: bool,
    ) -> Result<Order, OrderError> {
        // One loop: each round reads the stock afresh and tries the transition once.
        let mut attempts = Attempts::new(MAX_ATTEMPTS);
        while attempts.next().await {
            let (rec, _) = self.orders.get(id).await?.ok_or(OrderError::NotFound)?;
            let order = rec.order.clone().unwrap_or_default();
            let _turn = self
                .catalog
                .turn(order.items.iter().map(|i| i.sku.as_str()))
                .await;
            let mut release = Vec::new();
            for item in &order.items {
                if let Some((p, v)) = self.catalog.get(&item.sku).await? {
                    release.push(Catalog::stock_write(&p, v, p.stock + item.quantity));
                }
            }
            let result = self
                .try_transition(
                    id,
                    from,
                    OrderState::Cancelled,
                    "order.cancelled",
                    actor,
                    &|rec: &mut OrderRecord| {
                        if let Some(o) = rec.order.as_mut() {
                            o.cancel_reason = reason.to_string();
                        }
                        let mut w = release.clone();
                        if from.contains(&OrderState::PendingPayment) {
                            w.push(pending_done("pay", id));
                        }
                        if refund {
                            rec.refund_pending = true;
                            w.push(pending_write("refund", id));
                        }
                        w
                    },
                )
                .await?;
            match result {
                Ok(order) => return Ok(order),
                // The order or its stock moved under us: read both again.
                Err(lost) => attempts.lost(lost)?,
            }
        }
        Err(attempts.exhausted(OrderError::Contended))
    }

    /// A user (or admin) cancels: allowed until the order ships; a paid order is refunded.
    pub async fn cancel(&self, id: &str, reason: &str, actor: &str) -> Result<Order, OrderError> {
        let (rec, _) = self.orders.get(id).await?.ok_or(OrderError::NotFound)?;
        match rec.state() {
            OrderState::Confirmed => {
                let reason = if reason.is_empty() {
                    "cancelled by the customer"
                } else {
                    reason
                };
                let order = self
                    .cancel_with_release(id, &[OrderState::Confirmed], reason, actor, true)
                    .await?;
                self.settle_refund(id).await?;
                Ok(self
                    .orders
                    .get(id)
                    .await?
                    .and_then(|(r, _)| r.order)
                    .unwrap_or(order))
            }
            current => Err(OrderError::IllegalTransition {
                current: state_name(current),
                wanted: state_name(OrderState::Cancelled),
            }),
        }
    }

    /// Refunds a cancelled order's payment if a refund is still owed.
    pub async fn settle_refund(&self, id: &str) -> Result<(), OrderError> {
        let (rec, version) = self.orders.get(id).await?.ok_or(OrderError::NotFound)?;
        if !rec.refund_pending {
            return Ok(());
        }
        let order = rec.order.clone().unwrap_or_default();
        let req = RefundRequest {
            payment: order.payment.clone(),
            amount: None,
            idempotency_key: format!("cancel:{id}"),
        };
        match self
            .payment
            .refund(req, self.settings.payment_deadline)
            .await
        {
            Ok(_) => {
                let mut done = rec;
                done.refund_pending = false;
                match self
                    .orders
                    .table()
                    .write(vec![
                        Orders::put(&done, Some(version)),
                        pending_done("refund", id),
                    ])
                    .await
                {
                    Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(status) => {
                tracing::warn!(order = id, code = ?status.code(), "refund not made yet; the re-driver will retry");
                Ok(())
            }
        }
    }

    pub async fn ship(&self, id: &str, actor: &str) -> Result<Order, OrderError> {
        self.transition(
            id,
            &[OrderState::Confirmed],
            OrderState::Shipped,
            "order.shipped",
            actor,
            |_| vec![],
        )
        .await
    }

    pub async fn deliver(&self, id: &str, actor: &str) -> Result<Order, OrderError> {
        self.transition(
            id,
            &[OrderState::Shipped],
            OrderState::Delivered,
            "order.delivered",
            actor,
            |_| vec![],
        )
        .await
    }

    /// Finishes charges and refunds left unfinished, until `shutdown`.
    /// `pending` reports how much work each look found.
    pub fn spawn_redriver(
        &self,
        shutdown: Shutdown,
        pending: prometheus_client::metrics::gauge::Gauge,
    ) -> tokio::task::JoinHandle<()> {
        let saga = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(saga.settings.redrive_every) => {}
                    _ = shutdown.wait() => return,
                }
                let work = match saga.orders.pending(100).await {
                    Ok(w) => {
                        pending.set(w.len() as i64);
                        w
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-driver cannot read pending work");
                        continue;
                    }
                };
                for item in work {
                    // Shutdown does not wait for an attempt in flight: every step is idempotent,
                    // and the item's lease expires for whichever replica goes on.
                    let outcome = tokio::select! {
                        r = saga.redrive(&item) => r,
                        _ = shutdown.wait() => return,
                    };
                    if let Err(e) = outcome {
                        tracing::warn!(order = %item.order_id, error = %e, "re-drive failed");
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use ordermesh_contracts::payment::Payment;
    use ordermesh_platform::store::Table;
    use ordermesh_platform::store::embedded::EmbeddedTable;
    use tonic::Status;

    use super::*;

    /// Payment-service as the saga sees it, answering from a script and recording each call.
    #[derive(Default)]
    struct ScriptedPayments {
        charges: Mutex<VecDeque<Result<Payment, Status>>>,
        refunds: Mutex<VecDeque<Result<Payment, Status>>>,
        calls: Mutex<Vec<String>>,
    }

    impl ScriptedPayments {
        fn next_charge(&self, answer: Result<Payment, Status>) {
            self.charges.lock().unwrap().push_back(answer);
        }

        fn next_refund(&self, answer: Result<Payment, Status>) {
            self.refunds.lock().unwrap().push_back(answer);
        }

        fn answer(queue: &Mutex<VecDeque<Result<Payment, Status>>>) -> Result<Payment, Status> {
            queue
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(Status::internal("no answer scripted")))
        }
    }

    impl Payments for ScriptedPayments {
        fn charge(
            &self,
            req: ChargeRequest,
            _: Duration,
        ) -> BoxFuture<'_, Result<Payment, Status>> {
            self.calls.lock().unwrap().push(format!(
                "charge {} {}",
                req.idempotency_key,
                req.amount.unwrap_or_default().amount_minor
            ));
            Box::pin(async move { Self::answer(&self.charges) })
        }
        fn refund(
            &self,
            req: RefundRequest,
            _: Duration,
        ) -> BoxFuture<'_, Result<Payment, Status>> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("refund {} {}", req.idempotency_key, req.payment));
            Box::pin(async move { Self::answer(&self.refunds) })
        }
    }

    fn paid(name: &str) -> Result<Payment, Status> {
        Ok(Payment {
            name: name.into(),
            ..Default::default()
        })
    }

    struct Fixture {
        saga: OrderSaga,
        payments: Arc<ScriptedPayments>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::Embedded(EmbeddedTable::open(dir.path(), "orders").unwrap());
        let catalog = Catalog::new(table.clone());
        catalog.seed_demo().await.unwrap();
        let payments = Arc::new(ScriptedPayments::default());
        let saga = OrderSaga::new(
            Orders::new(table),
            catalog,
            payments.clone(),
            Outbox::new("order-service"),
            SagaSettings::default(),
        );
        Fixture {
            saga,
            payments,
            _dir: dir,
        }
    }

    fn two_mugs() -> Vec<Line> {
        vec![Line {
            sku: "MUG-001".into(),
            quantity: 2,
        }]
    }

    async fn stock(f: &Fixture, sku: &str) -> i64 {
        f.saga.catalog.get(sku).await.unwrap().unwrap().0.stock
    }

    async fn pending(f: &Fixture) -> Vec<String> {
        let work = f.saga.orders.pending(100).await.unwrap();
        work.into_iter().map(|w| w.kind).collect()
    }

    fn id_of(order: &Order) -> &str {
        order.name.trim_start_matches("orders/")
    }

    #[tokio::test]
    async fn a_charged_order_is_confirmed_with_its_payment_and_stock_reserved() {
        let f = fixture().await;
        f.payments.next_charge(paid("payments/p1"));
        let order = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        assert_eq!(order.state, OrderState::Confirmed as i32);
        assert_eq!(order.payment, "payments/p1");
        assert_eq!(stock(&f, "MUG-001").await, 98);
        assert!(pending(&f).await.is_empty(), "nothing left to re-drive");
        let calls = f.payments.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![format!("charge order:{} 2500", id_of(&order))]);
    }

    #[tokio::test]
    async fn the_same_key_places_one_order_and_charges_once() {
        let f = fixture().await;
        f.payments.next_charge(paid("payments/p1"));
        let first = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        let again = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        assert_eq!(first.name, again.name);
        assert_eq!(f.payments.calls.lock().unwrap().len(), 1);
        assert_eq!(stock(&f, "MUG-001").await, 98);
    }

    #[tokio::test]
    async fn a_declined_charge_cancels_the_order_and_puts_the_stock_back() {
        let f = fixture().await;
        f.payments
            .next_charge(Err(Status::failed_precondition("insufficient funds")));
        let order = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        assert_eq!(order.state, OrderState::Cancelled as i32);
        assert!(
            order.cancel_reason.contains("insufficient funds"),
            "{}",
            order.cancel_reason
        );
        assert_eq!(stock(&f, "MUG-001").await, 100);
        assert!(pending(&f).await.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_charge_outcome_stays_pending_until_the_re_driver_settles_it() {
        let f = fixture().await;
        f.payments
            .next_charge(Err(Status::unavailable("payment-service is down")));
        let order = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        assert_eq!(order.state, OrderState::PendingPayment as i32);
        assert_eq!(stock(&f, "MUG-001").await, 98, "still reserved");
        assert_eq!(pending(&f).await, vec!["pay".to_string()]);
        // The re-driver's attempt: the same key, so payment-service charges at most once.
        f.payments.next_charge(paid("payments/p1"));
        let settled = f.saga.settle_charge(id_of(&order)).await.unwrap();
        assert_eq!(settled.state, OrderState::Confirmed as i32);
        assert!(pending(&f).await.is_empty());
        let calls = f.payments.calls.lock().unwrap().clone();
        assert_eq!(
            calls[0], calls[1],
            "both attempts carry one idempotency key"
        );
    }

    #[tokio::test]
    async fn cancelling_a_paid_order_refunds_it_once_even_when_the_first_refund_fails() {
        let f = fixture().await;
        f.payments.next_charge(paid("payments/p1"));
        let order = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        let id = id_of(&order).to_string();
        f.payments
            .next_refund(Err(Status::unavailable("payment-service is down")));
        let cancelled = f.saga.cancel(&id, "", "users/u1").await.unwrap();
        assert_eq!(cancelled.state, OrderState::Cancelled as i32);
        assert_eq!(stock(&f, "MUG-001").await, 100);
        assert_eq!(
            pending(&f).await,
            vec!["refund".to_string()],
            "the refund is owed"
        );
        f.payments.next_refund(paid("payments/p1"));
        f.saga.settle_refund(&id).await.unwrap();
        assert!(pending(&f).await.is_empty());
        f.saga.settle_refund(&id).await.unwrap();
        let refunds: Vec<_> = f
            .payments
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("refund"))
            .cloned()
            .collect();
        assert_eq!(
            refunds,
            vec![format!("refund cancel:{id} payments/p1"); 2],
            "no third once settled"
        );
    }

    #[tokio::test]
    async fn illegal_transitions_are_refused() {
        let f = fixture().await;
        f.payments
            .next_charge(Err(Status::failed_precondition("declined")));
        let order = f.saga.place("u1", &two_mugs(), "EUR", "k1").await.unwrap();
        let shipped = f.saga.ship(id_of(&order), "workloads/admin").await;
        assert!(
            matches!(shipped, Err(OrderError::IllegalTransition { .. })),
            "{shipped:?}"
        );
        let cancelled = f.saga.cancel(id_of(&order), "", "users/u1").await;
        assert!(matches!(
            cancelled,
            Err(OrderError::IllegalTransition { .. })
        ));
    }
}
