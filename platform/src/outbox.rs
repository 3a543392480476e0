//! The transactional outbox: a service writes its audit events into its own table in the same
//! atomic batch as the business change, so a change and its events are stored together or not
//! at all. A relay delivers them to audit-service in batches, retrying with exponential
//! backoff and jitter while audit is away, and deletes them once delivered. Delivery is
//! at-least-once (a crash between Append and the delete resends); Append is idempotent by
//! event id, which makes it effectively once. Nothing is lost across restarts: the outbox is
//! in the durable table.
//!
//! The same mechanism feeds notification-service: an outbox that has notifications subscribed
//! writes a second entry, in the same batch, for each event whose action notifies someone,
//! under partitions of its own, and a second relay delivers those with its own leases and
//! back-off. Either destination being down delays only its own deliveries.
//!
//! With several replicas, the outbox is spread over [`PARTITIONS`] partitions (by event id),
//! and a relay works a partition only while it holds that partition's lease: each replica's
//! relay drains the partitions nobody else is working, and a dead replica's partitions are
//! taken over once its leases expire.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::audit::{AppendRequest, AuditEvent};
use ordermesh_contracts::notification::IngestRequest;
use ordermesh_contracts::notification::notification_service_client::NotificationServiceClient;
use prost::Message;
use rand::Rng;
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::client::MeshChannel;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Condition, NewItem, Query, StoreError, Table, Write};

/// How many partitions the outbox is spread over.
pub const PARTITIONS: u32 = 8;
/// How long a relay may work a partition before another replica may take it over; renewed
/// by claiming again after each round.
const LEASE: Duration = Duration::from_secs(30);
/// Batches a relay delivers from one partition before it lets go of it.
const BATCHES_PER_CLAIM: usize = 10;
const BATCH: usize = 100;
const APPEND_DEADLINE: Duration = Duration::from_secs(5);
const IDLE_POLL: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An event waiting for delivery, with the trace it was produced in.
#[derive(Clone, PartialEq, Message)]
struct OutboxEntry {
    #[prost(message, optional, tag = "1")]
    event: Option<AuditEvent>,
    #[prost(string, tag = "2")]
    traceparent: String,
}

/// Builds the outbox write for an event; callers add it to their business batch.
#[derive(Clone)]
pub struct Outbox {
    source: String,
    pending: Arc<Notify>,
    gauges: OutboxGauges,
    /// Which actions notification-service is sent, when it is subscribed.
    notifies: Option<fn(&str) -> bool>,
    notify_pending: Arc<Notify>,
    notify_gauges: OutboxGauges,
}

/// Where a relay delivers an outbox's events.
pub enum Destination {
    /// audit-service's `Append`: every event.
    Audit(AuditServiceClient<MeshChannel>),
    /// notification-service's `Ingest`: the events it subscribed to.
    Notification(NotificationServiceClient<MeshChannel>),
}

impl Destination {
    /// The first word of the destination's partition keys and lease names.
    fn partition_prefix(&self) -> &'static str {
        match self {
            Self::Audit(_) => AUDIT_PREFIX,
            Self::Notification(_) => NOTIFICATION_PREFIX,
        }
    }

    async fn deliver(&mut self, events: Vec<AuditEvent>) -> Result<(), tonic::Status> {
        match self {
            Self::Audit(client) => {
                let mut request = tonic::Request::new(AppendRequest { events });
                request.set_timeout(APPEND_DEADLINE);
                client.append(request).await.map(|_| ())
            }
            Self::Notification(client) => {
                let mut request = tonic::Request::new(IngestRequest { events });
                request.set_timeout(APPEND_DEADLINE);
                client.ingest(request).await.map(|_| ())
            }
        }
    }
}

const AUDIT_PREFIX: &str = "outbox";
const NOTIFICATION_PREFIX: &str = "outbox-notification";

/// How far behind delivery is: `ordermesh_outbox_pending_items` (counted up to
/// [`OBSERVE_LIMIT`] per partition) and `ordermesh_outbox_oldest_item_age_seconds`, labelled
/// with the outbox's workload; refreshed by the relay at most every [`OBSERVE_EVERY`].
#[derive(Clone, Default)]
struct OutboxGauges {
    pending: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    outbox: String,
}

const OBSERVE_EVERY: Duration = Duration::from_secs(10);
const OBSERVE_LIMIT: usize = 1000;

