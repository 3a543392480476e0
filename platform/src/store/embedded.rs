//! The embedded backend: one redb database file per table under the data directory.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store whose commits are durable when
//! `commit` returns (checksummed pages, no WAL to replay), so an acknowledged write survives a
//! `kill -9`. One writer thread owns all writes and commits them in groups: each request's
//! conditions are checked against the state left by the requests before it in the group, and
//! its writes are applied only if all of them hold, so a request is all-or-nothing while a
//! whole group shares one fsync.
//!
//! Expired items are invisible at once and removed later, as DynamoDB's TTL does: between
//! groups the writer thread sweeps a bounded stretch of the table, resuming where the last
//! sweep stopped, so refresh sessions and other expiring records do not pile up on disk.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Page cache per table. redb's default (1 GiB) lets a busy service grow far past its memory
/// budget; hot items fit in far less, and the OS page cache still holds the file.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
use tokio::sync::oneshot;

use super::{
    Condition, Cursor, IndexKey, Item, KeyRange, Order, Page, Query, StoreError, Write,
    condition_holds, is_live, now_unix,
};

const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");
const GSI1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gsi1");
/// Most requests folded into one commit.
const MAX_GROUP: usize = 256;
/// How often the writer sweeps for expired items, and how many entries one sweep examines
/// (a short write transaction, so requests queued behind it wait little).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEP_BUDGET: usize = 2_000;
const SEP: u8 = 0;
/// Greater than any byte of a UTF-8 string, so `prefix + HIGH` bounds every key with `prefix`.
const HIGH: u8 = 0xff;

#[derive(Clone, PartialEq, Message)]
struct StoredItem {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
    #[prost(string, optional, tag = "3")]
    ipk: Option<String>,
    #[prost(string, optional, tag = "4")]
    isk: Option<String>,
    #[prost(int64, optional, tag = "5")]
    expires_at: Option<i64>,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn join(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(p.as_bytes());
    }
    key
}

fn split(key: &[u8]) -> Result<Vec<String>, StoreError> {
    key.split(|b| *b == SEP)
        .map(|p| {
            String::from_utf8(p.to_vec())
                .map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))
        })
        .collect()
}

fn decode(bytes: &[u8]) -> Result<StoredItem, StoreError> {
    StoredItem::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

struct WriteRequest {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// A table in its own redb file.
#[derive(Clone)]
pub struct EmbeddedTable {
    db: Arc<Database>,
    writer: Arc<Writer>,
    name: Arc<str>,
}

/// The writer thread. When the last handle goes, the thread is stopped and joined, so the
/// file lock is released by the time the drop returns and the table can be reopened at once.
struct Writer {
    tx: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens (creating if needed) `<dir>/<name>.redb`.
    pub fn open(dir: &Path, name: &str) -> Result<Self, StoreError> {
        Self::open_sweeping_every(dir, name, SWEEP_EVERY)
    }

    fn open_sweeping_every(
        dir: &Path,
        name: &str,
        sweep_every: Duration,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(format!("{name}.redb"));
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(ITEMS).map_err(backend)?;
        txn.open_table(GSI1).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<WriteRequest>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name(format!("store-writer-{name}"))
            .spawn(move || writer_loop(&writer_db, &rx, sweep_every))
            .map_err(backend)?;
        Ok(Self {
            db,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
            name: Arc::from(name),
        })
    }

    pub(super) async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store writer stopped".into()))?
            .send(WriteRequest { writes, reply })
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    pub(super) async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let db = self.db.clone();
        let (pk, sk) = (pk.to_string(), sk.to_string());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(ITEMS).map_err(backend)?;
            let now = now_unix();
            match items.get(join(&[&pk, &sk]).as_slice()).map_err(backend)? {
                Some(guard) => {
                    let stored = decode(guard.value())?;
                    Ok(is_live(stored.expires_at, now).then(|| to_item(pk, sk, stored)))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(backend)?
    }

    pub(super) async fn query(&self, query: Query, on_index: bool) -> Result<Page, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(ITEMS).map_err(backend)?;
            let (lo, hi) = bounds(&query, on_index)?;
            let now = now_unix();
            let mut out: Vec<Item> = Vec::with_capacity(query.limit.min(128));
            let mut more = false;
            let mut visit = |key: &[u8], value: &[u8]| -> Result<bool, StoreError> {
                let (pk, sk, stored) = if on_index {
                    let parts = split(key)?;
                    let [_, _, pk, sk] = parts.as_slice() else {
                        return Err(StoreError::Corrupt("bad index key".into()));
                    };
                    let Some(guard) = items.get(join(&[pk, sk]).as_slice()).map_err(backend)?
                    else {
                        return Err(StoreError::Corrupt("index entry without item".into()));
                    };
                    (pk.clone(), sk.clone(), decode(guard.value())?)
                } else {
                    let parts = split(key)?;
                    let [pk, sk] = parts.as_slice() else {
                        return Err(StoreError::Corrupt("bad item key".into()));
                    };
                    (pk.clone(), sk.clone(), decode(value)?)
                };
                if !is_live(stored.expires_at, now) {
                    return Ok(true);
                }
                if out.len() == query.limit {
                    more = true;
                    return Ok(false);
                }
                out.push(to_item(pk, sk, stored));
                Ok(true)
            };
            let range = (
                lo.as_ref().map(Vec::as_slice),
                hi.as_ref().map(Vec::as_slice),
            );
            macro_rules! scan {
                ($table:expr) => {{
                    let iter = $table.range::<&[u8]>(range).map_err(backend)?;
                    let iter: Box<dyn Iterator<Item = _>> = match query.order {
                        Order::Ascending => Box::new(iter),
                        Order::Descending => Box::new(iter.rev()),
                    };
                    for entry in iter {
                        let (k, v) = entry.map_err(backend)?;
                        if !visit(k.value(), v.value())? {
                            break;
                        }
                    }
                }};
            }
            if on_index {
                let gsi = txn.open_table(GSI1).map_err(backend)?;
                scan!(gsi);
            } else {
                scan!(items);
            }
            let next = if more {
                out.last().map(|last| cursor_of(last, on_index))
            } else {
                None
            };
            Ok(Page { items: out, next })
        })
        .await
        .map_err(backend)?
    }
}

