//! Account rules: what a valid email, display name and password are, and password hashing
//! with argon2id.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use ordermesh_platform::status::Violations;

pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 128;
pub const MAX_EMAIL: usize = 254;
pub const MAX_DISPLAY_NAME: usize = 80;

/// Lower-cases and trims an email, or says what is wrong with it.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("is required");
    }
    if email.len() > MAX_EMAIL {
        return Err("is longer than 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("is not an email address");
    };
    let valid_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
    };
    if local.is_empty()
        || local.len() > 64
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !valid_chars(local)
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err("is not an email address");
    }
    Ok(email)
}

pub fn check_display_name(v: &mut Violations, field: &str, name: &str) {
    let trimmed = name.trim();
    v.check(!trimmed.is_empty(), field, "is required");
    v.check(
        trimmed.chars().count() <= MAX_DISPLAY_NAME,
        field,
        format!("is longer than {MAX_DISPLAY_NAME} characters"),
    );
    v.check(
        !trimmed.chars().any(char::is_control),
        field,
        "contains control characters",
    );
}

pub fn check_password(v: &mut Violations, password: &str, email: &str) {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        v.add(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        );
    } else if n > MAX_PASSWORD {
        v.add(
            "password",
            format!("must be at most {MAX_PASSWORD} characters"),
        );
    } else if password
        .chars()
        .all(|c| c == password.chars().next().unwrap_or(c))
    {
        v.add("password", "must not repeat one character");
    } else if !email.is_empty() && password.to_lowercase().contains(&email.to_lowercase()) {
        v.add("password", "must not contain the email address");
    }
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// An argon2id PHC string for `password` with a fresh salt (the crate's recommended cost).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h: PasswordHash| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches `phc`. An unparsable hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).ok().is_some_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Spends the same work as a real verification, for logins with an unknown email, so timing
/// does not tell which emails have accounts.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY
        .get_or_init(|| hash_password("not a real password, only spends time").unwrap_or_default());
    let _ = verify_password(password, phc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@ex..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_policy() {
        let check = |pw: &str| {
            let mut v = Violations::new();
            check_password(&mut v, pw, "ada@example.com");
            v.is_empty()
        };
        assert!(check("correct horse battery"));
        assert!(!check("short"));
        assert!(!check("aaaaaaaaaaaa"));
        assert!(!check("my ada@example.com pw"));
        assert!(!check(&"x1".repeat(100)));
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "fresh salt each time");
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("wrong horse battery", &a));
        assert!(!verify_password("anything", "not a hash"));
    }
}
