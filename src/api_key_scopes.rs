//! What an API key may do, derived from the contracts: read or write per resource family.
//! A method's family is the first word of its primary HTTP binding's path after the version
//! (`/v1/orders/{…}` → `orders`, `/v1/{name=users/*}` → `users`, `/v1/wallet/deposits` →
//! `wallet`); GET reads, every other method writes. A new annotated RPC gets its scope with no
//! hand-kept list.

use std::sync::OnceLock;

use crate::descriptors::{MethodInfo, methods};
use crate::google::api::http_rule::Pattern;
use crate::options::Audience;

/// The scope that lets a key reach admin methods (for an admin owner only).
pub const ADMIN_SCOPE: &str = "admin";

/// Families no key may be given: a key cannot mint or revoke keys (it would widen itself),
/// nor subscribe webhooks (they carry order and wallet events whatever the key's own scopes).
/// An owner manages both signed in.
pub const NOT_FOR_KEYS: &[&str] = &["api-keys", "webhook-endpoints"];

/// Whether a key may ever hold `scope` (see [`NOT_FOR_KEYS`]).
pub fn grantable(scope: &str) -> bool {
    !NOT_FOR_KEYS.contains(&scope.split(':').next().unwrap_or_default())
}

/// The scope a key needs for `method`: `{family}:read` or `{family}:write`. `None` for a
/// method with no HTTP binding (not reachable from outside).
pub fn scope_of(method: &MethodInfo) -> Option<String> {
    let (path, read) = match method.http.as_ref()?.pattern.as_ref()? {
        Pattern::Get(p) => (p, true),
        Pattern::Post(p) | Pattern::Put(p) | Pattern::Delete(p) | Pattern::Patch(p) => (p, false),
        Pattern::Custom(c) => (&c.path, false),
    };
    let family = family_of(path)?;
    Some(format!("{family}:{}", if read { "read" } else { "write" }))
}

/// The resource family of a binding's path template.
pub fn family_of(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next()?;
    let word = if first.starts_with('v') && first[1..].chars().all(|c| c.is_ascii_digit()) {
        segments.next()?
    } else {
        first
    };
    // `{name=users/*}` names its family inside the variable.
    let word = match word.strip_prefix('{') {
        Some(var) => var.split_once('=')?.1,
        None => word,
    };
    let word = word.split([':', '/', '}']).next()?;
    (!word.is_empty() && !word.contains('*')).then(|| word.to_string())
}

/// Every scope a key may be given: those of the methods a signed-in user or an admin can
/// call, but for [`NOT_FOR_KEYS`], and [`ADMIN_SCOPE`]; sorted.
pub fn all() -> &'static [String] {
    static ALL: OnceLock<Vec<String>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut scopes: Vec<String> = methods()
            .iter()
            .filter(|m| matches!(m.audience, Audience::User | Audience::Admin))
            .filter_map(scope_of)
            .filter(|s| grantable(s))
            .collect();
        scopes.push(ADMIN_SCOPE.to_string());
        scopes.sort();
        scopes.dedup();
        scopes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::method_by_path;

    fn scope(path: &str) -> String {
        scope_of(method_by_path(path).expect("method")).expect("bound")
    }

    #[test]
    fn families_come_from_the_bindings() {
        assert_eq!(
            scope("/ordermesh.order.v1.OrderService/CreateOrder"),
            "orders:write"
        );
        assert_eq!(
            scope("/ordermesh.order.v1.OrderService/ListOrders"),
            "orders:read"
        );
        assert_eq!(
            scope("/ordermesh.order.v1.OrderService/CancelOrder"),
            "orders:write"
        );
        assert_eq!(
            scope("/ordermesh.payment.v1.PaymentService/Deposit"),
            "wallet:write"
        );
        assert_eq!(
            scope("/ordermesh.user.v1.UserService/GetUser"),
            "users:read"
        );
        assert_eq!(
            scope("/ordermesh.user.v1.UserService/UpdateUser"),
            "users:write"
        );
        assert_eq!(
            scope("/ordermesh.notification.v1.NotificationService/MarkNotificationsRead"),
            "notifications:write"
        );
        assert_eq!(
            family_of("/v1/{preferences.name=users/*/notification-preferences}").as_deref(),
            Some("users")
        );
        assert_eq!(family_of("/v1/audit:verify").as_deref(), Some("audit"));
        assert_eq!(family_of("/v1/{name=*}"), None);
    }

    #[test]
    fn the_scope_list_covers_every_outside_method_and_admin() {
        let all = all();
        for m in methods() {
            if matches!(m.audience, Audience::User | Audience::Admin) && m.http.is_some() {
                let s = scope_of(m).expect("a scope");
                assert!(all.contains(&s) || !grantable(&s), "{s}");
            }
        }
        assert!(all.iter().any(|s| s == ADMIN_SCOPE));
        assert!(
            all.iter().any(|s| s == "products:write"),
            "admin catalog methods: {all:?}"
        );
        assert!(
            !all.iter().any(|s| s.starts_with("auth:")),
            "public methods need no key"
        );
        assert!(
            !all.iter().any(|s| !grantable(s)),
            "keys neither mint keys nor subscribe webhooks: {all:?}"
        );
        assert!(!grantable("api-keys:write") && !grantable("webhook-endpoints:read"));
    }
}
