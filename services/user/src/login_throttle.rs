//! Per-account sign-in throttling. Per-address limits at the gateway do nothing against a
//! guesser spread over many addresses; this counts failed sign-ins per email address, whether
//! or not an account has it (so the answer does not tell which exist), and after a few of them
//! locks that address out for a time that doubles with every further failure.
//!
//! The count lives in the users table (`login-failures` / SHA-256 of the email) and expires on
//! its own once the lock and the counting window are over; a successful sign-in clears it.
//! Counting is best effort under contention: a write that keeps losing races is dropped rather
//! than failing the sign-in.

use std::time::Duration;

use ordermesh_platform::store::{Condition, NewItem, StoreError, Table};
use prost::Message;
use sha2::{Digest, Sha256};

const PARTITION: &str = "login-failures";

#[derive(Clone, PartialEq, Message)]
struct Failures {
    #[prost(uint32, tag = "1")]
    count: u32,
    #[prost(int64, tag = "2")]
    locked_until_ms: i64,
}

/// How throttling behaves.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures allowed before the first lock.
    pub free_failures: u32,
    /// The first lock; each further failure doubles it.
    pub first_lock: Duration,
    pub max_lock: Duration,
    /// How long failures are remembered without a lock.
    pub window: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            free_failures: 5,
            first_lock: Duration::from_secs(30),
            max_lock: Duration::from_secs(15 * 60),
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl ThrottleSettings {
    /// The lock after `count` failures, if any.
    pub fn lock_after(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.free_failures)?;
        let lock = self
            .first_lock
            .checked_mul(1u32 << over.min(20))
            .unwrap_or(self.max_lock);
        Some(lock.min(self.max_lock))
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    table: Table,
    settings: ThrottleSettings,
}

use ordermesh_platform::clock::unix_millis as now_ms;

fn key(email: &str) -> String {
    hex::encode(Sha256::digest(email.as_bytes()))
}

impl LoginThrottle {
    pub fn new(table: Table, settings: ThrottleSettings) -> Self {
        Self { table, settings }
    }

    async fn read(&self, email: &str) -> Result<(Failures, Option<u64>), StoreError> {
        Ok(match self.table.get(PARTITION, &key(email)).await? {
            Some(item) => (
                Failures::decode(item.data.as_ref()).unwrap_or_default(),
                Some(item.version),
            ),
            None => (Failures::default(), None),
        })
    }

    /// How long `email` must still wait, if it is locked.
    pub async fn locked_for(&self, email: &str) -> Result<Option<Duration>, StoreError> {
        let (failures, _) = self.read(email).await?;
        let left = failures.locked_until_ms - now_ms();
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    /// Counts a failed sign-in for `email`, locking it when it has had too many.
    pub async fn failed(&self, email: &str) -> Result<(), StoreError> {
        for _ in 0..3 {
            let (mut failures, version) = self.read(email).await?;
            failures.count = failures.count.saturating_add(1);
            let now = now_ms();
            if let Some(lock) = self.settings.lock_after(failures.count) {
                failures.locked_until_ms = now + lock.as_millis() as i64;
            }
            let forget_at_ms = failures
                .locked_until_ms
                .max(now + self.settings.window.as_millis() as i64);
            let item = NewItem::new(PARTITION, key(email), failures.encode_to_vec())
                .expiring_at(forget_at_ms.div_euclid(1000) + 1);
            let condition = version.map_or(Condition::NotExists, Condition::Version);
            match self.table.put(item, condition).await {
                Ok(_) => return Ok(()),
                Err(StoreError::ConditionFailed { .. } | StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        tracing::debug!("login failure not counted: the count kept changing");
        Ok(())
    }

    /// Forgets `email`'s failures after a successful sign-in.
    pub async fn succeeded(&self, email: &str) -> Result<(), StoreError> {
        self.table
            .delete(PARTITION, &key(email), Condition::None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh_platform::store::embedded::EmbeddedTable;

    #[test]
    fn locks_start_after_the_free_failures_and_double_up_to_the_cap() {
        let s = ThrottleSettings::default();
        assert_eq!(s.lock_after(4), None);
        assert_eq!(s.lock_after(5), Some(Duration::from_secs(30)));
        assert_eq!(s.lock_after(6), Some(Duration::from_secs(60)));
        assert_eq!(s.lock_after(9), Some(Duration::from_secs(480)));
        assert_eq!(s.lock_after(10), Some(Duration::from_secs(900)));
        assert_eq!(s.lock_after(u32::MAX), Some(Duration::from_secs(900)));
    }

    #[tokio::test]
    async fn failures_lock_an_address_and_success_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let throttle = LoginThrottle::new(
            Table::Embedded(EmbeddedTable::open(dir.path(), "users").unwrap()),
            ThrottleSettings {
                free_failures: 2,
                ..ThrottleSettings::default()
            },
        );
        let email = "a@example.com";
        throttle.failed(email).await.unwrap();
        assert!(throttle.locked_for(email).await.unwrap().is_none());
        throttle.failed(email).await.unwrap();
        let wait = throttle.locked_for(email).await.unwrap().expect("locked");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert!(
            throttle
                .locked_for("b@example.com")
                .await
                .unwrap()
                .is_none()
        );
        throttle.succeeded(email).await.unwrap();
        assert!(throttle.locked_for(email).await.unwrap().is_none());
    }
}
