//! Webhook endpoints: what a user registers (a URL and the event types it wants), the
//! deliveries made to it, and how a delivery is signed (Standard Webhooks: `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}` with the endpoint's `whsec_` secret).
//!
//! Keys: `webhook#{id}` / `endpoint` (indexed by `webhooks#{owner}`); each endpoint's delivery
//! log `deliveries#{endpoint}` / `{event id}` (the delivery id is the event's, so an event is
//! delivered to an endpoint at most once however often it arrives, and `webhook-id` is the same
//! on every attempt and re-send); the queue `hook#{partition}` / `{endpoint}#{event id}` (see
//! [`crate::webhook_sender`]).

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use ordermesh_contracts::audit::AuditEvent;
use ordermesh_contracts::notification::{DeliveryState, WebhookDelivery, WebhookEndpoint};
use ordermesh_platform::clock::{timestamp_from_millis, unix_millis};
use ordermesh_platform::store::{Condition, Cursor, NewItem, Query, StoreError, Table, Write};
use prost::Message;
use rand::RngCore;
use sha2::Sha256;

/// Event types an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.confirmed",
    "order.cancelled",
    "order.shipped",
    "order.delivered",
    "payment.deposited",
    "payment.refunded",
];
/// Endpoints an account may register.
pub const MAX_ENDPOINTS: usize = 10;
pub const QUEUE_PARTITIONS: u32 = 4;

#[derive(Clone, PartialEq, Message)]
pub struct EndpointRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub owner_id: String,
    #[prost(string, tag = "3")]
    pub url: String,
    #[prost(string, repeated, tag = "4")]
    pub event_types: Vec<String>,
    #[prost(string, tag = "5")]
    pub description: String,
    /// The signing secret (`whsec_…`). Kept, not hashed: every delivery is signed with it.
    #[prost(string, tag = "6")]
    pub secret: String,
    #[prost(int64, tag = "7")]
    pub create_ms: i64,
    #[prost(bool, tag = "8")]
    pub disabled: bool,
    #[prost(int32, tag = "9")]
    pub consecutive_failures: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeliveryRecord {
    #[prost(string, tag = "1")]
    pub endpoint_id: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(string, tag = "4")]
    pub payload: String,
    #[prost(enumeration = "DeliveryState", tag = "5")]
    pub state: i32,
    #[prost(int32, tag = "6")]
    pub attempts: i32,
    #[prost(int32, tag = "7")]
    pub last_status_code: i32,
    #[prost(string, tag = "8")]
    pub last_error: String,
    #[prost(int64, tag = "9")]
    pub create_ms: i64,
    #[prost(int64, tag = "10")]
    pub update_ms: i64,
}

/// A queued attempt.
#[derive(Clone, PartialEq, Message)]
pub struct QueuedDelivery {
    #[prost(string, tag = "1")]
    pub endpoint_id: String,
    #[prost(string, tag = "2")]
    pub delivery_id: String,
    /// Attempts made so far in this round (a re-send starts a new round).
    #[prost(int32, tag = "3")]
    pub attempts: i32,
    #[prost(int64, tag = "4")]
    pub not_before_ms: i64,
}

pub fn endpoint_pk(id: &str) -> String {
    format!("webhook#{id}")
}

fn owner_index(owner: &str) -> String {
    format!("webhooks#{owner}")
}

pub fn log_pk(endpoint_id: &str) -> String {
    format!("deliveries#{endpoint_id}")
}

/// The webhook delivery queue (see [`crate::leased_queue`]).
pub const HOOK_QUEUE: &str = "hook";

pub fn endpoint_proto(r: &EndpointRecord) -> WebhookEndpoint {
    WebhookEndpoint {
        name: format!("webhook-endpoints/{}", r.id),
        url: r.url.clone(),
        event_types: r.event_types.clone(),
        description: r.description.clone(),
        create_time: timestamp_from_millis(r.create_ms),
        disabled: r.disabled,
        consecutive_failures: r.consecutive_failures,
    }
}

pub fn delivery_proto(r: &DeliveryRecord) -> WebhookDelivery {
    WebhookDelivery {
        name: format!("webhook-endpoints/{}/deliveries/{}", r.endpoint_id, r.id),
        event_type: r.event_type.clone(),
        state: r.state,
        attempts: r.attempts,
        last_status_code: r.last_status_code,
        last_error: r.last_error.clone(),
        create_time: timestamp_from_millis(r.create_ms),
        update_time: timestamp_from_millis(r.update_ms),
        payload: r.payload.clone(),
    }
}

/// Why a URL is not accepted as an endpoint.
pub fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err("must be https".into()),
        other => return Err(format!("{other:.16} is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = url.host_str().ok_or("has no host")?;
    if !allow_private {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err("must not point at a private, loopback or link-local address".into());
        }
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost"
            || lower.ends_with(".localhost")
            || lower.ends_with(".local")
            || lower.ends_with(".internal")
            || lower.ends_with(".cluster.local")
            || !lower.contains('.')
        {
            return Err("must name a public host".into());
        }
    }
    Ok(url)
}

