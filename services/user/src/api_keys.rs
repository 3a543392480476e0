//! API keys for third-party, server-side integrations: `omk_{id}_{secret}`, shown once,
//! stored as the secret's SHA-256 (compared in constant time), scoped by resource family and
//! read/write as the contracts derive them (`ordermesh_contracts::api_key_scopes`), revocable
//! (a revocation the gateway follows), with the last use recorded to the minute.

use std::time::Duration;

use ordermesh_contracts::api_key_scopes::{self, ADMIN_SCOPE};
use ordermesh_contracts::user::revocation::Kind;
use ordermesh_contracts::user::{ApiKey, VerifiedApiKey};
use ordermesh_platform::clock::{timestamp_from_millis, unix_millis};
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::status::Violations;
use ordermesh_platform::store::{Condition, NewItem, Query, Table, Write};
use ordermesh_platform::user_context::ROLE_ADMIN;
use prost::Message;

use crate::error::{UserError, checked};
use crate::revocations;
use crate::sessions::{hash_secret, new_secret, same_hash};
use crate::store::{UserRecord, UserStore};

const PREFIX: &str = "omk_";
/// Keys an account may hold at once.
pub const MAX_KEYS: usize = 25;
/// How stale the recorded last use may get before a use writes it again.
const LAST_USE_RESOLUTION: Duration = Duration::from_secs(60);

#[derive(Clone, PartialEq, Message)]
struct ApiKeyRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    owner_id: String,
    #[prost(string, tag = "3")]
    display_name: String,
    #[prost(string, repeated, tag = "4")]
    scopes: Vec<String>,
    #[prost(bytes = "vec", tag = "5")]
    secret_hash: Vec<u8>,
    #[prost(int64, tag = "6")]
    create_ms: i64,
    #[prost(int64, tag = "7")]
    last_use_ms: i64,
    /// 0: never expires.
    #[prost(int64, tag = "8")]
    expire_ms: i64,
}

fn key_pk(id: &str) -> String {
    format!("apikey#{id}")
}

fn owner_index(owner: &str) -> String {
    format!("apikeys#{owner}")
}

fn to_proto(r: &ApiKeyRecord) -> ApiKey {
    ApiKey {
        name: format!("api-keys/{}", r.id),
        display_name: r.display_name.clone(),
        prefix: format!("{PREFIX}{}", r.id),
        scopes: r.scopes.clone(),
        owner: format!("users/{}", r.owner_id),
        create_time: timestamp_from_millis(r.create_ms),
        last_use_time: timestamp_from_millis(r.last_use_ms),
        expire_time: timestamp_from_millis(r.expire_ms),
    }
}

/// `omk_{id}_{secret}` → (id, secret).
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

/// Who asks for a key operation.
pub struct Requester<'a> {
    pub user_id: &'a str,
    pub is_admin: bool,
    /// For the audit trail.
    pub actor: &'a str,
}

/// A key to create.
pub struct NewKey<'a> {
    pub display_name: &'a str,
    pub scopes: &'a [String],
    /// Unix ms; 0 for none.
    pub expire_ms: i64,
    /// `users/{id}`; empty for the requester.
    pub owner: &'a str,
}

#[derive(Clone)]
pub struct ApiKeys {
    store: UserStore,
    outbox: Outbox,
    access_ttl: Duration,
}

impl ApiKeys {
    pub fn new(store: UserStore, outbox: Outbox, access_ttl: Duration) -> Self {
        Self {
            store,
            outbox,
            access_ttl,
        }
    }

    fn table(&self) -> &Table {
        self.store.table()
    }

    async fn owner_record(&self, id: &str) -> Result<UserRecord, UserError> {
        Ok(self.store.get(id).await?.ok_or(UserError::NotFound)?.0)
    }

