//! Sends queued webhook deliveries: a POST of the event's JSON, signed for the endpoint,
//! delivered at least once with retries and exponential back-off; a 2xx answer is success
//! (the receiver dedupes on `webhook-id`). An endpoint that fails [`WebhookSettings::disable_after`]
//! attempts in a row is disabled; its pending deliveries then fail until a re-send enables it.
//!
//! Requests never reach inside the cluster outside local runs: names resolve through a
//! resolver that drops every private, loopback and link-local address (so DNS cannot point a
//! public-looking name inside), literal addresses are checked the same way, and redirects are
//! not followed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::notification::DeliveryState;
use ordermesh_platform::clock::{unix_millis, unix_seconds};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::store::{Condition, Item, NewItem, StoreError, Write};
use prost::Message;
use tokio::sync::Notify;

use crate::delivery_metrics::DeliveryMetrics;
use crate::leased_queue::{LeasedQueue, Worker, backoff, requeue as requeue_item, take};
use crate::webhooks::{
    DeliveryRecord, HOOK_QUEUE, QUEUE_PARTITIONS, QueuedDelivery, Webhooks, check_url, is_public,
    log_pk, sign,
};

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Local runs: http and private targets allowed.
    pub allow_private: bool,
    /// Attempts per delivery before it is given up.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Failed attempts in a row after which an endpoint is disabled.
    pub disable_after: i32,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            disable_after: 50,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored webhook data is unreadable: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error(transparent)]
    Webhook(#[from] crate::webhooks::WebhookError),
}

/// Resolves names to public addresses only (unless private targets are allowed).
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub struct WebhookSender {
    webhooks: Webhooks,
    client: reqwest::Client,
    settings: WebhookSettings,
    metrics: DeliveryMetrics,
    /// For the audit trail: an endpoint disabled after failures.
    outbox: Outbox,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Failed { status: u16, error: String },
}