impl Outbox {
    /// `source` is the producing workload, recorded on every event.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_string(),
            pending: Arc::new(Notify::new()),
            gauges: OutboxGauges::default(),
            notifies: None,
            notify_pending: Arc::new(Notify::new()),
            notify_gauges: OutboxGauges::default(),
        }
    }

    /// Also feeds notification-service: every event whose action `notifies` accepts gets a
    /// second entry for it (see the module docs).
    pub fn notifying(mut self, notifies: fn(&str) -> bool) -> Self {
        self.notifies = Some(notifies);
        self
    }

    /// Whether events are also written for notification-service.
    pub fn feeds_notifications(&self) -> bool {
        self.notifies.is_some()
    }

    /// Reports the backlog in `metrics` (see [`OutboxGauges`]).
    pub fn observed_in(mut self, metrics: &Metrics) -> Self {
        let labels = OutboxLabels {
            outbox: self.source.clone(),
        };
        let notify_labels = OutboxLabels {
            outbox: format!("{}/notification", self.source),
        };
        let pending = Family::<OutboxLabels, Gauge>::default();
        let oldest = Family::<OutboxLabels, Gauge<f64, AtomicU64>>::default();
        metrics.with_registry(|r| {
            r.register(
                "outbox_pending_items",
                "Events waiting in the outbox for delivery (counted up to 1000 per partition)",
                pending.clone(),
            );
            r.register(
                "outbox_oldest_item_age_seconds",
                "Age of the oldest event waiting in the outbox, 0 when empty",
                oldest.clone(),
            );
        });
        self.gauges = OutboxGauges {
            pending: pending.get_or_create(&labels).clone(),
            oldest_age: oldest.get_or_create(&labels).clone(),
        };
        if self.notifies.is_some() {
            self.notify_gauges = OutboxGauges {
                pending: pending.get_or_create(&notify_labels).clone(),
                oldest_age: oldest.get_or_create(&notify_labels).clone(),
            };
        }
        self
    }

    /// A new event (UUIDv7 id, now as its time) for `actor` doing `action` on `resource`.
    pub fn event(&self, actor: &str, action: &str, resource: &str) -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            actor: actor.to_string(),
            resource: resource.to_string(),
            action: action.to_string(),
            source: self.source.clone(),
            occur_time: Some(crate::clock::timestamp()),
            attributes: Default::default(),
        }
    }

    /// The writes that store `event` in the outbox, one per destination that takes it; put
    /// them in the same batch as the change.
    pub fn writes(&self, event: AuditEvent) -> Vec<Write> {
        self.writes_with_private(event, Default::default())
    }

    /// As [`Outbox::writes`], with `private` attributes that only notification-service gets
    /// (a reset link's token): the audit trail, which admins read and which is kept for ever,
    /// never holds them.
    pub fn writes_with_private(
        &self,
        event: AuditEvent,
        private: std::collections::BTreeMap<String, String>,
    ) -> Vec<Write> {
        let traceparent = crate::telemetry::current_traceparent();
        let mut writes = Vec::with_capacity(2);
        if self.notifies.is_some_and(|takes| takes(&event.action)) {
            let mut copy = event.clone();
            copy.attributes.extend(private);
            writes.push(entry_write(NOTIFICATION_PREFIX, copy, traceparent.clone()));
        }
        writes.insert(0, entry_write(AUDIT_PREFIX, event, traceparent));
        writes
    }

    /// Tells the relays that new events were committed (they also poll).
    pub fn notify(&self) {
        self.pending.notify_one();
        self.notify_pending.notify_one();
    }

    /// Awaits a store write that carries this outbox's entries and, once it committed, wakes
    /// the relay: writing to the outbox and waking the relay as one call.
    pub async fn commit<T, E>(
        &self,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let committed = write.await;
        if committed.is_ok() {
            self.notify();
        }
        committed
    }

    /// Starts delivering this table's outbox to `destination` until `shutdown`, working each
    /// partition only while holding its lease.
    pub fn spawn_relay(
        &self,
        table: Table,
        destination: Destination,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let (pending, gauges) = match destination {
            Destination::Audit(_) => (self.pending.clone(), self.gauges.clone()),
            Destination::Notification(_) => {
                (self.notify_pending.clone(), self.notify_gauges.clone())
            }
        };
        let relay = Relay {
            source: self.source.clone(),
            leases: Leases::new(table.clone(), Leases::replica_owner(&self.source)),
            prefix: destination.partition_prefix(),
            table,
            destination,
            pending,
            gauges,
            observed: None,
        };
        tokio::spawn(relay.run(shutdown))
    }
}

