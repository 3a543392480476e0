//! The notifications table: each user's notifications (the history, and what the app shows),
//! their preferences, and the queue of emails to send.
//!
//! Keys: `inbox#{user}` / `{notification id}` (the event's UUIDv7, so sort order is time
//! order); `prefs#{user}` / `prefs`; `mail#{partition}` / `{notification id}` (see
//! [`crate::dispatcher`]). A notification's id is its event's id, and it is written only if it
//! does not exist: that is what makes an event notify a user at most once, however often it
//! is delivered.

use ordermesh_contracts::notification::{
    Category, ChannelPreferences, EmailState, Notification, NotificationPreferences,
};
use ordermesh_platform::store::{
    Condition, Cursor, KeyRange, NewItem, Query, StoreError, Table, Write,
};
use prost::Message;

/// A notification as stored.
#[derive(Clone, PartialEq, Message)]
pub struct Stored {
    #[prost(message, optional, tag = "1")]
    pub notification: Option<Notification>,
    /// Shown in the app (the user has not turned in-app off for its category).
    #[prost(bool, tag = "2")]
    pub in_app: bool,
    /// When notification-service took it in (unix ms): the live stream follows arrivals, not
    /// event times, since events from different services arrive in any order.
    #[prost(int64, tag = "3")]
    pub arrived_ms: i64,
}

/// Preferences as stored: what the user turned off, so a new user has everything on.
#[derive(Clone, PartialEq, Message)]
struct StoredPreferences {
    #[prost(bool, tag = "1")]
    orders_email_off: bool,
    #[prost(bool, tag = "2")]
    orders_in_app_off: bool,
    #[prost(bool, tag = "3")]
    payments_email_off: bool,
    #[prost(bool, tag = "4")]
    payments_in_app_off: bool,
}

/// Whether a category reaches a user by email and in the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub email: bool,
    pub in_app: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored notification data is unreadable: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error("changed concurrently; retry")]
    Contended,
}

pub fn inbox_pk(user_id: &str) -> String {
    format!("inbox#{user_id}")
}

fn arrivals_pk(user_id: &str) -> String {
    format!("arrivals#{user_id}")
}

/// A notification's item: keyed by its id in the user's inbox, indexed by arrival.
fn inbox_item(user_id: &str, id: &str, stored: &Stored) -> NewItem {
    NewItem::new(inbox_pk(user_id), id, stored.encode_to_vec()).with_index(
        arrivals_pk(user_id),
        format!("{:013}#{id}", stored.arrived_ms.max(0)),
    )
}

fn prefs_pk(user_id: &str) -> String {
    format!("prefs#{user_id}")
}

#[derive(Clone)]
pub struct Inbox {
    table: Table,
}

impl Inbox {
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The write that stores a new notification, refused if it exists (a re-delivery).
    pub fn create(&self, user_id: &str, stored: &Stored) -> Write {
        let id = stored
            .notification
            .as_ref()
            .map(|n| n.name.trim_start_matches("notifications/").to_string())
            .unwrap_or_default();
        Write::put(inbox_item(user_id, &id, stored), Condition::NotExists)
    }

    /// The write that stores a changed notification if it is still at `version`.
    pub fn replace(user_id: &str, id: &str, stored: &Stored, version: u64) -> Write {
        Write::put(inbox_item(user_id, id, stored), Condition::Version(version))
    }

    pub async fn get(&self, user_id: &str, id: &str) -> Result<Option<(Stored, u64)>, InboxError> {
        match self.table.get(&inbox_pk(user_id), id).await? {
            Some(item) => Ok(Some((Stored::decode(item.data.as_ref())?, item.version))),
            None => Ok(None),
        }
    }

    /// Applies `change` to a stored notification (read, then written back if unchanged in
    /// between; retried a few times). Returns whether `change` said it changed anything.
    pub async fn update(
        &self,
        user_id: &str,
        id: &str,
        change: impl Fn(&mut Stored) -> bool,
    ) -> Result<bool, InboxError> {
        for _ in 0..8 {
            let Some((mut stored, version)) = self.get(user_id, id).await? else {
                return Ok(false);
            };
            if !change(&mut stored) {
                return Ok(false);
            }
            match self
                .table
                .write(vec![Self::replace(user_id, id, &stored, version)])
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(InboxError::Contended)
    }

    /// The user's in-app notifications, newest first.
    pub async fn list(
        &self,
        user_id: &str,
        page_size: usize,
        cursor: Option<Cursor>,
        unread_only: bool,
    ) -> Result<(Vec<Notification>, Option<Cursor>), InboxError> {
        let query = Query::partition(inbox_pk(user_id))
            .descending()
            .after(cursor);
        self.table
            .query_filtered(query, page_size, |item| {
                let stored = Stored::decode(item.data.as_ref())?;
                Ok(stored
                    .notification
                    .filter(|n| stored.in_app && !(unread_only && n.read)))
            })
            .await
    }

    /// Notifications that arrived from `from_ms` on (by arrival, oldest first), each with
    /// its arrival key (`{arrived_ms:013}#{id}`); `None` for one not shown in the app.
    pub async fn arrived_since(
        &self,
        user_id: &str,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Option<Notification>)>, InboxError> {
        let query = Query::partition(arrivals_pk(user_id))
            .range(KeyRange::Between(
                format!("{:013}", from_ms.max(0)),
                "~".to_string(),
            ))
            .limit(limit);
        let page = self.table.query_index(query).await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            let key = item.index.map(|i| i.sk).unwrap_or_default();
            let stored = Stored::decode(item.data.as_ref())?;
            out.push((key, stored.notification.filter(|_| stored.in_app)));
        }
        Ok(out)
    }