impl WebhookSender {
    /// The delivery queue, worked until shutdown; `wake` is notified when one is queued.
    pub fn queue(
        webhooks: Webhooks,
        settings: WebhookSettings,
        metrics: DeliveryMetrics,
        outbox: Outbox,
        wake: Arc<Notify>,
    ) -> Result<LeasedQueue<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve names itself, past the resolver.
            .no_proxy()
            .timeout(settings.timeout)
            .user_agent("ordermesh-webhooks/1")
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: settings.allow_private,
            }))
            .build()?;
        let table = webhooks.table().clone();
        Ok(LeasedQueue::new(
            table,
            workloads::NOTIFICATION,
            HOOK_QUEUE,
            QUEUE_PARTITIONS,
            Self {
                webhooks,
                client,
                settings,
                metrics,
                outbox,
            },
            wake,
        ))
    }

    async fn post(&self, url: &str, id: &str, secret: &str, body: &str) -> Outcome {
        let failed = |error: String| Outcome::Failed { status: 0, error };
        let url = match check_url(url, self.settings.allow_private) {
            Ok(u) => u,
            Err(e) => return failed(format!("the URL {e}")),
        };
        let timestamp = unix_seconds();
        let signature = match sign(secret, id, timestamp, body) {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => Outcome::Delivered(res.status().as_u16()),
            Ok(res) => Outcome::Failed {
                status: res.status().as_u16(),
                error: format!("the endpoint answered {}", res.status()),
            },
            // One text for every failure to connect: the owner reads it, and it must not tell
            // an internal name that exists from one that does not.
            Err(e) if e.is_timeout() => failed("the endpoint did not answer in time".into()),
            Err(_) => failed("the endpoint could not be reached".into()),
        }
    }

    /// Records an attempt on the endpoint: success clears its failure count, a failure adds
    /// one and disables it at the threshold. Best effort under contention.
    async fn count(&self, endpoint_id: &str, delivered: bool) -> Result<(), SendError> {
        for _ in 0..4 {
            let Some((mut endpoint, version)) = self.webhooks.endpoint(endpoint_id).await? else {
                return Ok(());
            };
            let mut writes = Vec::with_capacity(3);
            if delivered {
                if endpoint.consecutive_failures == 0 {
                    return Ok(());
                }
                endpoint.consecutive_failures = 0;
            } else {
                endpoint.consecutive_failures += 1;
                if endpoint.consecutive_failures >= self.settings.disable_after
                    && !endpoint.disabled
                {
                    endpoint.disabled = true;
                    tracing::warn!(endpoint = %endpoint.id, failures = endpoint.consecutive_failures, "webhook endpoint disabled");
                    let mut event = self.outbox.event(
                        &format!("workloads/{}", workloads::NOTIFICATION),
                        "webhook_endpoint.disabled",
                        &format!("webhook-endpoints/{}", endpoint.id),
                    );
                    event.attributes.insert(
                        "consecutive_failures".into(),
                        endpoint.consecutive_failures.to_string(),
                    );
                    writes.extend(self.outbox.writes(event));
                }
            }
            writes.insert(0, Webhooks::put_endpoint(&endpoint, version));
            match self
                .outbox
                .commit(self.webhooks.table().write(writes))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Takes the item off the queue and writes the delivery's new state, in one write.
    async fn settle(
        &self,
        item: &Item,
        mut log: DeliveryRecord,
        log_version: u64,
        requeue: Option<QueuedDelivery>,
    ) -> Result<(), SendError> {
        log.update_ms = unix_millis();
        let mut writes = vec![Write::put(
            NewItem::new(
                log_pk(&log.endpoint_id),
                log.id.clone(),
                log.encode_to_vec(),
            ),
            Condition::Version(log_version),
        )];
        match requeue {
            Some(q) => writes.extend(requeue_item(item, q.not_before_ms, q.encode_to_vec())),
            None => writes.push(take(item)),
        }
        match self.webhooks.table().write(writes).await {
            // Another replica or a re-send moved it meanwhile: theirs stands.
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Worker for WebhookSender {
    type Error = SendError;

    async fn attempt(&self, item: &Item) -> Result<(), SendError> {
        let mut queued = QueuedDelivery::decode(item.data.as_ref())?;
        let delivery = self
            .webhooks
            .delivery(&queued.endpoint_id, &queued.delivery_id)
            .await?;
        // Gone, or settled by another round: nothing to send.
        let Some((mut log, log_version)) =
            delivery.filter(|(d, _)| d.state == DeliveryState::Pending as i32)
        else {
            self.webhooks.table().write(vec![take(item)]).await.ok();
            return Ok(());
        };
        let endpoint = self.webhooks.endpoint(&queued.endpoint_id).await?;
        let endpoint = match endpoint {
            Some((e, _)) if !e.disabled => e,
            gone_or_disabled => {
                log.state = DeliveryState::Failed as i32;
                log.last_error = if gone_or_disabled.is_some() {
                    "the endpoint is disabled after repeated failures; re-send to enable it"
                } else {
                    "the endpoint was deleted"
                }
                .into();
                self.settle(item, log, log_version, None).await?;
                return Ok(());
            }
        };
        let outcome = self
            .post(&endpoint.url, &log.id, &endpoint.secret, &log.payload)
            .await;
        queued.attempts += 1;
        log.attempts += 1;
        match outcome {
            Outcome::Delivered(status) => {
                log.state = DeliveryState::Succeeded as i32;
                log.last_status_code = i32::from(status);
                log.last_error.clear();
                self.settle(item, log, log_version, None).await?;
                self.count(&endpoint.id, true).await?;
                self.metrics.webhook("delivered");
                Ok(())
            }
            Outcome::Failed { status, error } => {
                log.last_status_code = i32::from(status);
                log.last_error = error;
                self.count(&endpoint.id, false).await?;
                if queued.attempts as u32 >= self.settings.max_attempts {
                    self.metrics.webhook("failed");
                    log.state = DeliveryState::Failed as i32;
                    self.settle(item, log, log_version, None).await?;
                    return Ok(());
                }
                self.metrics.webhook("retried");
                let delay = backoff(
                    self.settings.retry_base,
                    self.settings.retry_max,
                    queued.attempts as u32,
                );
                queued.not_before_ms = unix_millis() + delay.as_millis() as i64;
                self.settle(item, log, log_version, Some(queued)).await?;
                Ok(())
            }
        }
    }
}
