//! The revocation feed: one record per ended session (logout, refresh-token reuse) and per
//! user whose earlier access tokens stop counting (a role change), written in the same batch as
//! the change itself. Access tokens are verified at the gateway without calling user-service,
//! so the gateway follows this feed instead (`ListRevocations`, polled every second or so).
//!
//! Records live in the users table (`revocations` / a UUIDv7, so they sort by time) and expire
//! once every access token they could concern has expired on its own.

use std::time::Duration;

use ordermesh_contracts::user::Revocation;
use ordermesh_contracts::user::revocation::Kind;
use ordermesh_platform::store::{Condition, KeyRange, NewItem, Query, StoreError, Table, Write};
use prost::Message;

const PARTITION: &str = "revocations";
pub const MAX_PAGE: usize = 1000;

fn record(kind: Kind, subject: &str) -> Revocation {
    Revocation {
        kind: kind as i32,
        subject: subject.to_string(),
        time: Some(ordermesh_platform::clock::timestamp()),
    }
}

/// The write that records `kind` for `subject`; it is kept as long as an access token issued
/// just before it could still be presented (`access_ttl`, plus a minute of clock leeway).
pub fn write(kind: Kind, subject: &str, access_ttl: Duration) -> Write {
    let unix = ordermesh_platform::clock::unix_seconds()
        + (access_ttl + Duration::from_secs(60)).as_secs() as i64;
    Write::put(
        NewItem::new(
            PARTITION,
            uuid::Uuid::now_v7().to_string(),
            record(kind, subject).encode_to_vec(),
        )
        .expiring_at(unix),
        Condition::NotExists,
    )
}

/// Revocations recorded after `after` (a previous cursor, or empty for all), oldest first,
/// with the cursor to continue from.
pub async fn list(
    table: &Table,
    after: &str,
    page_size: usize,
) -> Result<(Vec<Revocation>, String), StoreError> {
    // UUIDv7 keys: the key `after` + "0" sorts after `after` and before every later key.
    let from = if after.is_empty() {
        "0".to_string()
    } else {
        format!("{after}0")
    };
    let page = table
        .query(
            Query::partition(PARTITION)
                .range(KeyRange::Between(from, "~".to_string()))
                .limit(page_size.clamp(1, MAX_PAGE)),
        )
        .await?;
    let mut cursor = after.to_string();
    let mut out = Vec::with_capacity(page.items.len());
    for item in page.items {
        if let Ok(r) = Revocation::decode(item.data.as_ref()) {
            out.push(r);
        }
        cursor = item.sk;
    }
    Ok((out, cursor))
}
