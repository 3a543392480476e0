//! Expiring leases on background work, so that with N replicas of a service one replica works
//! an item at a time and another takes over when the holder dies.
//!
//! A lease is an item (`lease` / `<name>`) naming its owner, with an expiry time. Claiming is a
//! put conditional on no live lease existing (an expired one counts as absent, on both store
//! backends), so of two replicas racing for the same work exactly one wins. A holder that
//! dies simply lets its lease run out.
//!
//! The holder releases its lease early with a delete conditional on the version it wrote. A
//! new claim on an expired lease starts again at version 1, so that condition alone cannot
//! tell our lease from a successor's; the holder therefore releases only while its own clock
//! says the lease has [`SAFETY_MARGIN`] left, and otherwise leaves it to expire. The store
//! judges expiry by the writer's clock, so replicas' clocks must agree to well within that
//! margin (NTP does).

use std::time::Duration;

use crate::store::{Condition, NewItem, StoreError, Table};

const PARTITION: &str = "lease";
/// A lease closer than this to its expiry is treated as gone by its holder.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(2);

/// Claims leases in one table on behalf of one replica.
#[derive(Clone)]
pub struct Leases {
    table: Table,
    owner: String,
}

/// A lease this replica holds until it releases it or it expires.
#[derive(Debug)]
pub struct Claim {
    name: String,
    version: u64,
    pub expires_at: i64,
}

impl Claim {
    /// How long the lease has left by this replica's clock, less the safety margin.
    pub fn remaining(&self) -> Duration {
        let left = self.expires_at - unix_now() - SAFETY_MARGIN.as_secs() as i64;
        Duration::from_secs(left.max(0) as u64)
    }
}

use crate::clock::unix_seconds as unix_now;

impl Leases {
    /// `owner` names this replica (for example its pod name plus a random suffix).
    pub fn new(table: Table, owner: impl Into<String>) -> Self {
        Self {
            table,
            owner: owner.into(),
        }
    }

    /// A name for this process that no other replica shares.
    pub fn replica_owner(workload: &str) -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| workload.to_string());
        format!("{host}/{}", uuid::Uuid::new_v4())
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims `name` for `ttl` (rounded up to whole seconds, at least one) if no live lease on
    /// it exists; `None` when another replica holds it.
    pub async fn try_claim(&self, name: &str, ttl: Duration) -> Result<Option<Claim>, StoreError> {
        let expires_at =
            unix_now() + ttl.as_secs().max(1) as i64 + i64::from(ttl.subsec_nanos() > 0);
        let item =
            NewItem::new(PARTITION, name, self.owner.clone().into_bytes()).expiring_at(expires_at);
        match self.table.put(item, Condition::NotExists).await {
            Ok(version) => Ok(Some(Claim {
                name: name.to_string(),
                version,
                expires_at,
            })),
            Err(StoreError::ConditionFailed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Who holds `name` now, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .table
            .get(PARTITION, name)
            .await?
            .map(|i| String::from_utf8_lossy(&i.data).into_owned()))
    }

    /// Gives the lease up early, so other replicas need not wait for it to expire. A lease
    /// that is (nearly) expired, and so may be someone else's by now, is left alone.
    pub async fn release(&self, claim: Claim) -> Result<(), StoreError> {
        if claim.remaining().is_zero() {
            return Ok(());
        }
        match self
            .table
            .delete(PARTITION, &claim.name, Condition::Version(claim.version))
            .await
        {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedTable;

    async fn table(dir: &std::path::Path) -> Table {
        Table::Embedded(EmbeddedTable::open(dir, "leases").unwrap())
    }

    #[tokio::test]
    async fn one_replica_holds_a_lease_until_it_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path()).await;
        let a = Leases::new(t.clone(), "a");
        let b = Leases::new(t, "b");
        let held = a.try_claim("work", Duration::from_secs(30)).await.unwrap();
        let held = held.expect("a claims free work");
        assert!(
            b.try_claim("work", Duration::from_secs(30))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(b.holder("work").await.unwrap().as_deref(), Some("a"));
        a.release(held).await.unwrap();
        assert!(
            b.try_claim("work", Duration::from_secs(30))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_late_release_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path()).await;
        let a = Leases::new(t.clone(), "a");
        let b = Leases::new(t, "b");
        let stale = a
            .try_claim("work", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let taken = b.try_claim("work", Duration::from_secs(30)).await.unwrap();
        assert!(taken.is_some(), "the dead holder's lease ran out");
        a.release(stale).await.unwrap();
        assert_eq!(b.holder("work").await.unwrap().as_deref(), Some("b"));
    }
}
