//! How email and webhook deliveries go: `ordermesh_notification_emails_total` and
//! `ordermesh_webhook_deliveries_total`, by outcome (`sent`/`delivered`, `retried`, `failed`),
//! so an operator sees a mail relay or a customer's endpoint failing before anyone complains.

use ordermesh_platform::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    emails: Family<OutcomeLabels, Counter>,
    webhooks: Family<OutcomeLabels, Counter>,
}

impl DeliveryMetrics {
    pub fn registered(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.with_registry(|r| {
            r.register(
                "notification_emails",
                "Email attempts by outcome: sent, retried (will be tried again), failed (given up)",
                this.emails.clone(),
            );
            r.register(
                "webhook_deliveries",
                "Webhook delivery attempts by outcome: delivered, retried (will be tried again), failed (given up)",
                this.webhooks.clone(),
            );
        });
        this
    }

    pub fn email(&self, outcome: &str) {
        self.emails
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}
