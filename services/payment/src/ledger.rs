//! Ledger rules: every movement is one transaction whose postings sum to zero, between a
//! user's wallet and a house account, and whose id is derived from its idempotency key so a
//! retried request can only ever find the first result.

use ordermesh_contracts::payment::{Posting, TransactionKind};
use ordermesh_platform::money::money;
use sha2::{Digest, Sha256};

pub fn wallet_account(user_id: &str, currency: &str) -> String {
    format!("wallets/{user_id}/{currency}")
}

/// Where money enters from outside (deposits).
pub fn funding_account(currency: &str) -> String {
    format!("accounts/funding/{currency}")
}

/// What orders earned (charges in, refunds out).
pub fn revenue_account(currency: &str) -> String {
    format!("accounts/revenue/{currency}")
}

/// The id of a movement: a hash of what it is and the caller's idempotency key, so the same
/// request always maps to the same movement.
pub fn movement_id(kind: TransactionKind, scope: &str, idempotency_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str_name().as_bytes());
    h.update(b"\0");
    h.update(scope.as_bytes());
    h.update(b"\0");
    h.update(idempotency_key.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A hash of the request's meaning, to refuse a reused key with a different request.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    hex::encode(&h.finalize()[..16])
}

/// The postings of a movement of `delta` (signed, wallet side) on a user's wallet.
pub fn postings(kind: TransactionKind, user_id: &str, currency: &str, delta: i64) -> Vec<Posting> {
    let house = match kind {
        TransactionKind::Deposit => funding_account(currency),
        _ => revenue_account(currency),
    };
    vec![
        Posting {
            account: wallet_account(user_id, currency),
            amount: Some(money(currency, delta)),
        },
        Posting {
            account: house,
            amount: Some(money(currency, -delta)),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_balance_and_ids_are_stable() {
        for (kind, delta) in [
            (TransactionKind::Deposit, 500),
            (TransactionKind::Charge, -300),
            (TransactionKind::Refund, 100),
        ] {
            let p = postings(kind, "u1", "EUR", delta);
            let sum: i64 = p
                .iter()
                .map(|p| p.amount.as_ref().unwrap().amount_minor)
                .sum();
            assert_eq!(sum, 0);
        }
        let a = movement_id(TransactionKind::Charge, "u1", "k1");
        assert_eq!(a, movement_id(TransactionKind::Charge, "u1", "k1"));
        assert_ne!(a, movement_id(TransactionKind::Charge, "u2", "k1"));
        assert_ne!(a, movement_id(TransactionKind::Deposit, "u1", "k1"));
    }
}
