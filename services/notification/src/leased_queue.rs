//! A queue in the notifications table worked by every replica at once without two working
//! the same item: the queue is spread over partitions, and a replica works a partition only
//! while it holds that partition's lease, reading the partition only once it holds it (a
//! page read before could be another replica's past). An item's sort key starts with the time
//! it is due (`{due_ms:013}#{id}`), so a round reads due items first and one item in back-off
//! never hides others behind it; a retry moves the item to its new due time. A failed or
//! hung attempt is logged and the round goes on. The email sender and the webhook sender are
//! two workers of this one loop.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_platform::clock::unix_millis;
use ordermesh_platform::lease::Leases;
use ordermesh_platform::outbox::spread;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::{Condition, Item, NewItem, Query, StoreError, Table, Write};
use tokio::sync::Notify;

const LEASE: Duration = Duration::from_secs(60);
const BATCH: usize = 50;
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The longest one attempt may take; past it the item is tried again in a later round.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// A lease with less than this left is not used for another attempt.
const ATTEMPT_ROOM: Duration = Duration::from_secs(30);

/// What a queue does with one of its items: send it, then take it off the queue
/// ([`take`]) or move it to a later time ([`requeue`]), in the same write as what it records.
pub trait Worker: Send + Sync + 'static {
    type Error: std::fmt::Display + From<StoreError> + Send;

    fn attempt(
        &self,
        item: &Item,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

pub struct LeasedQueue<W> {
    table: Table,
    leases: Leases,
    /// The partition keys' and leases' first word (`mail`, `hook`).
    name: &'static str,
    partitions: u32,
    worker: W,
    wake: Arc<Notify>,
}

/// The partition key of partition `index` of queue `name`.
fn partition_key(name: &str, index: u32) -> String {
    format!("{name}#{index}")
}

/// The write that queues `id` (with `data`) on queue `name`, due at `due_ms` (0: now).
pub fn enqueue(name: &str, partitions: u32, id: &str, due_ms: i64, data: Vec<u8>) -> Write {
    Write::put(
        NewItem::new(
            partition_key(name, spread(id, partitions)),
            sort_key(due_ms, id),
            data,
        ),
        Condition::NotExists,
    )
}

fn sort_key(due_ms: i64, id: &str) -> String {
    format!("{:013}#{id}", due_ms.clamp(0, 9_999_999_999_999))
}

/// The id an item was queued under.
pub fn id_of(item: &Item) -> &str {
    item.sk
        .split_once('#')
        .map_or(item.sk.as_str(), |(_, id)| id)
}

/// When an item is due (unix ms).
pub fn due_of(item: &Item) -> i64 {
    item.sk
        .split_once('#')
        .and_then(|(due, _)| due.parse().ok())
        .unwrap_or(0)
}

/// The write that takes `item` off the queue, if no one moved it meanwhile.
pub fn take(item: &Item) -> Write {
    Write::Delete {
        pk: item.pk.clone(),
        sk: item.sk.clone(),
        condition: Condition::Version(item.version),
    }
}

/// The writes that move `item` to `due_ms` with new `data`.
pub fn requeue(item: &Item, due_ms: i64, data: Vec<u8>) -> [Write; 2] {
    [
        take(item),
        Write::put(
            NewItem::new(item.pk.clone(), sort_key(due_ms, id_of(item)), data),
            Condition::NotExists,
        ),
    ]
}

impl<W: Worker> LeasedQueue<W> {
    pub fn new(
        table: Table,
        owner: &str,
        name: &'static str,
        partitions: u32,
        worker: W,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            leases: Leases::new(table.clone(), Leases::replica_owner(owner)),
            table,
            name,
            partitions,
            worker,
            wake,
        }
    }

    pub fn spawn(self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self, shutdown: Shutdown) {
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let round = tokio::select! {
                r = self.round() => r,
                _ = shutdown.wait() => return,
            };
            let wait = match round {
                Ok(Some(next_due)) => next_due.min(IDLE_POLL),
                Ok(None) => IDLE_POLL,
                Err(e) => {
                    tracing::warn!(queue = self.name, error = %e, "queue round failed");
                    IDLE_POLL
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Works the due items of every partition no other replica is working; returns how long
    /// until the soonest item still waiting is due.
    async fn round(&self) -> Result<Option<Duration>, StoreError> {
        let mut next_due: Option<i64> = None;
        let mut note = |due: i64| next_due = Some(next_due.map_or(due, |d| d.min(due)));
        for p in 0..self.partitions {
            let pk = partition_key(self.name, p);
            // A look without the lease: an empty or not-yet-due partition is not claimed.
            let peek = self.table.query(Query::partition(&pk).limit(1)).await?;
            let Some(first) = peek.items.first() else {
                continue;
            };
            if due_of(first) > unix_millis() {
                note(due_of(first));
                continue;
            }
            let lease = format!("{}/{p}", self.name);
            let Some(claim) = self.leases.try_claim(&lease, LEASE).await? else {
                continue;
            };
            let worked = self.work(&pk, &claim, &mut note).await;
            if let Err(e) = self.leases.release(claim).await {
                tracing::debug!(queue = self.name, error = %e, "queue lease not released; it will expire");
            }
            worked?;
        }
        let now = unix_millis();
        Ok(next_due.map(|due| Duration::from_millis((due - now).max(0) as u64)))
    }

    /// Attempts the due items of one partition while the lease lasts.
    async fn work(
        &self,
        pk: &str,
        claim: &ordermesh_platform::lease::Claim,
        note: &mut impl FnMut(i64),
    ) -> Result<(), StoreError> {
        let page = self.table.query(Query::partition(pk).limit(BATCH)).await?;
        for item in &page.items {
            if due_of(item) > unix_millis() {
                note(due_of(item));
                break;
            }
            if claim.remaining() < ATTEMPT_ROOM {
                note(unix_millis());
                break;
            }
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.worker.attempt(item)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(queue = self.name, item = %item.sk, error = %e, "queue item not worked; tried again later")
                }
                Err(_) => {
                    tracing::warn!(queue = self.name, item = %item.sk, "queue attempt timed out; tried again later")
                }
            }
        }
        Ok(())
    }
}

/// Exponential back-off with jitter: between half and all of `base · 2^(attempts-1)`, capped
/// at `max`.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    use rand::Rng;
    let bound = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(max);
    let ms = bound.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_sort_by_due_time_and_keep_their_id() {
        let Write::Put { item, .. } = enqueue("mail", 4, "n#1", 1_700_000_000_000, vec![]) else {
            panic!("a put");
        };
        let stored = Item {
            pk: item.pk,
            sk: item.sk,
            version: 1,
            data: Default::default(),
            index: None,
            expires_at: None,
        };
        assert_eq!(id_of(&stored), "n#1");
        assert_eq!(due_of(&stored), 1_700_000_000_000);
        assert!(sort_key(5, "z") < sort_key(40, "a"), "due time first");
        let [_, Write::Put { item: moved, .. }] = requeue(&stored, 1_700_000_009_000, vec![1])
        else {
            panic!("take and put");
        };
        assert_eq!(moved.sk, "1700000009000#n#1");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(300);
        for attempts in 1..30 {
            let d = backoff(base, max, attempts);
            let bound = base.saturating_mul(1 << (attempts - 1).min(16)).min(max);
            assert!(d >= bound / 2 && d <= bound, "{attempts}: {d:?}");
        }
    }
}
