//! Which domain events notify someone, whom, in which category, and what they are told.

use ordermesh_contracts::audit::AuditEvent;
use ordermesh_contracts::notification::Category;
use ordermesh_platform::money::format_amount;

/// Account actions that notify (the rest, orders and money, are also webhook event types).
const ACCOUNT_ACTIONS: &[&str] = &[
    "user.password_changed",
    "user.password_reset",
    "user.password_reset_requested",
];

/// Whether an event with `action` goes to notification-service (the outboxes' filter): it
/// makes a notification, a webhook delivery, or both.
pub fn notifies(action: &str) -> bool {
    ACCOUNT_ACTIONS.contains(&action) || crate::webhooks::EVENT_TYPES.contains(&action)
}

/// A link in an email: where the reader acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub label: String,
    /// Relative to the public base URL, e.g. `/reset-password?token=…`.
    pub path: String,
    /// Text the reader may need without following the link (a reset token).
    pub code: Option<String>,
}

/// What one event tells one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub user_id: String,
    pub category: Category,
    pub title: String,
    /// The in-app text; never secret.
    pub body: String,
    /// Only in the email: a link that carries a secret, or one that helps act on it.
    pub action: Option<Action>,
}

fn user_of(name: &str) -> Option<String> {
    name.strip_prefix("users/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
}

fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn amount(event: &AuditEvent, field: &str) -> Option<String> {
    let minor: i64 = event.attributes.get(field)?.parse().ok()?;
    let currency = event.attributes.get("currency")?;
    Some(format_amount(currency, minor))
}

/// Whom `event` concerns: an order's owner, the wallet's holder, the account.
pub fn owner_of(event: &AuditEvent) -> Option<String> {
    match event.action.split('.').next()? {
        "order" => user_of(event.attributes.get("owner")?),
        "payment" => user_of(&event.actor),
        "user" => user_of(&event.resource),
        _ => None,
    }
}

/// The notification `event` makes, if any.
pub fn draft(event: &AuditEvent) -> Option<Draft> {
    let order = || id_of(&event.resource).to_string();
    let (user, category, title, body, action) = match event.action.as_str() {
        "order.confirmed" | "order.cancelled" | "order.shipped" | "order.delivered" => {
            let user = owner_of(event)?;
            let total = amount(event, "total_minor")
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            let (title, body) = match event.action.as_str() {
                "order.confirmed" => (
                    "Order confirmed",
                    format!("Your order {}{total} is paid and confirmed.", order()),
                ),
                "order.cancelled" => (
                    "Order cancelled",
                    format!(
                        "Your order {}{total} was cancelled. Anything you paid for it is refunded to your wallet.",
                        order()
                    ),
                ),
                "order.shipped" => (
                    "Order shipped",
                    format!("Your order {} is on its way.", order()),
                ),
                _ => (
                    "Order delivered",
                    format!("Your order {} was delivered.", order()),
                ),
            };
            let action = Some(Action {
                label: "View the order".into(),
                path: format!("/orders/{}", order()),
                code: None,
            });
            (user, Category::Orders, title, body, action)
        }
        "payment.deposited" => {
            let user = owner_of(event)?;
            let money = amount(event, "amount_minor")?;
            (
                user,
                Category::Payments,
                "Deposit received",
                format!("{money} was added to your wallet."),
                None,
            )
        }
        "payment.refunded" => {
            let user = owner_of(event)?;
            let money = amount(event, "amount_minor")?;
            let about = event
                .attributes
                .get("order")
                .map(|o| format!(" for order {}", id_of(o)))
                .unwrap_or_default();
            (
                user,
                Category::Payments,
                "Refund received",
                format!("{money} was refunded to your wallet{about}."),
                None,
            )
        }
        "user.password_changed" | "user.password_reset" => {
            let user = owner_of(event)?;
            (
                user,
                Category::Security,
                "Your password was changed",
                "Your password was changed and every other session was signed out. If this was not you, reset your password now, then review your API keys and webhook endpoints: they are not ended by a password change.".to_string(),
                None,
            )
        }
        "user.password_reset_requested" => {
            let user = owner_of(event)?;
            // The token travels only in the email; without it (an event replayed from the
            // audit trail, say) there is nothing to send.
            let token = event.attributes.get("reset_token")?.clone();
            (
                user,
                Category::Security,
                "Password reset requested",
                "Someone asked to reset your password. The link in the email works once, for 30 minutes. If this was not you, ignore it.".to_string(),
                Some(Action {
                    label: "Choose a new password".into(),
                    path: format!("/reset-password?token={token}"),
                    code: Some(token),
                }),
            )
        }
        _ => return None,
    };
    Some(Draft {
        user_id: user,
        category,
        title: title.to_string(),
        body,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, actor: &str, resource: &str, attrs: &[(&str, &str)]) -> AuditEvent {
        AuditEvent {
            id: "e1".into(),
            actor: actor.into(),
            resource: resource.into(),
            action: action.into(),
            source: "test".into(),
            occur_time: None,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_order_event_goes_to_the_order_owner_not_the_actor() {
        let e = event(
            "order.shipped",
            "users/admin1",
            "orders/o9",
            &[
                ("owner", "users/u1"),
                ("total_minor", "1250"),
                ("currency", "EUR"),
            ],
        );
        let d = draft(&e).expect("notifies");
        assert_eq!(d.user_id, "u1");
        assert_eq!(d.category, Category::Orders);
        assert!(d.body.contains("o9"), "{}", d.body);
        let e = event(
            "order.confirmed",
            "order-service",
            "orders/o9",
            &[
                ("owner", "users/u1"),
                ("total_minor", "1250"),
                ("currency", "EUR"),
            ],
        );
        assert!(draft(&e).unwrap().body.contains("12.50 EUR"));
    }

    #[test]
    fn money_and_security_events_name_their_user() {
        let e = event(
            "payment.deposited",
            "users/u2",
            "transactions/t1",
            &[("amount_minor", "5000"), ("currency", "USD")],
        );
        let d = draft(&e).unwrap();
        assert_eq!((d.user_id.as_str(), d.category), ("u2", Category::Payments));
        assert!(d.body.contains("50.00 USD"));
        let d = draft(&event("user.password_changed", "users/u3", "users/u3", &[])).unwrap();
        assert_eq!((d.user_id.as_str(), d.category), ("u3", Category::Security));
    }

    #[test]
    fn the_reset_token_is_in_the_email_link_only() {
        let e = event(
            "user.password_reset_requested",
            "users/u4",
            "users/u4",
            &[("reset_token", "omr_secret")],
        );
        let d = draft(&e).unwrap();
        assert!(!d.body.contains("omr_secret"));
        let action = d.action.unwrap();
        assert!(action.path.ends_with("token=omr_secret"));
        assert_eq!(action.code.as_deref(), Some("omr_secret"));
        let without = event("user.password_reset_requested", "users/u4", "users/u4", &[]);
        assert!(draft(&without).is_none());
    }

    #[test]
    fn other_events_and_unusable_ones_notify_nobody() {
        let created = event(
            "order.created",
            "users/u1",
            "orders/o1",
            &[("owner", "users/u1")],
        );
        assert!(draft(&created).is_none(), "no notification; webhooks only");
        assert_eq!(owner_of(&created).as_deref(), Some("u1"));
        assert!(draft(&event("order.shipped", "users/a", "orders/o1", &[])).is_none());
        assert!(draft(&event("payment.deposited", "users/u1", "t", &[])).is_none());
        assert!(!notifies("user.logged_in"));
        assert!(ACCOUNT_ACTIONS.iter().all(|a| notifies(a)));
        assert!(notifies("order.created") && notifies("payment.refunded"));
    }
}