/// Whether `ip` is on the public internet: not loopback, private, link-local, CGNAT,
/// unspecified, multicast, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // Forms that carry an IPv4 address: judged by that address.
            let embedded_v4 = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if s[..6] == [0, 0, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4])
            {
                // IPv4-compatible ::a.b.c.d and NAT64 64:ff9b::a.b.c.d.
                return is_public(IpAddr::V4(embedded_v4(s[6], s[7])));
            }
            if s[0] == 0x2002 {
                // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
                return is_public(IpAddr::V4(embedded_v4(s[1], s[2])));
            }
            let first = s[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header value for a message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .map_err(|e| format!("the endpoint's secret is unreadable: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("signing key: {e}"))?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The JSON body an event is delivered as (Standard Webhooks' `type`, `timestamp`, `data`).
pub fn payload(event: &AuditEvent) -> String {
    // prost's Timestamp displays as RFC 3339.
    let time = event.occur_time.map(|t| t.to_string()).unwrap_or_default();
    let attributes: serde_json::Map<String, serde_json::Value> = event
        .attributes
        .iter()
        .filter(|(k, _)| k.as_str() != "reset_token")
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "type": event.action,
        "timestamp": time,
        "data": {
            "id": event.id,
            "resource": event.resource,
            "attributes": attributes,
        }
    })
    .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored webhook data is unreadable: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error("not found")]
    NotFound,
    #[error("{field}: {description}")]
    Invalid {
        field: &'static str,
        description: String,
    },
    #[error("{0}")]
    LimitReached(String),
}

/// The endpoints registry and delivery log.
#[derive(Clone)]
pub struct Webhooks {
    table: Table,
    allow_private: bool,
}