    /// Creates a key; returns it and its secret (the only time the secret is seen).
    pub async fn create(
        &self,
        who: &Requester<'_>,
        new: &NewKey<'_>,
    ) -> Result<(ApiKey, String), UserError> {
        let owner_id = match new.owner {
            "" => who.user_id.to_string(),
            name => {
                let id = name
                    .strip_prefix("users/")
                    .filter(|id| !id.is_empty() && !id.contains('/'))
                    .ok_or_else(|| UserError::invalid("owner", "must be users/{id}"))?;
                if id != who.user_id && id != "me" && !who.is_admin {
                    return Err(UserError::invalid(
                        "owner",
                        "only administrators create keys for another account",
                    ));
                }
                if id == "me" { who.user_id } else { id }.to_string()
            }
        };
        let owner = self.owner_record(&owner_id).await?;
        let mut v = Violations::new();
        crate::accounts::check_display_name(&mut v, "display_name", new.display_name);
        let mut scopes: Vec<String> = Vec::new();
        for (i, s) in new.scopes.iter().enumerate() {
            if !api_key_scopes::all().contains(s) {
                v.add(
                    &format!("scopes[{i}]"),
                    format!("{s:.64} is not a scope; GET /v1/api-keys/scopes lists them"),
                );
            } else if s == ADMIN_SCOPE && !owner.roles.iter().any(|r| r == ROLE_ADMIN) {
                v.add(
                    &format!("scopes[{i}]"),
                    "admin is for keys of an admin account",
                );
            } else if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        v.check(
            !scopes.is_empty() || new.scopes.len() > scopes.len(),
            "scopes",
            "at least one scope",
        );
        v.check(
            new.expire_ms == 0 || new.expire_ms > unix_millis(),
            "expire_time",
            "must be in the future",
        );
        checked(v)?;
        let existing = self
            .table()
            .query_index(Query::partition(owner_index(&owner_id)).limit(MAX_KEYS))
            .await?;
        if existing.items.len() >= MAX_KEYS {
            return Err(UserError::LimitReached(format!(
                "the account holds {MAX_KEYS} API keys already; revoke one first"
            )));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let secret = new_secret();
        let record = ApiKeyRecord {
            id: id.clone(),
            owner_id: owner_id.clone(),
            display_name: new.display_name.trim().to_string(),
            scopes,
            secret_hash: hash_secret(&secret),
            create_ms: unix_millis(),
            last_use_ms: 0,
            expire_ms: new.expire_ms,
        };
        let item = NewItem::new(key_pk(&id), "key", record.encode_to_vec())
            .with_index(owner_index(&owner_id), id.clone());
        let mut event = self
            .outbox
            .event(who.actor, "api_key.created", &format!("api-keys/{id}"));
        event
            .attributes
            .insert("owner".into(), format!("users/{owner_id}"));
        event
            .attributes
            .insert("scopes".into(), record.scopes.join(" "));
        let mut writes = vec![Write::put(item, Condition::NotExists)];
        writes.extend(self.outbox.writes(event));
        self.outbox.commit(self.table().write(writes)).await?;
        Ok((to_proto(&record), format!("{PREFIX}{id}_{secret}")))
    }

    /// The keys of `owner_id`, newest first.
    pub async fn list(&self, owner_id: &str) -> Result<Vec<ApiKey>, UserError> {
        let page = self
            .table()
            .query_index(
                Query::partition(owner_index(owner_id))
                    .descending()
                    .limit(MAX_KEYS),
            )
            .await?;
        page.items
            .iter()
            .map(|i| {
                ApiKeyRecord::decode(i.data.as_ref())
                    .map(|r| to_proto(&r))
                    .map_err(|_| UserError::Internal("stored API key is unreadable"))
            })
            .collect()
    }

    /// Revokes `name` (`api-keys/{id}`) if the requester owns it or is an admin.
    pub async fn delete(&self, who: &Requester<'_>, name: &str) -> Result<(), UserError> {
        let id = name
            .strip_prefix("api-keys/")
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| UserError::invalid("name", "must be api-keys/{id}"))?;
        let item = self
            .table()
            .get(&key_pk(id), "key")
            .await?
            .ok_or(UserError::ApiKeyNotFound)?;
        let record = ApiKeyRecord::decode(item.data.as_ref())
            .map_err(|_| UserError::Internal("stored API key is unreadable"))?;
        if record.owner_id != who.user_id && !who.is_admin {
            return Err(UserError::ApiKeyNotFound);
        }
        let mut event = self
            .outbox
            .event(who.actor, "api_key.revoked", &format!("api-keys/{id}"));
        event
            .attributes
            .insert("owner".into(), format!("users/{}", record.owner_id));
        let mut writes = vec![
            Write::Delete {
                pk: key_pk(id),
                sk: "key".into(),
                condition: Condition::Version(item.version),
            },
            revocations::write(Kind::ApiKey, id, self.access_ttl),
        ];
        writes.extend(self.outbox.writes(event));
        match self.outbox.commit(self.table().write(writes)).await {
            Ok(_) => Ok(()),
            // Revoked (or used, which bumps its version) at the same moment: look again.
            Err(e) if e.is_condition_failed() => {
                match self.table().get(&key_pk(id), "key").await? {
                    None => Ok(()),
                    Some(_) => Err(UserError::Raced),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The key's owner, roles and scopes, if `key` is a live key; records its use.
    pub async fn verify(&self, key: &str) -> Result<Option<VerifiedApiKey>, UserError> {
        let Some((id, secret)) = parse(key) else {
            return Ok(None);
        };
        let Some(item) = self.table().get(&key_pk(id), "key").await? else {
            return Ok(None);
        };
        let mut record = ApiKeyRecord::decode(item.data.as_ref())
            .map_err(|_| UserError::Internal("stored API key is unreadable"))?;
        if !same_hash(&hash_secret(secret), &record.secret_hash) {
            return Ok(None);
        }
        let now = unix_millis();
        if record.expire_ms != 0 && record.expire_ms <= now {
            return Ok(None);
        }
        let Some((owner, _)) = self.store.get(&record.owner_id).await? else {
            return Ok(None);
        };
        if now - record.last_use_ms >= LAST_USE_RESOLUTION.as_millis() as i64 {
            let first = record.last_use_ms == 0;
            record.last_use_ms = now;
            let mut writes = vec![Write::put(
                NewItem::new(key_pk(id), "key", record.encode_to_vec())
                    .with_index(owner_index(&record.owner_id), id.to_string()),
                Condition::Version(item.version),
            )];
            if first {
                let event = self.outbox.event(
                    &format!("users/{}", record.owner_id),
                    "api_key.first_used",
                    &format!("api-keys/{id}"),
                );
                writes.extend(self.outbox.writes(event));
            }
            // Best effort: a concurrent use or revocation wins, and the key still verifies.
            if let Err(e) = self.outbox.commit(self.table().write(writes)).await
                && !e.is_condition_failed()
            {
                tracing::warn!(error = %e, "API key use not recorded");
            }
        }
        Ok(Some(VerifiedApiKey {
            key_id: record.id.clone(),
            user_id: record.owner_id.clone(),
            roles: owner.roles.clone(),
            scopes: record.scopes.clone(),
            expire_time: timestamp_from_millis(record.expire_ms),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_their_own_shape() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse(&format!("omk_{id}_s3cret")), Some((id, "s3cret")));
        assert_eq!(parse(&format!("omk_{id}_")), None);
        assert_eq!(parse(&format!("omk_{id}")), None);
        assert_eq!(parse("omk_short_s3cret"), None);
        assert_eq!(parse(&format!("xyz_{id}_s3cret")), None);
    }
}