fn to_item(pk: String, sk: String, stored: StoredItem) -> Item {
    let index = match (stored.ipk, stored.isk) {
        (Some(pk), Some(sk)) => Some(IndexKey { pk, sk }),
        _ => None,
    };
    Item {
        pk,
        sk,
        version: stored.version,
        data: stored.data,
        index,
        expires_at: stored.expires_at,
    }
}

fn cursor_of(item: &Item, on_index: bool) -> Cursor {
    Cursor {
        pk: item.pk.clone(),
        sk: item.sk.clone(),
        ipk: on_index
            .then(|| item.index.as_ref().map(|i| i.pk.clone()))
            .flatten(),
        isk: on_index
            .then(|| item.index.as_ref().map(|i| i.sk.clone()))
            .flatten(),
    }
}

/// Byte bounds of a query within its partition, after the cursor if any.
/// Lower and upper bound of a key scan.
type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn bounds(q: &Query, on_index: bool) -> Result<KeyBounds, StoreError> {
    let part = |sk_part: &str| {
        let mut k = q.pk.as_bytes().to_vec();
        k.push(SEP);
        k.extend_from_slice(sk_part.as_bytes());
        k
    };
    let (lo, mut hi) = match &q.range {
        KeyRange::All => (part(""), [part(""), vec![HIGH]].concat()),
        KeyRange::Prefix(p) => (part(p), [part(p), vec![HIGH]].concat()),
        KeyRange::Between(a, b) => (part(a), part(b)),
    };
    if on_index && matches!(q.range, KeyRange::Between(..)) {
        hi.extend_from_slice(&[SEP, HIGH]);
    }
    let mut lo = Bound::Included(lo);
    let mut hi = Bound::Included(hi);
    if let Some(c) = &q.cursor {
        let at = if on_index {
            let (Some(ipk), Some(isk)) = (&c.ipk, &c.isk) else {
                return Err(StoreError::InvalidCursor);
            };
            if ipk != &q.pk {
                return Err(StoreError::InvalidCursor);
            }
            join(&[ipk, isk, &c.pk, &c.sk])
        } else {
            if c.pk != q.pk {
                return Err(StoreError::InvalidCursor);
            }
            join(&[&c.pk, &c.sk])
        };
        match q.order {
            Order::Ascending => lo = Bound::Excluded(at),
            Order::Descending => hi = Bound::Excluded(at),
        }
    }
    Ok((lo, hi))
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<WriteRequest>, sweep_every: Duration) {
    let mut sweep_from: Option<Vec<u8>> = None;
    let mut last_sweep = Instant::now();
    loop {
        if last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            match sweep_expired(db, sweep_from.take(), now_unix(), SWEEP_BUDGET) {
                Ok(swept) => {
                    if swept.removed > 0 {
                        tracing::debug!(removed = swept.removed, "expired items removed");
                    }
                    sweep_from = swept.resume_at;
                }
                Err(e) => tracing::warn!(error = %e, "sweep of expired items failed"),
            }
        }
        let first = match rx.recv_timeout(sweep_every.saturating_sub(last_sweep.elapsed())) {
            Ok(req) => req,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let now = now_unix();
        let outcome = (|| -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
            let txn = db.begin_write().map_err(backend)?;
            let results = {
                let mut items = txn.open_table(ITEMS).map_err(backend)?;
                let mut gsi = txn.open_table(GSI1).map_err(backend)?;
                group
                    .iter()
                    .map(|req| apply(&mut items, &mut gsi, &req.writes, now))
                    .collect::<Vec<_>>()
            };
            txn.commit().map_err(backend)?;
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                for (req, result) in group.into_iter().zip(results) {
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; the whole group is rejected");
                for req in group {
                    let _ = req
                        .reply
                        .send(Err(StoreError::Unavailable(format!("commit failed: {e}"))));
                }
            }
        }
    }
}

type RedbTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

#[derive(Debug, PartialEq, Eq)]
struct Swept {
    removed: usize,
    /// Where the next sweep starts; `None` once the end of the table was reached.
    resume_at: Option<Vec<u8>>,
}

/// Removes items (and their index entries) that expired before `now`, examining at most
/// `budget` entries from `from` on, in one write transaction of their own.
fn sweep_expired(
    db: &Database,
    from: Option<Vec<u8>>,
    now: i64,
    budget: usize,
) -> Result<Swept, StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    let swept = {
        let mut items = txn.open_table(ITEMS).map_err(backend)?;
        let mut gsi = txn.open_table(GSI1).map_err(backend)?;
        let mut expired = Vec::new();
        let mut resume_at = None;
        let start = from.as_deref().map_or(Bound::Unbounded, Bound::Included);
        for (examined, entry) in items
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(backend)?
            .enumerate()
        {
            let (key, value) = entry.map_err(backend)?;
            if examined == budget {
                resume_at = Some(key.value().to_vec());
                break;
            }
            let stored = decode(value.value())?;
            if !is_live(stored.expires_at, now) {
                expired.push((key.value().to_vec(), stored));
            }
        }
        for (key, stored) in &expired {
            items.remove(key.as_slice()).map_err(backend)?;
            if let (Some(ipk), Some(isk)) = (&stored.ipk, &stored.isk) {
                let parts = split(key)?;
                let [pk, sk] = parts.as_slice() else {
                    return Err(StoreError::Corrupt("bad item key".into()));
                };
                gsi.remove(join(&[ipk, isk, pk, sk]).as_slice())
                    .map_err(backend)?;
            }
        }
        Swept {
            removed: expired.len(),
            resume_at,
        }
    };
    txn.commit().map_err(backend)?;
    Ok(swept)
}

