//! The audit log in its table. Layout (single table):
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `chain` | `head` | last sequence and hash, the append lock across replicas |
//! | `rec` | sequence (20 digits) | the record |
//! | `evt#<event id>` | `e` | marks an event id as stored (idempotent append) |
//! | `actor#…`, `res#…`, `act#…` | sequence | a copy of the record, for queries |

use std::sync::Arc;

use ordermesh_contracts::audit::{AuditEvent, AuditRecord};
use ordermesh_platform::store::{
    Condition, Cursor, Item, KeyRange, NewItem, Query, StoreError, Table, Write,
};
use prost::Message;
use tokio::sync::{Mutex, Notify};

use crate::chain::{ChainWalker, GENESIS, record_hash};

const HEAD_PK: &str = "chain";
const HEAD_SK: &str = "head";
const RECORDS: &str = "rec";
/// Writes per stored event: record, id marker, three query copies.
const WRITES_PER_EVENT: usize = 5;
const MAX_ATTEMPTS: usize = 5;

#[derive(Clone, PartialEq, Message)]
struct ChainHead {
    #[prost(int64, tag = "1")]
    sequence: i64,
    #[prost(string, tag = "2")]
    hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored audit data is unreadable: {0}")]
    Corrupt(String),
    #[error("the chain head moved concurrently too often; retry")]
    Contended,
}

impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(s) => s.into(),
            AuditError::Corrupt(detail) => {
                tracing::error!(%detail, "corrupt audit data");
                tonic::Status::data_loss("stored audit data is unreadable")
            }
            AuditError::Contended => tonic::Status::aborted(e.to_string()),
        }
    }
}

/// Outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    pub appended: i32,
    pub duplicates: i32,
}

/// What a query asks for; empty strings mean "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: String,
    pub resource: String,
    pub action: String,
    pub start: Option<prost_types::Timestamp>,
    pub end: Option<prost_types::Timestamp>,
}

/// Result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub checked: i64,
    pub broken: Option<crate::chain::Break>,
}

fn seq_key(seq: i64) -> String {
    format!("{seq:020}")
}

fn decode_record(item: &Item) -> Result<AuditRecord, AuditError> {
    AuditRecord::decode(item.data.as_ref()).map_err(|e| AuditError::Corrupt(e.to_string()))
}

fn ts_key(t: &prost_types::Timestamp) -> (i64, i32) {
    (t.seconds, t.nanos)
}

/// The audit log of one mesh.
#[derive(Clone)]
pub struct AuditLog {
    table: Table,
    append_lock: Arc<Mutex<()>>,
    appended: Arc<Notify>,
}

impl AuditLog {
    pub fn new(table: Table) -> Self {
        Self {
            table,
            append_lock: Arc::new(Mutex::new(())),
            appended: Arc::new(Notify::new()),
        }
    }

