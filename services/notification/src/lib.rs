//! notification-service: tells users what happened to their orders, money and account, by
//! email and in the app. Fed by the services' outboxes; see `events.rs` for which events
//! notify whom, `inbox.rs` for what is kept, `dispatcher.rs` for how email leaves.

pub mod delivery_metrics;
pub mod dispatcher;
pub mod events;
pub mod grpc;
pub mod inbox;
pub mod leased_queue;
pub mod mail;
pub mod webhook_sender;
pub mod webhooks;

pub use delivery_metrics::DeliveryMetrics;
pub use dispatcher::Dispatcher;
pub use events::notifies;
pub use grpc::{NotificationServer, Parts, Wakes};
pub use inbox::Inbox;
pub use mail::{MailSettings, MailTransport, Mailer, SmtpSecurity, SmtpSettings};
pub use webhook_sender::{WebhookSender, WebhookSettings};
pub use webhooks::Webhooks;
