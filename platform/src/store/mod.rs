//! One storage contract for every service, with two real backends: an embedded durable store
//! (redb; the default for local runs and tests) and DynamoDB (aws-sdk-dynamodb).
//!
//! The model is DynamoDB's single-table design: items addressed by a partition key and a sort
//! key, an optional secondary-index key pair (`gsi1`), an optional expiry time, and an opaque
//! payload. Every item carries a version the store bumps on each write, so read-modify-write
//! is a conditional put on the version read. A batch of writes is atomic: each write's
//! condition holds and all are applied, or none is.

mod attempts;
mod cursor;
pub mod dynamodb;
pub mod embedded;
mod error;
#[cfg(any(test, feature = "faults"))]
pub mod faults;
mod key_locks;
pub mod observed;
pub mod schema;

use bytes::Bytes;

pub use attempts::Attempts;
pub use cursor::Cursor;
pub use error::StoreError;
pub use key_locks::{KeyLocks, Turns};

/// The largest number of writes in one atomic batch (DynamoDB's transaction limit).
pub const MAX_BATCH: usize = 100;
/// The largest page a query returns.
pub const MAX_PAGE: usize = 1000;

/// Secondary-index keys of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKey {
    pub pk: String,
    pub sk: String,
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    /// 1 on creation, +1 on every put.
    pub version: u64,
    pub data: Bytes,
    pub index: Option<IndexKey>,
    /// Unix seconds after which the item no longer exists for reads and conditions.
    pub expires_at: Option<i64>,
}

/// An item to write; the store assigns its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub pk: String,
    pub sk: String,
    pub data: Bytes,
    pub index: Option<IndexKey>,
    pub expires_at: Option<i64>,
}

impl NewItem {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
            data: data.into(),
            index: None,
            expires_at: None,
        }
    }
    pub fn with_index(mut self, pk: impl Into<String>, sk: impl Into<String>) -> Self {
        self.index = Some(IndexKey {
            pk: pk.into(),
            sk: sk.into(),
        });
        self
    }
    pub fn expiring_at(mut self, unix_seconds: i64) -> Self {
        self.expires_at = Some(unix_seconds);
        self
    }
}

/// What must hold for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Always applies.
    None,
    /// No live item has the key (an expired one counts as absent).
    NotExists,
    /// A live item exists.
    Exists,
    /// A live item exists at exactly this version.
    Version(u64),
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        item: NewItem,
        condition: Condition,
    },
    Delete {
        pk: String,
        sk: String,
        condition: Condition,
    },
    /// Writes nothing; the batch applies only if the condition holds.
    Check {
        pk: String,
        sk: String,
        condition: Condition,
    },
}

impl Write {
    pub fn put(item: NewItem, condition: Condition) -> Self {
        Self::Put { item, condition }
    }
    pub fn keys(&self) -> (&str, &str) {
        match self {
            Self::Put { item, .. } => (&item.pk, &item.sk),
            Self::Delete { pk, sk, .. } | Self::Check { pk, sk, .. } => (pk, sk),
        }
    }
    pub fn condition(&self) -> Condition {
        match self {
            Self::Put { condition, .. }
            | Self::Delete { condition, .. }
            | Self::Check { condition, .. } => *condition,
        }
    }
}