    /// Wakes tails when this process appends.
    pub fn appended_signal(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    async fn head(&self) -> Result<(ChainHead, Condition), AuditError> {
        match self.table.get(HEAD_PK, HEAD_SK).await? {
            Some(item) => {
                let head = ChainHead::decode(item.data.as_ref())
                    .map_err(|e| AuditError::Corrupt(e.to_string()))?;
                Ok((head, Condition::Version(item.version)))
            }
            None => Ok((
                ChainHead {
                    sequence: 0,
                    hash: GENESIS.to_string(),
                },
                Condition::NotExists,
            )),
        }
    }

    /// Stores the events not stored before (by id), chaining each to the last record.
    /// Events are written in chunks that each move the chain head atomically; a chunk that
    /// loses a race with another writer is recomputed from the new head.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<Appended, AuditError> {
        let _guard = self.append_lock.lock().await;
        let mut result = Appended::default();
        let mut pending: Vec<AuditEvent> = Vec::with_capacity(events.len());
        let mut ids = std::collections::HashSet::new();
        for e in events {
            if ids.insert(e.id.clone()) {
                pending.push(e);
            } else {
                result.duplicates += 1;
            }
        }
        let per_chunk = (ordermesh_platform::store::MAX_BATCH - 1) / WRITES_PER_EVENT;
        let mut attempts = 0;
        while !pending.is_empty() {
            let (head, head_condition) = self.head().await?;
            let mut seq = head.sequence;
            let mut prev = head.hash.clone();
            let mut writes = Vec::new();
            let mut taken = 0;
            let mut skipped = 0;
            for event in pending.iter().take(per_chunk) {
                taken += 1;
                if self
                    .table
                    .get(&format!("evt#{}", event.id), "e")
                    .await?
                    .is_some()
                {
                    skipped += 1;
                    continue;
                }
                seq += 1;
                let now = ordermesh_platform::clock::timestamp();
                let hash = record_hash(&prev, seq, &now, event);
                let record = AuditRecord {
                    sequence: seq,
                    event: Some(event.clone()),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    record_time: Some(now),
                };
                let bytes = bytes::Bytes::from(record.encode_to_vec());
                let sk = seq_key(seq);
                writes.push(Write::put(
                    NewItem::new(RECORDS, sk.clone(), bytes.clone()),
                    Condition::NotExists,
                ));
                writes.push(Write::put(
                    NewItem::new(format!("evt#{}", event.id), "e", seq.to_be_bytes().to_vec()),
                    Condition::NotExists,
                ));
                for pk in [
                    format!("actor#{}", event.actor),
                    format!("res#{}", event.resource),
                    format!("act#{}", event.action),
                ] {
                    writes.push(Write::put(
                        NewItem::new(pk, sk.clone(), bytes.clone()),
                        Condition::NotExists,
                    ));
                }
                prev = hash;
            }
            if !writes.is_empty() {
                let new_head = ChainHead {
                    sequence: seq,
                    hash: prev,
                };
                writes.push(Write::put(
                    NewItem::new(HEAD_PK, HEAD_SK, new_head.encode_to_vec()),
                    head_condition,
                ));
                match self.table.write(writes).await {
                    Ok(_) => {}
                    Err(e) if e.is_condition_failed() || e.is_retryable() => {
                        attempts += 1;
                        if attempts >= MAX_ATTEMPTS {
                            return Err(AuditError::Contended);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            result.appended += (taken - skipped) as i32;
            result.duplicates += skipped as i32;
            pending.drain(..taken);
        }
        if result.appended > 0 {
            self.appended.notify_waiters();
        }
        Ok(result)
    }

    /// Records matching `filter`, oldest first, a page at a time.
    pub async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<AuditRecord>, Option<Cursor>), AuditError> {
        let partition = if !filter.actor.is_empty() {
            format!("actor#{}", filter.actor)
        } else if !filter.resource.is_empty() {
            format!("res#{}", filter.resource)
        } else if !filter.action.is_empty() {
            format!("act#{}", filter.action)
        } else {
            RECORDS.to_string()
        };
        self.table
            .query_filtered(
                Query::partition(partition)
                    .range(KeyRange::All)
                    .after(cursor),
                page_size,
                |item| {
                    let record = decode_record(item)?;
                    Ok::<_, AuditError>(matches_filter(&record, filter).then_some(record))
                },
            )
            .await
    }

    /// Up to `limit` records after `sequence`, in order.
    pub async fn records_after(
        &self,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let cursor = Cursor {
            pk: RECORDS.into(),
            sk: seq_key(sequence),
            ipk: None,
            isk: None,
        };
        let page = self
            .table
            .query(Query::partition(RECORDS).limit(limit).after(Some(cursor)))
            .await?;
        page.items.iter().map(decode_record).collect()
    }

    /// The sequence of the last record (0 when empty).
    pub async fn last_sequence(&self) -> Result<i64, AuditError> {
        Ok(self.head().await?.0.sequence)
    }

    /// Walks the whole chain and checks it ends where the head says.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        // The chain as of this head: records appended while the walk runs are past it, and
        // the next verification checks them.
        let (head, _) = self.head().await?;
        let mut walker = ChainWalker::default();
        let mut cursor = None;
        'walk: loop {
            let page = self
                .table
                .query(Query::partition(RECORDS).limit(500).after(cursor))
                .await?;
            for item in &page.items {
                if walker.expected_sequence > head.sequence {
                    break 'walk;
                }
                let record = match decode_record(item) {
                    Ok(r) => r,
                    Err(_) => {
                        return Ok(Verification {
                            checked: walker.checked,
                            broken: Some(crate::chain::Break {
                                sequence: walker.expected_sequence,
                                detail: format!(
                                    "record {} cannot be decoded",
                                    walker.expected_sequence
                                ),
                            }),
                        });
                    }
                };
                if let Err(broken) = walker.step(&record) {
                    return Ok(Verification {
                        checked: walker.checked,
                        broken: Some(broken),
                    });
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let last = walker.expected_sequence - 1;
        let broken = if last != head.sequence || walker.prev_hash != head.hash {
            Some(crate::chain::Break {
                sequence: last + 1,
                detail: format!(
                    "the chain head says {} records but {} are linked",
                    head.sequence, last
                ),
            })
        } else {
            None
        };
        Ok(Verification {
            checked: walker.checked,
            broken,
        })
    }
}

fn matches_filter(record: &AuditRecord, filter: &Filter) -> bool {
    let Some(event) = &record.event else {
        return false;
    };
    let field_ok = |want: &str, have: &str| want.is_empty() || want == have;
    let time = record.record_time.as_ref().map(ts_key).unwrap_or_default();
    field_ok(&filter.actor, &event.actor)
        && field_ok(&filter.resource, &event.resource)
        && field_ok(&filter.action, &event.action)
        && filter.start.as_ref().is_none_or(|s| time >= ts_key(s))
        && filter.end.as_ref().is_none_or(|e| time < ts_key(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh_platform::store::embedded::EmbeddedTable;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            id: format!("evt-{i}"),
            actor: "users/u".into(),
            resource: format!("orders/{i}"),
            action: "order.created".into(),
            source: "order-service".into(),
            occur_time: Some(ordermesh_platform::clock::timestamp()),
            attributes: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verification_while_records_are_appended_checks_the_chain_as_of_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(Table::Embedded(
            EmbeddedTable::open(dir.path(), "audit").unwrap(),
        ));
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    log.append(vec![event(i)]).await.unwrap();
                }
            })
        };
        let mut checks = 0;
        while !writer.is_finished() {
            let v = log.verify().await.unwrap();
            assert!(v.broken.is_none(), "{:?}", v.broken.map(|b| b.detail));
            checks += 1;
        }
        writer.await.unwrap();
        let v = log.verify().await.unwrap();
        assert!(v.broken.is_none());
        assert_eq!(v.checked, 200);
        assert!(checks > 0);
    }
}