    /// Every unread notification id of the user (up to `limit`).
    pub async fn unread_ids(&self, user_id: &str, limit: usize) -> Result<Vec<String>, InboxError> {
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .table
                .query(Query::partition(inbox_pk(user_id)).limit(500).after(cursor))
                .await?;
            for item in &page.items {
                let stored = Stored::decode(item.data.as_ref())?;
                if stored.notification.is_some_and(|n| !n.read) {
                    ids.push(item.sk.clone());
                    if ids.len() >= limit {
                        return Ok(ids);
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// The user's preferences and the stored version (0 when never set).
    async fn stored_preferences(
        &self,
        user_id: &str,
    ) -> Result<(StoredPreferences, Option<u64>), InboxError> {
        match self.table.get(&prefs_pk(user_id), "prefs").await? {
            Some(item) => Ok((
                StoredPreferences::decode(item.data.as_ref())?,
                Some(item.version),
            )),
            None => Ok((StoredPreferences::default(), None)),
        }
    }

    /// Which channels `category` reaches the user on. Security reaches every channel.
    pub async fn channels(
        &self,
        user_id: &str,
        category: Category,
    ) -> Result<Channels, InboxError> {
        let (p, _) = self.stored_preferences(user_id).await?;
        Ok(channels_of(&p, category))
    }

    pub async fn preferences(&self, user_id: &str) -> Result<NotificationPreferences, InboxError> {
        let (p, _) = self.stored_preferences(user_id).await?;
        Ok(to_proto(user_id, &p))
    }

    /// Sets the channels named in `paths` (`orders`, `orders.email`, `payments.in_app`, ...)
    /// from `wanted`; the caller has checked the paths.
    pub async fn set_preferences(
        &self,
        user_id: &str,
        paths: &[String],
        wanted: &NotificationPreferences,
    ) -> Result<NotificationPreferences, InboxError> {
        for _ in 0..8 {
            let (mut p, version) = self.stored_preferences(user_id).await?;
            let orders = wanted.orders.unwrap_or_default();
            let payments = wanted.payments.unwrap_or_default();
            for path in paths {
                match path.as_str() {
                    "orders" => {
                        p.orders_email_off = !orders.email;
                        p.orders_in_app_off = !orders.in_app;
                    }
                    "orders.email" => p.orders_email_off = !orders.email,
                    "orders.in_app" => p.orders_in_app_off = !orders.in_app,
                    "payments" => {
                        p.payments_email_off = !payments.email;
                        p.payments_in_app_off = !payments.in_app;
                    }
                    "payments.email" => p.payments_email_off = !payments.email,
                    "payments.in_app" => p.payments_in_app_off = !payments.in_app,
                    _ => {}
                }
            }
            let item = NewItem::new(prefs_pk(user_id), "prefs", p.encode_to_vec());
            let condition = version.map_or(Condition::NotExists, Condition::Version);
            match self.table.put(item, condition).await {
                Ok(_) => return Ok(to_proto(user_id, &p)),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(InboxError::Contended)
    }
}

fn channels_of(p: &StoredPreferences, category: Category) -> Channels {
    match category {
        Category::Orders => Channels {
            email: !p.orders_email_off,
            in_app: !p.orders_in_app_off,
        },
        Category::Payments => Channels {
            email: !p.payments_email_off,
            in_app: !p.payments_in_app_off,
        },
        Category::Security | Category::Unspecified => Channels {
            email: true,
            in_app: true,
        },
    }
}

fn to_proto(user_id: &str, p: &StoredPreferences) -> NotificationPreferences {
    let of = |category| {
        let c = channels_of(p, category);
        Some(ChannelPreferences {
            email: c.email,
            in_app: c.in_app,
        })
    };
    NotificationPreferences {
        name: format!("users/{user_id}/notification-preferences"),
        orders: of(Category::Orders),
        payments: of(Category::Payments),
        security: of(Category::Security),
    }
}

/// The email state a new notification starts in.
pub fn initial_email_state(email: bool) -> EmailState {
    if email {
        EmailState::Pending
    } else {
        EmailState::None
    }
}