/// Checks every condition, then applies every write; on a failed condition nothing changes.
fn apply(
    items: &mut RedbTable<'_>,
    gsi: &mut RedbTable<'_>,
    writes: &[Write],
    now: i64,
) -> Result<Vec<u64>, StoreError> {
    let mut current = Vec::with_capacity(writes.len());
    for (index, w) in writes.iter().enumerate() {
        let (pk, sk) = w.keys();
        let stored = match items.get(join(&[pk, sk]).as_slice()).map_err(backend)? {
            Some(guard) => Some(decode(guard.value())?),
            None => None,
        };
        let live_version = stored
            .as_ref()
            .filter(|s| is_live(s.expires_at, now))
            .map(|s| s.version);
        if !condition_holds(w.condition(), live_version) {
            return Err(StoreError::ConditionFailed {
                index,
                pk: pk.to_string(),
                sk: sk.to_string(),
            });
        }
        current.push(stored);
    }
    let mut versions = Vec::with_capacity(writes.len());
    for (w, stored) in writes.iter().zip(current) {
        let (pk, sk) = w.keys();
        let key = join(&[pk, sk]);
        if matches!(w, Write::Put { .. } | Write::Delete { .. })
            && let Some(old) = &stored
            && let (Some(ipk), Some(isk)) = (&old.ipk, &old.isk)
        {
            gsi.remove(join(&[ipk, isk, pk, sk]).as_slice())
                .map_err(backend)?;
        }
        match w {
            Write::Put { item, .. } => {
                // Same numbering as the DynamoDB backend: a create starts at 1, every other
                // put continues from the stored version (live or expired).
                let version = match w.condition() {
                    Condition::NotExists => 1,
                    _ => stored.as_ref().map_or(1, |s| s.version + 1),
                };
                let new = StoredItem {
                    version,
                    data: item.data.clone(),
                    ipk: item.index.as_ref().map(|i| i.pk.clone()),
                    isk: item.index.as_ref().map(|i| i.sk.clone()),
                    expires_at: item.expires_at,
                };
                items
                    .insert(key.as_slice(), new.encode_to_vec().as_slice())
                    .map_err(backend)?;
                if let Some(ix) = &item.index {
                    gsi.insert(join(&[&ix.pk, &ix.sk, pk, sk]).as_slice(), &[][..])
                        .map_err(backend)?;
                }
                versions.push(version);
            }
            Write::Delete { .. } => {
                items.remove(key.as_slice()).map_err(backend)?;
                versions.push(0);
            }
            Write::Check { .. } => versions.push(0),
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewItem;
    use redb::ReadableTableMetadata;

    #[test]
    fn keys_order_by_partition_then_sort_key() {
        assert!(join(&["a", "z"]) < join(&["ab", ""]));
        assert!(join(&["a", "b"]) < join(&["a", "ba"]));
        assert_eq!(split(&join(&["p", "s"])).unwrap(), vec!["p", "s"]);
    }

    fn raw_len(table: &EmbeddedTable, def: TableDefinition<&[u8], &[u8]>) -> u64 {
        let txn = table.db.begin_read().unwrap();
        txn.open_table(def).unwrap().len().unwrap()
    }

    #[tokio::test]
    async fn a_sweep_removes_expired_items_and_their_index_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let table = EmbeddedTable::open(dir.path(), "sessions").unwrap();
        let writes = vec![
            Write::put(
                NewItem::new("u1", "s1", "a")
                    .with_index("by-user", "u1")
                    .expiring_at(1_000),
                Condition::None,
            ),
            Write::put(
                NewItem::new("u1", "s2", "b").expiring_at(5_000),
                Condition::None,
            ),
            Write::put(
                NewItem::new("u2", "s1", "c").with_index("by-user", "u2"),
                Condition::None,
            ),
        ];
        table.write(writes).await.unwrap();
        assert_eq!(raw_len(&table, ITEMS), 3);
        assert_eq!(raw_len(&table, GSI1), 2);

        let swept = sweep_expired(&table.db, None, 2_000, 100).unwrap();
        assert_eq!(
            swept,
            Swept {
                removed: 1,
                resume_at: None
            }
        );
        assert_eq!(raw_len(&table, ITEMS), 2);
        assert_eq!(
            raw_len(&table, GSI1),
            1,
            "the expired item's index entry goes too"
        );
        let txn = table.db.begin_read().unwrap();
        let items = txn.open_table(ITEMS).unwrap();
        assert!(items.get(join(&["u1", "s2"]).as_slice()).unwrap().is_some());
        assert!(items.get(join(&["u2", "s1"]).as_slice()).unwrap().is_some());
    }

    #[tokio::test]
    async fn the_writer_sweeps_on_its_own_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let table =
            EmbeddedTable::open_sweeping_every(dir.path(), "sessions", Duration::from_millis(20))
                .unwrap();
        let past = now_unix() - 1;
        table
            .write(vec![
                Write::put(
                    NewItem::new("u", "old", "x").expiring_at(past),
                    Condition::None,
                ),
                Write::put(NewItem::new("u", "kept", "y"), Condition::None),
            ])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw_len(&table, ITEMS) > 1 {
            assert!(
                Instant::now() < deadline,
                "the expired item was never removed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(table.get("u", "kept").await.unwrap().unwrap().data, "y");
    }

    #[tokio::test]
    async fn sweeps_examine_a_bounded_stretch_and_resume_where_they_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let table = EmbeddedTable::open(dir.path(), "sessions").unwrap();
        let writes = (0..5)
            .map(|i| {
                Write::put(
                    NewItem::new("p", format!("{i}"), "x").expiring_at(10),
                    Condition::None,
                )
            })
            .collect();
        table.write(writes).await.unwrap();

        let first = sweep_expired(&table.db, None, 100, 2).unwrap();
        assert_eq!(first.removed, 2);
        assert_eq!(first.resume_at, Some(join(&["p", "2"])));
        let second = sweep_expired(&table.db, first.resume_at, 100, 2).unwrap();
        assert_eq!(second.removed, 2);
        let third = sweep_expired(&table.db, second.resume_at, 100, 2).unwrap();
        assert_eq!((third.removed, third.resume_at), (1, None));
        assert_eq!(raw_len(&table, ITEMS), 0);
        // Writes still go through the writer after sweeps.
        let versions = table
            .write(vec![Write::put(
                NewItem::new("p", "0", "y"),
                Condition::NotExists,
            )])
            .await
            .unwrap();
        assert_eq!(versions, vec![1]);
    }

    #[test]
    fn conditions_follow_liveness() {
        assert!(condition_holds(Condition::NotExists, None));
        assert!(!condition_holds(Condition::NotExists, Some(1)));
        assert!(condition_holds(Condition::Version(3), Some(3)));
        assert!(!condition_holds(Condition::Version(3), Some(4)));
        assert!(!condition_holds(Condition::Exists, None));
    }
}