impl Webhooks {
    pub fn new(table: Table, allow_private: bool) -> Self {
        Self {
            table,
            allow_private,
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Checks a new endpoint and returns it, its secret and the write that stores it.
    pub async fn prepare(
        &self,
        owner_id: &str,
        url: &str,
        event_types: &[String],
        description: &str,
    ) -> Result<(EndpointRecord, Write), WebhookError> {
        let invalid = |field, description: String| WebhookError::Invalid { field, description };
        let url = check_url(url.trim(), self.allow_private).map_err(|d| invalid("url", d))?;
        let mut types: Vec<String> = Vec::new();
        for t in event_types {
            if !EVENT_TYPES.contains(&t.as_str()) {
                return Err(invalid(
                    "event_types",
                    format!("{t:.64} is not one of {}", EVENT_TYPES.join(", ")),
                ));
            }
            if !types.contains(t) {
                types.push(t.clone());
            }
        }
        if types.is_empty() {
            return Err(invalid("event_types", "name at least one".into()));
        }
        if description.chars().any(char::is_control) {
            return Err(invalid("description", "contains control characters".into()));
        }
        if self.endpoints_of(owner_id).await?.len() >= MAX_ENDPOINTS {
            return Err(WebhookError::LimitReached(format!(
                "the account has {MAX_ENDPOINTS} endpoints already; delete one first"
            )));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let record = EndpointRecord {
            id: id.clone(),
            owner_id: owner_id.to_string(),
            url: url.to_string(),
            event_types: types,
            description: description.trim().to_string(),
            secret: new_secret(),
            create_ms: unix_millis(),
            disabled: false,
            consecutive_failures: 0,
        };
        let write = Write::put(
            NewItem::new(endpoint_pk(&id), "endpoint", record.encode_to_vec())
                .with_index(owner_index(owner_id), id),
            Condition::NotExists,
        );
        Ok((record, write))
    }

    pub async fn endpoints_of(&self, owner_id: &str) -> Result<Vec<EndpointRecord>, WebhookError> {
        let page = self
            .table
            // Well past the limit, which concurrent creates can overshoot a little.
            .query_index(Query::partition(owner_index(owner_id)).limit(100))
            .await?;
        page.items
            .iter()
            .map(|i| Ok(EndpointRecord::decode(i.data.as_ref())?))
            .collect()
    }

    /// An endpoint and its version, if it exists.
    pub async fn endpoint(&self, id: &str) -> Result<Option<(EndpointRecord, u64)>, WebhookError> {
        match self.table.get(&endpoint_pk(id), "endpoint").await? {
            Some(item) => Ok(Some((
                EndpointRecord::decode(item.data.as_ref())?,
                item.version,
            ))),
            None => Ok(None),
        }
    }

    /// An endpoint of `owner_id`'s (others' read as not found).
    pub async fn owned(
        &self,
        owner_id: &str,
        name: &str,
    ) -> Result<(EndpointRecord, u64), WebhookError> {
        let id = name
            .strip_prefix("webhook-endpoints/")
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(WebhookError::Invalid {
                field: "name",
                description: "must be webhook-endpoints/{id}".into(),
            })?;
        match self.endpoint(id).await? {
            Some((r, v)) if r.owner_id == owner_id => Ok((r, v)),
            _ => Err(WebhookError::NotFound),
        }
    }

    /// Writes `record` back if unchanged since `version`, with its index.
    pub fn put_endpoint(record: &EndpointRecord, version: u64) -> Write {
        Write::put(
            NewItem::new(endpoint_pk(&record.id), "endpoint", record.encode_to_vec())
                .with_index(owner_index(&record.owner_id), record.id.clone()),
            Condition::Version(version),
        )
    }

    /// The writes that deliver `event` to every endpoint of `owner_id` subscribed to its
    /// type: a delivery log entry (refused if the event was delivered there before) and a
    /// queued attempt each.
    pub async fn deliveries_for(
        &self,
        owner_id: &str,
        event: &AuditEvent,
    ) -> Result<Vec<Write>, WebhookError> {
        if !EVENT_TYPES.contains(&event.action.as_str()) {
            return Ok(Vec::new());
        }
        let mut writes = Vec::new();
        let now = unix_millis();
        for endpoint in self.endpoints_of(owner_id).await? {
            if endpoint.disabled || !endpoint.event_types.contains(&event.action) {
                continue;
            }
            let log = DeliveryRecord {
                endpoint_id: endpoint.id.clone(),
                id: event.id.clone(),
                event_type: event.action.clone(),
                payload: payload(event),
                state: DeliveryState::Pending as i32,
                attempts: 0,
                last_status_code: 0,
                last_error: String::new(),
                create_ms: now,
                update_ms: now,
            };
            writes.push(Write::put(
                NewItem::new(log_pk(&endpoint.id), event.id.clone(), log.encode_to_vec()),
                Condition::NotExists,
            ));
            writes.push(enqueue(&endpoint.id, &event.id, 0));
        }
        Ok(writes)
    }

    /// An endpoint's deliveries, newest first.
    pub async fn deliveries(
        &self,
        endpoint_id: &str,
        page_size: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<WebhookDelivery>, Option<Cursor>), WebhookError> {
        let query = Query::partition(log_pk(endpoint_id))
            .descending()
            .after(cursor);
        self.table
            .query_filtered(query, page_size, |item| {
                Ok::<_, WebhookError>(Some(delivery_proto(&DeliveryRecord::decode(
                    item.data.as_ref(),
                )?)))
            })
            .await
    }

    pub async fn delivery(
        &self,
        endpoint_id: &str,
        id: &str,
    ) -> Result<Option<(DeliveryRecord, u64)>, WebhookError> {
        match self.table.get(&log_pk(endpoint_id), id).await? {
            Some(item) => Ok(Some((
                DeliveryRecord::decode(item.data.as_ref())?,
                item.version,
            ))),
            None => Ok(None),
        }
    }
}

/// The write that queues an attempt at delivery `delivery_id` to `endpoint_id`.
pub fn enqueue(endpoint_id: &str, delivery_id: &str, not_before_ms: i64) -> Write {
    let key = format!("{endpoint_id}#{delivery_id}");
    let queued = QueuedDelivery {
        endpoint_id: endpoint_id.to_string(),
        delivery_id: delivery_id.to_string(),
        attempts: 0,
        not_before_ms,
    };
    crate::leased_queue::enqueue(
        HOOK_QUEUE,
        QUEUE_PARTITIONS,
        &key,
        not_before_ms,
        queued.encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_plain_targets_are_refused_outside_local_runs() {
        for bad in [
            "http://example.com/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:192.168.1.1]/hook",
            "https://localhost/hook",
            "https://payment-service/hook",
            "https://user-service.ordermesh.svc.cluster.local/hook",
            "https://user-service.ordermesh.svc.cluster.local./hook",
            "https://[64:ff9b::a00:1]/hook",
            "https://[2002:a00:1::1]/hook",
            "https://[::127.0.0.1]/hook",
            "https://[fec0::1]/hook",
            "https://2130706433/hook",
            "https://0x7f.0.0.1/hook",
            "https://user:pw@example.com/hook",
            "ftp://example.com/hook",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad} accepted");
        }
        assert!(check_url("https://hooks.example.com/ordermesh", false).is_ok());
        assert!(check_url("https://93.184.216.34/hook", false).is_ok());
        assert!(
            check_url("http://127.0.0.1:9000/hook", true).is_ok(),
            "local runs"
        );
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example from the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(new_secret().starts_with("whsec_"));
    }

    #[test]
    fn payloads_carry_type_time_and_data_but_no_private_attribute() {
        let event = AuditEvent {
            id: "e1".into(),
            actor: "users/u1".into(),
            resource: "orders/o1".into(),
            action: "order.confirmed".into(),
            source: "order-service".into(),
            occur_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            attributes: [
                ("state".to_string(), "CONFIRMED".to_string()),
                ("reset_token".to_string(), "secret".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let body: serde_json::Value = serde_json::from_str(&payload(&event)).unwrap();
        assert_eq!(body["type"], "order.confirmed");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"]["resource"], "orders/o1");
        assert_eq!(body["data"]["attributes"]["state"], "CONFIRMED");
        assert!(body["data"]["attributes"].get("reset_token").is_none());
    }
}
