//! A queue in the notifications table worked by every replica at once without two working
//! the same item: the queue is spread over partitions, and a replica works a partition only
//! while it holds that partition's lease. Items carry their own "not before" time (back-off);
//! a round works what is due and reports when the next item is. The email sender and the
//! webhook sender are two workers of this one loop.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_platform::clock::unix_millis;
use ordermesh_platform::lease::Leases;
use ordermesh_platform::shutdown::Shutdown;
use ordermesh_platform::store::{Item, Query, StoreError, Table};
use tokio::sync::Notify;

const LEASE: Duration = Duration::from_secs(30);
const BATCH: usize = 50;
const IDLE_POLL: Duration = Duration::from_secs(1);
/// A lease with less than this left is not used for another attempt.
const ATTEMPT_ROOM: Duration = Duration::from_secs(15);

/// What a queue does with one of its items.
pub trait Worker: Send + Sync + 'static {
    type Error: std::fmt::Display + From<StoreError> + Send;

    /// Attempts `item` if it is due. `Ok(Some(ms))`: it stays queued until then.
    fn attempt(
        &self,
        item: &Item,
    ) -> impl std::future::Future<Output = Result<Option<i64>, Self::Error>> + Send;
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
pub fn partition_key(name: &str, index: u32) -> String {
    format!("{name}#{index}")
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

    /// Works every partition no other replica is working; returns how long until the
    /// soonest item still waiting is due.
    async fn round(&self) -> Result<Option<Duration>, W::Error> {
        let mut next_due: Option<i64> = None;
        for p in 0..self.partitions {
            let pk = partition_key(self.name, p);
            let page = self.table.query(Query::partition(&pk).limit(BATCH)).await?;
            if page.items.is_empty() {
                continue;
            }
            let lease = format!("{}/{p}", self.name);
            let Some(claim) = self.leases.try_claim(&lease, LEASE).await? else {
                continue;
            };
            let mut outcome = Ok(());
            for item in &page.items {
                if claim.remaining() < ATTEMPT_ROOM {
                    break;
                }
                match self.worker.attempt(item).await {
                    Ok(Some(due)) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                    Ok(None) => {}
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            if let Err(e) = self.leases.release(claim).await {
                tracing::debug!(queue = self.name, error = %e, "queue lease not released; it will expire");
            }
            outcome?;
        }
        let now = unix_millis();
        Ok(next_due.map(|due| Duration::from_millis((due - now).max(0) as u64)))
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
