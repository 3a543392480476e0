//! user-service's table. Layout:
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `user#<id>` | `profile` | the account |
//! | `email#<normalized email>` | `email` | the account id; makes emails unique |
//! | `session#<id>` | `session` | a refresh-token session (expires with the token) |
//!
//! Every change is written with its audit event in one atomic batch.

use ordermesh_platform::store::{Condition, NewItem, StoreError, Table, Write};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub email: String,
    #[prost(string, tag = "3")]
    pub display_name: String,
    #[prost(string, repeated, tag = "4")]
    pub roles: Vec<String>,
    #[prost(string, tag = "5")]
    pub password_hash: String,
    #[prost(message, optional, tag = "6")]
    pub create_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    pub update_time: Option<prost_types::Timestamp>,
    /// Sessions opened before this (unix ms) have ended: set when the password changes.
    #[prost(int64, tag = "8")]
    pub sessions_not_before_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionRecord {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub current_hash: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub previous_hashes: Vec<Vec<u8>>,
    #[prost(bool, tag = "4")]
    pub revoked: bool,
    #[prost(int64, tag = "5")]
    pub expires_at: i64,
    /// When the current secret replaced the previous one (unix ms; 0 for sessions stored
    /// before this was kept, which get no reuse grace).
    #[prost(int64, tag = "6")]
    pub rotated_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("changed concurrently; retry")]
    Concurrent,
    #[error(transparent)]
    Store(StoreError),
    #[error("stored user data is unreadable: {0}")]
    Corrupt(String),
}

impl From<StoreError> for UserStoreError {
    fn from(e: StoreError) -> Self {
        if e.is_condition_failed() {
            Self::Concurrent
        } else {
            Self::Store(e)
        }
    }
}

impl From<UserStoreError> for tonic::Status {
    fn from(e: UserStoreError) -> Self {
        match e {
            UserStoreError::EmailTaken => ordermesh_platform::status::with_reason(
                tonic::Code::AlreadyExists,
                "EMAIL_TAKEN",
                e.to_string(),
            ),
            UserStoreError::Concurrent => tonic::Status::aborted(e.to_string()),
            UserStoreError::Store(s) => s.into(),
            UserStoreError::Corrupt(detail) => {
                tracing::error!(%detail, "corrupt user data");
                tonic::Status::data_loss("stored user data is unreadable")
            }
        }
    }
}

fn user_pk(id: &str) -> String {
    format!("user#{id}")
}
fn email_pk(email: &str) -> String {
    format!("email#{email}")
}
fn session_pk(id: &str) -> String {
    format!("session#{id}")
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, UserStoreError> {
    M::decode(bytes).map_err(|e| UserStoreError::Corrupt(e.to_string()))
}

#[derive(Clone)]
pub struct UserStore {
    table: Table,
}

impl UserStore {
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Creates the account and claims its email, with `extra` writes (its audit event).
    pub async fn create(&self, user: &UserRecord, extra: Vec<Write>) -> Result<(), UserStoreError> {
        let mut writes = vec![
            Write::put(
                NewItem::new(email_pk(&user.email), "email", user.id.clone().into_bytes()),
                Condition::NotExists,
            ),
            Write::put(
                NewItem::new(user_pk(&user.id), "profile", user.encode_to_vec()),
                Condition::NotExists,
            ),
        ];
        writes.extend(extra);
        match self.table.write(writes).await {
            Ok(_) => Ok(()),
            Err(StoreError::ConditionFailed { index: 0, .. }) => Err(UserStoreError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<(UserRecord, u64)>, UserStoreError> {
        match self.table.get(&user_pk(id), "profile").await? {
            Some(item) => Ok(Some((decode(&item.data)?, item.version))),
            None => Ok(None),
        }
    }

    pub async fn find_by_email(
        &self,
        email: &str,
    ) -> Result<Option<(UserRecord, u64)>, UserStoreError> {
        let Some(item) = self.table.get(&email_pk(email), "email").await? else {
            return Ok(None);
        };
        let id = String::from_utf8(item.data.to_vec())
            .map_err(|e| UserStoreError::Corrupt(e.to_string()))?;
        self.get(&id).await
    }

    /// Writes `user` if it is still at `version`, with `extra` writes.
    pub async fn update(
        &self,
        user: &UserRecord,
        version: u64,
        extra: Vec<Write>,
    ) -> Result<(), UserStoreError> {
        let mut writes = vec![Write::put(
            NewItem::new(user_pk(&user.id), "profile", user.encode_to_vec()),
            Condition::Version(version),
        )];
        writes.extend(extra);
        self.table.write(writes).await?;
        Ok(())
    }

    pub async fn create_session(
        &self,
        id: &str,
        session: &SessionRecord,
        extra: Vec<Write>,
    ) -> Result<(), UserStoreError> {
        let mut writes = vec![Write::put(
            NewItem::new(session_pk(id), "session", session.encode_to_vec())
                .expiring_at(session.expires_at),
            Condition::NotExists,
        )];
        writes.extend(extra);
        self.table.write(writes).await?;
        Ok(())
    }

    pub async fn session(&self, id: &str) -> Result<Option<(SessionRecord, u64)>, UserStoreError> {
        match self.table.get(&session_pk(id), "session").await? {
            Some(item) => Ok(Some((decode(&item.data)?, item.version))),
            None => Ok(None),
        }
    }

    /// Replaces a session if it is still at `version`.
    pub async fn update_session(
        &self,
        id: &str,
        session: &SessionRecord,
        version: u64,
        extra: Vec<Write>,
    ) -> Result<(), UserStoreError> {
        let mut writes = vec![Write::put(
            NewItem::new(session_pk(id), "session", session.encode_to_vec())
                .expiring_at(session.expires_at),
            Condition::Version(version),
        )];
        writes.extend(extra);
        self.table.write(writes).await?;
        Ok(())
    }

    /// Writes only audit events (a failed login changes nothing else).
    pub async fn record(&self, writes: Vec<Write>) -> Result<(), UserStoreError> {
        self.table.write(writes).await?;
        Ok(())
    }
}
