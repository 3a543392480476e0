//! In-process turns on hot items.
//!
//! Conditional writes keep racing writers correct, but when many requests in one process
//! read-modify-write the same item (a popular product's stock, one wallet's balance), all
//! but one lose each round and retry; some lose every attempt. Taking a turn per item inside
//! the process first leaves the conditional write to settle only races with other replicas.

use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of async locks; a key maps to one of them (distinct keys may share one).
#[derive(Debug)]
pub struct KeyLocks {
    stripes: Box<[Mutex<()>]>,
}

/// The turns held for a set of keys; released on drop.
#[must_use = "the turn ends when this is dropped"]
pub struct Turns<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl KeyLocks {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.stripes.len() as u64) as usize
    }

    /// Waits for the turn on every key. Locks are taken in one global order, so two callers
    /// with overlapping keys cannot deadlock.
    pub async fn lock<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Turns<'_> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].lock().await);
        }
        Turns { _guards: guards }
    }
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self::new(256)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_turn_at_a_time_per_key() {
        let locks = Arc::new(KeyLocks::new(8));
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.spawn(async move {
                let _turn = locks.lock(["products/HOT"]).await;
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }

    #[tokio::test]
    async fn overlapping_key_sets_in_any_order_do_not_deadlock() {
        let locks = Arc::new(KeyLocks::new(64));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let locks = locks.clone();
            tasks.spawn(async move {
                let keys = if i % 2 == 0 {
                    ["a", "b", "c"]
                } else {
                    ["c", "b", "a"]
                };
                let _turn = locks.lock(keys).await;
                tokio::task::yield_now().await;
            });
        }
        let all = async {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("no deadlock");
    }

    #[tokio::test]
    async fn a_repeated_key_is_one_turn() {
        let locks = KeyLocks::new(4);
        let _turn = locks.lock(["x", "x", "x"]).await;
    }
}
