//! Orders in order-service's table. Layout:
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `order#<id>` | `order` | the order (versioned); indexed `user#<user>` / `<id>` (ids are time-ordered) |
//! | `orderkey#<user>#<key>` | `key` | the order an idempotency key created |
//! | `pending` | `pay#<id>` | a charge whose outcome is not known yet |
//! | `pending` | `refund#<id>` | a refund still owed for a cancelled order |

use ordermesh_contracts::order::{Order, OrderState};
use ordermesh_platform::store::{
    Condition, Cursor, Item, NewItem, Query, StoreError, Table, Write,
};
use prost::Message;

pub const PENDING: &str = "pending";

#[derive(Clone, PartialEq, Message)]
pub struct OrderRecord {
    #[prost(message, optional, tag = "1")]
    pub order: Option<Order>,
    #[prost(string, tag = "2")]
    pub idempotency_key: String,
    #[prost(bool, tag = "3")]
    pub refund_pending: bool,
}

impl OrderRecord {
    pub fn state(&self) -> OrderState {
        self.order
            .as_ref()
            .and_then(|o| OrderState::try_from(o.state).ok())
            .unwrap_or(OrderState::Unspecified)
    }
    pub fn user_id(&self) -> &str {
        self.order.as_ref().map_or("", |o| o.user_id.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order not found")]
    NotFound,
    #[error("the order is {current}; it cannot be {wanted}")]
    IllegalTransition {
        current: &'static str,
        wanted: &'static str,
    },
    #[error("not enough stock for {sku}: {available} left")]
    OutOfStock { sku: String, available: i64 },
    #[error("the order total is too large")]
    TooLarge,
    #[error("the order changed concurrently too often; retry")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored order data is unreadable: {0}")]
    Corrupt(String),
}

impl From<crate::catalog::CatalogError> for OrderError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        match e {
            crate::catalog::CatalogError::Store(s) => Self::Store(s),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

impl From<OrderError> for tonic::Status {
    fn from(e: OrderError) -> Self {
        use ordermesh_platform::status::with_reason;
        use tonic::Code;
        match &e {
            OrderError::NotFound => tonic::Status::not_found(e.to_string()),
            OrderError::IllegalTransition { .. } => with_reason(
                Code::FailedPrecondition,
                "ILLEGAL_TRANSITION",
                e.to_string(),
            ),
            OrderError::OutOfStock { .. } => {
                with_reason(Code::FailedPrecondition, "OUT_OF_STOCK", e.to_string())
            }
            OrderError::TooLarge => tonic::Status::invalid_argument(e.to_string()),
            OrderError::Contended => tonic::Status::aborted(e.to_string()),
            OrderError::Store(_) => match e {
                OrderError::Store(s) => s.into(),
                _ => tonic::Status::internal("storage error"),
            },
            OrderError::Corrupt(d) => {
                tracing::error!(detail = %d, "corrupt order data");
                tonic::Status::data_loss("stored order data is unreadable")
            }
        }
    }
}

/// The name clients see for a state, e.g. `CONFIRMED`.
pub fn state_name(s: OrderState) -> &'static str {
    match s {
        OrderState::Unspecified => "UNSPECIFIED",
        OrderState::PendingPayment => "PENDING_PAYMENT",
        OrderState::Confirmed => "CONFIRMED",
        OrderState::Shipped => "SHIPPED",
        OrderState::Delivered => "DELIVERED",
        OrderState::Cancelled => "CANCELLED",
    }
}

pub fn order_pk(id: &str) -> String {
    format!("order#{id}")
}

pub fn key_pk(user: &str, key: &str) -> String {
    format!("orderkey#{user}#{key}")
}

#[derive(Clone)]
pub struct Orders {
    table: Table,
}

impl Orders {
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub async fn get(&self, id: &str) -> Result<Option<(OrderRecord, u64)>, OrderError> {
        match self.table.get(&order_pk(id), "order").await? {
            Some(item) => {
                let rec = OrderRecord::decode(item.data.as_ref())
                    .map_err(|e| OrderError::Corrupt(e.to_string()))?;
                Ok(Some((rec, item.version)))
            }
            None => Ok(None),
        }
    }

    pub async fn by_key(&self, user: &str, key: &str) -> Result<Option<String>, OrderError> {
        Ok(self
            .table
            .get(&key_pk(user, key), "key")
            .await?
            .map(|i| String::from_utf8_lossy(&i.data).into_owned()))
    }

    /// The write replacing an order at `version`.
    pub fn put(rec: &OrderRecord, version: Option<u64>) -> Write {
        let order = rec.order.clone().unwrap_or_default();
        let id = order.name.trim_start_matches("orders/").to_string();
        Write::put(
            NewItem::new(order_pk(&id), "order", rec.encode_to_vec())
                .with_index(format!("user#{}", order.user_id), id),
            version.map_or(Condition::NotExists, Condition::Version),
        )
    }

    pub async fn list_for_user(
        &self,
        user: &str,
        page_size: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Order>, Option<Cursor>), OrderError> {
        let page = self
            .table
            .query_index(
                Query::partition(format!("user#{user}"))
                    .descending()
                    .limit(page_size)
                    .after(cursor),
            )
            .await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in &page.items {
            let rec = OrderRecord::decode(item.data.as_ref())
                .map_err(|e| OrderError::Corrupt(e.to_string()))?;
            out.extend(rec.order);
        }
        Ok((out, page.next))
    }

    /// Work left for the re-driver, oldest first.
    pub async fn pending(&self, limit: usize) -> Result<Vec<PendingWork>, OrderError> {
        let page = self
            .table
            .query(Query::partition(PENDING).limit(limit))
            .await?;
        Ok(page
            .items
            .iter()
            .filter_map(PendingWork::from_item)
            .collect())
    }
}

/// A charge or refund whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWork {
    /// `pay` or `refund`.
    pub kind: String,
    pub order_id: String,
    /// When the work was recorded (unix milliseconds); `None` for items written before the
    /// time was kept, which count as old.
    pub since_ms: Option<u64>,
    /// The `traceparent` of the request that recorded it, so finishing it later links back.
    pub origin: String,
}

impl PendingWork {
    /// The marker item's payload: when the work was recorded, and in which trace.
    pub fn payload(now_ms: u64, traceparent: &str) -> Vec<u8> {
        format!("{now_ms} {traceparent}")
            .trim_end()
            .as_bytes()
            .to_vec()
    }

