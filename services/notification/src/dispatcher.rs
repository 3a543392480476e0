//! The email queue and its sender. An email is queued in the same write as its notification,
//! so none is lost; a sender in every replica works the queue's partitions under leases, one
//! replica per partition at a time. A failed attempt is retried with exponential back-off and
//! jitter until `max_attempts`, then the email is given up as FAILED; a relay's permanent
//! refusal (5xx) fails it at once. Sending is at least once: a crash between the relay's
//! acceptance and the queue's delete sends that email again on the next round.

use std::sync::Arc;

use ordermesh_contracts::notification::EmailState;
use ordermesh_platform::clock::unix_millis;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::store::{Item, StoreError, Write};
use prost::Message;
use tokio::sync::Notify;

use crate::delivery_metrics::DeliveryMetrics;
use crate::inbox::{Inbox, InboxError, Stored};
use crate::leased_queue::{
    LeasedQueue, Worker, backoff, enqueue as enqueue_item, id_of, requeue, take,
};
use crate::mail::{Mailer, Rendered};

/// Partitions of the email queue.
pub const MAIL_PARTITIONS: u32 = 4;

/// An email waiting to be sent.
#[derive(Clone, PartialEq, Message)]
pub struct QueuedEmail {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(string, tag = "2")]
    pub to: String,
    #[prost(string, tag = "3")]
    pub subject: String,
    #[prost(string, tag = "4")]
    pub text: String,
    #[prost(string, tag = "5")]
    pub html: String,
    #[prost(uint32, tag = "6")]
    pub attempts: u32,
    /// Not sent before this (unix ms): the back-off after a failed attempt.
    #[prost(int64, tag = "7")]
    pub not_before_ms: i64,
    #[prost(string, tag = "8")]
    pub last_error: String,
}

const MAIL_QUEUE: &str = "mail";

/// The write that queues notification `id`'s email; put it in the notification's batch.
pub fn enqueue(id: &str, user_id: &str, to: &str, email: Rendered) -> Write {
    let queued = QueuedEmail {
        user_id: user_id.to_string(),
        to: to.to_string(),
        subject: email.subject,
        text: email.text,
        html: email.html,
        ..Default::default()
    };
    enqueue_item(MAIL_QUEUE, MAIL_PARTITIONS, id, 0, queued.encode_to_vec())
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error("queued email is unreadable: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

/// Sends queued emails: the [`LeasedQueue`] worker of the `mail` queue.
pub struct Dispatcher {
    inbox: Inbox,
    mailer: Mailer,
    metrics: DeliveryMetrics,
}

impl Dispatcher {
    /// The email queue, worked until shutdown; `wake` is notified when an email is queued.
    pub fn queue(
        inbox: Inbox,
        mailer: Mailer,
        metrics: DeliveryMetrics,
        wake: Arc<Notify>,
    ) -> LeasedQueue<Self> {
        let table = inbox.table().clone();
        LeasedQueue::new(
            table,
            workloads::NOTIFICATION,
            MAIL_QUEUE,
            MAIL_PARTITIONS,
            Self {
                inbox,
                mailer,
                metrics,
            },
            wake,
        )
    }
}

impl Worker for Dispatcher {
    type Error = DispatchError;

    async fn attempt(&self, item: &Item) -> Result<(), DispatchError> {
        self.send(item).await
    }
}

impl Dispatcher {
    /// Sends one queued email; takes it off the queue, or moves it to its next attempt.
    async fn send(&self, item: &Item) -> Result<(), DispatchError> {
        let mut queued = QueuedEmail::decode(item.data.as_ref())?;
        let id = id_of(item);
        let email = Rendered {
            subject: queued.subject.clone(),
            text: queued.text.clone(),
            html: queued.html.clone(),
        };
        let sent = self.mailer.send(id, &queued.to, &email).await;
        queued.attempts += 1;
        let settings = self.mailer.settings();
        match sent {
            Ok(()) => {
                self.finish(item, &queued, EmailState::Sent).await?;
                self.metrics.email("sent");
                tracing::info!(notification = %id, attempts = queued.attempts, "email sent");
                Ok(())
            }
            Err(e) if e.is_permanent() || queued.attempts >= settings.max_attempts => {
                queued.last_error = e.to_string();
                tracing::warn!(notification = %id, attempts = queued.attempts, error = %e, "email given up");
                self.finish(item, &queued, EmailState::Failed).await?;
                self.metrics.email("failed");
                Ok(())
            }
            Err(e) => {
                let delay = backoff(settings.retry_base, settings.retry_max, queued.attempts);
                queued.last_error = e.to_string();
                queued.not_before_ms = unix_millis() + delay.as_millis() as i64;
                tracing::info!(notification = %id, attempts = queued.attempts, retry_in_ms = delay.as_millis() as u64, error = %e, "email not sent; will retry");
                self.metrics.email("retried");
                let retry = requeue(item, queued.not_before_ms, queued.encode_to_vec());
                match self.inbox.table().write(retry.to_vec()).await {
                    Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Takes the email off the queue and records its final state on the notification, in
    /// one write (so the history never says PENDING about an email that left the queue).
    async fn finish(
        &self,
        item: &Item,
        queued: &QueuedEmail,
        state: EmailState,
    ) -> Result<(), DispatchError> {
        let id = id_of(item);
        for _ in 0..8 {
            let mut writes = vec![take(item)];
            if let Some((mut stored, version)) = self.inbox.get(&queued.user_id, id).await? {
                set_email_state(&mut stored, state);
                writes.push(Inbox::replace(&queued.user_id, id, &stored, version));
            }
            match self.inbox.table().write(writes).await {
                Ok(_) => return Ok(()),
                // The queue item changed under us: another replica took it over.
                Err(StoreError::ConditionFailed { index: 0, .. }) => return Ok(()),
                // The notification changed (marked read), or a transaction collided: again.
                Err(StoreError::ConditionFailed { .. } | StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(InboxError::Contended.into())
    }
}

fn set_email_state(stored: &mut Stored, state: EmailState) {
    if let Some(n) = stored.notification.as_mut() {
        n.email_state = state as i32;
    }
}