/// Which sort keys a query covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    All,
    Prefix(String),
    /// Inclusive on both ends.
    Between(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// A query within one partition (of the table or of the `gsi1` index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub pk: String,
    pub range: KeyRange,
    pub order: Order,
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Query {
    pub fn partition(pk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            range: KeyRange::All,
            order: Order::Ascending,
            limit: 100,
            cursor: None,
        }
    }
    pub fn range(mut self, range: KeyRange) -> Self {
        self.range = range;
        self
    }
    pub fn descending(mut self) -> Self {
        self.order = Order::Descending;
        self
    }
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
    pub fn after(mut self, cursor: Option<Cursor>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// A page of results; `next` is set when more may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Option<Cursor>,
}

/// A service's table, on whichever backend was configured.
#[derive(Clone)]
pub enum Table {
    Embedded(embedded::EmbeddedTable),
    DynamoDb(dynamodb::DynamoTable),
    /// Either of the above behind injected failures (fault tests; compiled only for them).
    #[cfg(any(test, feature = "faults"))]
    Faulty(std::sync::Arc<faults::FaultyTable>),
}

impl Table {
    /// The table's name (as DynamoDB knows it, or the embedded file's).
    pub fn name(&self) -> &str {
        match self {
            Self::Embedded(t) => t.name(),
            Self::DynamoDb(t) => t.table_name(),
            #[cfg(any(test, feature = "faults"))]
            Self::Faulty(t) => t.inner().name(),
        }
    }

    /// `db.system.name` of the backend.
    fn system(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "redb",
            Self::DynamoDb(_) => "aws.dynamodb",
            #[cfg(any(test, feature = "faults"))]
            Self::Faulty(t) => t.inner().system(),
        }
    }

    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        validate_key(pk)?;
        validate_key(sk)?;
        let op = async {
            match self {
                Self::Embedded(t) => t.get(pk, sk).await,
                Self::DynamoDb(t) => t.get(pk, sk).await,
                #[cfg(any(test, feature = "faults"))]
                Self::Faulty(t) => Box::pin(t.get(pk, sk)).await,
            }
        };
        observed::call(self.system(), self.name(), "GetItem", op).await
    }

    /// Applies every write or none. Returns the new version of each `Put` in order (0 for
    /// other writes).
    pub async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        validate_batch(&writes)?;
        let operation = if writes.len() == 1 {
            match writes[0] {
                Write::Put { .. } => "PutItem",
                Write::Delete { .. } => "DeleteItem",
                _ => "TransactWriteItems",
            }
        } else {
            "TransactWriteItems"
        };
        let op = async {
            match self {
                Self::Embedded(t) => t.write(writes).await,
                Self::DynamoDb(t) => t.write(writes).await,
                #[cfg(any(test, feature = "faults"))]
                Self::Faulty(t) => Box::pin(t.write(writes)).await,
            }
        };
        observed::call(self.system(), self.name(), operation, op).await
    }

    /// One conditional put; returns the item's new version.
    pub async fn put(&self, item: NewItem, condition: Condition) -> Result<u64, StoreError> {
        let versions = self.write(vec![Write::put(item, condition)]).await?;
        Ok(versions.first().copied().unwrap_or_default())
    }

    pub async fn delete(&self, pk: &str, sk: &str, condition: Condition) -> Result<(), StoreError> {
        self.write(vec![Write::Delete {
            pk: pk.into(),
            sk: sk.into(),
            condition,
        }])
        .await
        .map(|_| ())
    }

    /// Items of one partition of the table, by sort key.
    pub async fn query(&self, query: Query) -> Result<Page, StoreError> {
        validate_query(&query)?;
        let op = async {
            match self {
                Self::Embedded(t) => t.query(query, false).await,
                Self::DynamoDb(t) => t.query(query, false).await,
                #[cfg(any(test, feature = "faults"))]
                Self::Faulty(t) => Box::pin(t.query(query, false)).await,
            }
        };
        observed::call(self.system(), self.name(), "Query", op).await
    }

    /// Up to `page_size` items of a partition that `keep` maps to `Some`, reading as many
    /// store pages as it takes; the cursor returned resumes after the last item kept.
    pub async fn query_filtered<T, E>(
        &self,
        query: Query,
        page_size: usize,
        mut keep: impl FnMut(&Item) -> Result<Option<T>, E>,
    ) -> Result<(Vec<T>, Option<Cursor>), E>
    where
        E: From<StoreError>,
    {
        let mut out = Vec::new();
        let mut query = query.limit(page_size);
        loop {
            let page = self.query(query.clone()).await?;
            for (i, item) in page.items.iter().enumerate() {
                let Some(kept) = keep(item)? else { continue };
                out.push(kept);
                if out.len() == page_size {
                    let more = i + 1 < page.items.len() || page.next.is_some();
                    let next = more.then(|| Cursor {
                        pk: item.pk.clone(),
                        sk: item.sk.clone(),
                        ipk: None,
                        isk: None,
                    });
                    return Ok((out, next));
                }
            }
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return Ok((out, None)),
            }
        }
    }

    /// Items of one partition of the `gsi1` index, by index sort key.
    pub async fn query_index(&self, query: Query) -> Result<Page, StoreError> {
        validate_query(&query)?;
        let op = async {
            match self {
                Self::Embedded(t) => t.query(query, true).await,
                Self::DynamoDb(t) => t.query(query, true).await,
                #[cfg(any(test, feature = "faults"))]
                Self::Faulty(t) => Box::pin(t.query(query, true)).await,
            }
        };
        observed::call(self.system(), self.name(), "Query", op).await
    }
}

pub use crate::clock::unix_seconds as now_unix;

pub(crate) fn is_live(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|t| t > now)
}

/// Whether `condition` holds given the live item's version (`None`: absent).
pub(crate) fn condition_holds(condition: Condition, live_version: Option<u64>) -> bool {
    match (condition, live_version) {
        (Condition::None, _) => true,
        (Condition::NotExists, v) => v.is_none(),
        (Condition::Exists, v) => v.is_some(),
        (Condition::Version(want), Some(have)) => want == have,
        (Condition::Version(_), None) => false,
    }
}

fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > 1024 || key.contains('\0') {
        return Err(StoreError::InvalidKey(format!(
            "keys must be 1..=1024 bytes without NUL, got {} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn validate_batch(writes: &[Write]) -> Result<(), StoreError> {
    if writes.is_empty() || writes.len() > MAX_BATCH {
        return Err(StoreError::InvalidBatch(format!(
            "a batch holds 1..={MAX_BATCH} writes, got {}",
            writes.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for w in writes {
        let (pk, sk) = w.keys();
        validate_key(pk)?;
        validate_key(sk)?;
        if let Write::Put { item, .. } = w
            && let Some(ix) = &item.index
        {
            validate_key(&ix.pk)?;
            validate_key(&ix.sk)?;
        }
        if !seen.insert((pk, sk)) {
            return Err(StoreError::InvalidBatch(format!(
                "item {pk}/{sk} appears twice in one batch"
            )));
        }
    }
    Ok(())
}

fn validate_query(query: &Query) -> Result<(), StoreError> {
    validate_key(&query.pk)?;
    if query.limit == 0 || query.limit > MAX_PAGE {
        return Err(StoreError::InvalidQuery(format!(
            "limit must be 1..={MAX_PAGE}, got {}",
            query.limit
        )));
    }
    Ok(())
}