    fn from_item(item: &Item) -> Option<Self> {
        let (kind, id) = item.sk.split_once('#')?;
        let text = std::str::from_utf8(&item.data).unwrap_or_default();
        let mut parts = text.split_whitespace();
        Some(Self {
            kind: kind.to_string(),
            order_id: id.to_string(),
            since_ms: parts.next().and_then(|s| s.parse().ok()),
            origin: parts.next().unwrap_or_default().to_string(),
        })
    }

    /// Whether the work is at least `age` old at `now_ms`.
    pub fn older_than(&self, age: std::time::Duration, now_ms: u64) -> bool {
        self.since_ms
            .is_none_or(|since| now_ms.saturating_sub(since) >= age.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_work_keeps_its_time_and_origin_and_reads_older_markers() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let item = Item {
            pk: PENDING.into(),
            sk: "pay#o-1".into(),
            data: PendingWork::payload(1_000, tp).into(),
            version: 1,
            index: None,
            expires_at: None,
        };
        let work = PendingWork::from_item(&item).unwrap();
        assert_eq!(
            (
                work.kind.as_str(),
                work.order_id.as_str(),
                work.since_ms,
                work.origin.as_str()
            ),
            ("pay", "o-1", Some(1_000), tp)
        );
        // Markers written before the origin was kept: the time alone.
        let old = Item {
            data: bytes::Bytes::from_static(b"2000"),
            ..item.clone()
        };
        let work = PendingWork::from_item(&old).unwrap();
        assert_eq!((work.since_ms, work.origin.as_str()), (Some(2_000), ""));
        // Outside any trace: no origin.
        assert_eq!(PendingWork::payload(5, ""), b"5".to_vec());
    }
}