fn entry_write(prefix: &str, event: AuditEvent, traceparent: String) -> Write {
    // Time-ordered keys keep delivery roughly in production order within a partition.
    let sk = event.id.clone();
    let pk = partition(prefix, partition_index(&sk));
    let entry = OutboxEntry {
        event: Some(event),
        traceparent,
    };
    Write::put(
        NewItem::new(pk, sk, entry.encode_to_vec()),
        Condition::NotExists,
    )
}

/// The partition key of a destination's outbox partition `index`. Audit's partition 0 keeps
/// the name the single partition had, so events written before the outbox was partitioned
/// are still delivered.
fn partition(prefix: &str, index: u32) -> String {
    match index {
        0 => prefix.to_string(),
        i => format!("{prefix}#{i}"),
    }
}

/// Which partition an event goes to.
fn partition_index(event_id: &str) -> u32 {
    spread(event_id, PARTITIONS)
}

/// Which of `partitions` a key goes to: FNV-1a of the key, so the random tail of UUIDv7 ids
/// spreads keys evenly. For any queue that is worked partition by partition under leases.
pub fn spread(key: &str, partitions: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

/// How many events are waiting for audit-service (for tests and readiness).
pub async fn pending_count(table: &Table) -> Result<usize, StoreError> {
    pending_in(table, AUDIT_PREFIX).await
}

async fn pending_in(table: &Table, prefix: &str) -> Result<usize, StoreError> {
    let mut n = 0;
    for index in 0..PARTITIONS {
        let mut cursor = None;
        loop {
            let page = table
                .query(
                    Query::partition(partition(prefix, index))
                        .limit(1000)
                        .after(cursor),
                )
                .await?;
            n += page.items.len();
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    Ok(n)
}

struct Relay {
    /// The producing workload (the delivery spans' role).
    source: String,
    leases: Leases,
    /// The destination's partition prefix.
    prefix: &'static str,
    table: Table,
    destination: Destination,
    pending: Arc<Notify>,
    gauges: OutboxGauges,
    observed: Option<std::time::Instant>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("outbox store: {0}")]
    Store(#[from] StoreError),
    #[error("delivery: {0}")]
    Deliver(#[from] tonic::Status),
    #[error("outbox entry cannot be decoded: {0}")]
    Decode(#[from] prost::DecodeError),
}

fn backoff(attempt: u32) -> Duration {
    let exp = MIN_BACKOFF
        .saturating_mul(1u32 << attempt.min(10))
        .min(MAX_BACKOFF);
    // Full jitter: anywhere up to the exponential bound, so replicas do not retry in step.
    let millis = rand::rng().random_range(MIN_BACKOFF.as_millis() as u64..=exp.as_millis() as u64);
    Duration::from_millis(millis)
}

impl Relay {
    /// Sweeps every partition when this replica has written events (or after delivering or
    /// failing), and otherwise looks at one partition per idle tick in turn, so events a dead
    /// replica left behind are found within [`PARTITIONS`] ticks while an idle relay costs one
    /// query a tick.
    async fn run(mut self, shutdown: Shutdown) {
        let mut failures = 0u32;
        let mut sweep = true;
        let mut next_idle = rand::rng().random_range(0..PARTITIONS);
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let partitions: Vec<u32> = if sweep {
                let start = rand::rng().random_range(0..PARTITIONS);
                (0..PARTITIONS).map(|i| (start + i) % PARTITIONS).collect()
            } else {
                next_idle = (next_idle + 1) % PARTITIONS;
                vec![next_idle]
            };
            if self.observed.is_none_or(|at| at.elapsed() >= OBSERVE_EVERY) {
                self.observed = Some(std::time::Instant::now());
                if let Err(e) = self.observe().await {
                    tracing::debug!(error = %e, "outbox backlog not measured");
                }
            }
            // Shutdown does not wait for a delivery in flight: its events stay in the outbox
            // (delivery is at least once) and another replica or the next start sends them.
            let outcome = tokio::select! {
                r = self.deliver(partitions.into_iter()) => r,
                _ = shutdown.wait() => return,
            };
            let wait = match outcome {
                Ok(0) => {
                    failures = 0;
                    sweep = false;
                    IDLE_POLL
                }
                Ok(_) => {
                    failures = 0;
                    sweep = true;
                    continue;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    sweep = true;
                    let delay = backoff(failures);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox delivery failed");
                    delay
                }
            };
            tokio::select! {
                _ = self.pending.notified(), if failures == 0 => sweep = true,
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Measures the backlog: items per partition (up to [`OBSERVE_LIMIT`]) and the age of the
    /// oldest (each partition's first item, as keys are time-ordered).
    async fn observe(&self) -> Result<(), RelayError> {
        let mut pending = 0usize;
        let mut oldest: Option<std::time::SystemTime> = None;
        for index in 0..PARTITIONS {
            let page = self
                .table
                .query(Query::partition(partition(self.prefix, index)).limit(OBSERVE_LIMIT))
                .await?;
            pending += page.items.len();
            let first = page
                .items
                .first()
                .map(|item| OutboxEntry::decode(item.data.as_ref()))
                .transpose()?
                .and_then(|entry| entry.event?.occur_time)
                .and_then(|t| std::time::SystemTime::try_from(t).ok());
            if let Some(t) = first {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        self.gauges.pending.set(pending as i64);
        let age = oldest
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.gauges.oldest_age.set(age);
        Ok(())
    }

    /// Works each of `partitions` that has events and that no other replica is working;
    /// returns how many events it delivered.
    async fn deliver(
        &mut self,
        partitions: impl Iterator<Item = u32>,
    ) -> Result<usize, RelayError> {
        let mut delivered = 0;
        for index in partitions {
            let pk = partition(self.prefix, index);
            let first = self.table.query(Query::partition(&pk).limit(BATCH)).await?;
            if first.items.is_empty() {
                continue;
            }
            let lease_name = format!("outbox/{pk}");
            let Some(claim) = self.leases.try_claim(&lease_name, LEASE).await? else {
                continue;
            };
            let worked = self.drain_partition(&pk, first, &claim).await;
            if let Err(e) = self.leases.release(claim).await {
                tracing::debug!(error = %e, partition = %pk, "outbox lease not released; it will expire");
            }
            delivered += worked?;
        }
        Ok(delivered)
    }

    /// Delivers up to [`BATCHES_PER_CLAIM`] batches of one partition, starting with `page`.
    async fn drain_partition(
        &mut self,
        pk: &str,
        mut page: crate::store::Page,
        claim: &crate::lease::Claim,
    ) -> Result<usize, RelayError> {
        let mut delivered = 0;
        for _ in 0..BATCHES_PER_CLAIM {
            // Stop while a whole delivery still fits in the lease.
            if page.items.is_empty() || claim.remaining() <= APPEND_DEADLINE {
                break;
            }
            delivered += self.deliver_batch(&page).await?;
            page = self.table.query(Query::partition(pk).limit(BATCH)).await?;
        }
        Ok(delivered)
    }

    /// Delivers one page of events, then deletes them; returns how many it delivered.
    async fn deliver_batch(&mut self, page: &crate::store::Page) -> Result<usize, RelayError> {
        use opentelemetry::trace::TraceContextExt as _;
        let mut events = Vec::with_capacity(page.items.len());
        // The trace each event was produced in: the first is the delivery's parent, every
        // other one a link, so each producing trace leads to its delivery.
        let mut origins: Vec<opentelemetry::trace::SpanContext> = Vec::new();
        for item in &page.items {
            let entry = OutboxEntry::decode(item.data.as_ref())?;
            if let Some(origin) = crate::telemetry::span_context_of(&entry.traceparent)
                && !origins.iter().any(|o| o.trace_id() == origin.trace_id())
            {
                origins.push(origin);
            }
            if let Some(event) = entry.event {
                events.push(event);
            }
        }
        let span = tracing::info_span!(
            "outbox.deliver",
            otel.name = "outbox deliver",
            otel.kind = "producer",
            "ordermesh.role" = %self.source,
            destination = self.prefix,
            events = events.len()
        );
        let mut origins = origins.into_iter();
        if let Some(first) = origins.next() {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(first));
        }
        for other in origins {
            span.add_link(other);
        }
        async {
            self.destination.deliver(events).await?;
            let deletes = page
                .items
                .iter()
                .map(|i| Write::Delete {
                    pk: i.pk.clone(),
                    sk: i.sk.clone(),
                    condition: Condition::None,
                })
                .collect();
            self.table.write(deletes).await?;
            Ok(page.items.len())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_spread_over_every_partition() {
        let mut counts = [0usize; PARTITIONS as usize];
        for _ in 0..8_000 {
            counts[partition_index(&uuid::Uuid::now_v7().to_string()) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            assert!((700..=1300).contains(c), "partition {i} got {c} of 8000");
        }
        assert_eq!(
            partition(AUDIT_PREFIX, 0),
            "outbox",
            "the pre-partitioning key is partition 0"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d >= MIN_BACKOFF && d <= MAX_BACKOFF, "{d:?}");
        }
    }
}
