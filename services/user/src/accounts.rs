//! Accounts: what a valid email, display name and password are, password hashing with
//! argon2id, and the account operations (registration, sign-in checks, profiles, roles).

use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use ordermesh_contracts::user::revocation::Kind;
use ordermesh_platform::clock::{timestamp, unix_millis};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::status::Violations;
use ordermesh_platform::user_context::{ROLE_ADMIN, ROLE_USER};

use crate::error::{UserError, checked};
use crate::login_throttle::{LoginThrottle, ThrottleSettings};
use crate::password_resets::PasswordResets;
use crate::revocations;
use crate::store::{UserRecord, UserStore};

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

/// Password hashing is CPU- and memory-hard (argon2id takes ~19 MiB per hash), so at most
/// one runs per core: a burst of logins queues instead of taking gigabytes.
static PASSWORD_WORK: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });

async fn password_work<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, UserError> {
    let _permit = PASSWORD_WORK
        .acquire()
        .await
        .map_err(|_| UserError::ShuttingDown)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| UserError::Internal("worker failed"))
}

async fn hashed(password: &str) -> Result<String, UserError> {
    let pw = password.to_string();
    password_work(move || hash_password(&pw))
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            UserError::Internal("password hashing failed")
        })
}

/// The accounts: registration, sign-in checks, profiles and roles. Every change records an
/// audit event in the same write.
#[derive(Clone)]
pub struct Accounts {
    store: UserStore,
    outbox: Outbox,
    throttle: LoginThrottle,
    resets: PasswordResets,
    access_ttl: Duration,
}

impl Accounts {
    /// `access_ttl`: how long an access token lives, so a role change revokes the user's
    /// tokens issued before it for as long as one could still be presented.
    pub fn new(store: UserStore, outbox: Outbox, access_ttl: Duration) -> Self {
        Self {
            throttle: LoginThrottle::new(store.table().clone(), ThrottleSettings::default()),
            resets: PasswordResets::new(store.table().clone()),
            store,
            outbox,
            access_ttl,
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// A new account with the user role.
    pub async fn register(
        &self,
        email: &str,
        display_name: &str,
        password: &str,
    ) -> Result<UserRecord, UserError> {
        let mut v = Violations::new();
        let email = normalize_email(email).unwrap_or_else(|d| {
            v.add("email", d);
            String::new()
        });
        check_display_name(&mut v, "display_name", display_name);
        check_password(&mut v, password, &email);
        checked(v)?;
        let record = self
            .create(email, display_name.trim(), password, &[ROLE_USER])
            .await?;
        Ok(record)
    }

    async fn create(
        &self,
        email: String,
        display_name: &str,
        password: &str,
        roles: &[&str],
    ) -> Result<UserRecord, UserError> {
        let id = uuid::Uuid::now_v7().to_string();
        let record = UserRecord {
            id: id.clone(),
            email,
            display_name: display_name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            password_hash: hashed(password).await?,
            create_time: Some(timestamp()),
            update_time: Some(timestamp()),
            sessions_not_before_ms: 0,
        };
        let actor = if roles.contains(&ROLE_ADMIN) {
            format!("workloads/{}", workloads::USER)
        } else {
            format!("users/{id}")
        };
        let event = self
            .outbox
            .event(&actor, "user.registered", &format!("users/{id}"));
        self.outbox
            .commit(self.store.create(&record, self.outbox.writes(event)))
            .await?;
        Ok(record)
    }

    /// Creates an account with the admin role unless one exists for `email`; returns whether
    /// it was created. Used by `ordermesh up` on first run.
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<bool, UserError> {
        let email = normalize_email(email).map_err(|d| UserError::invalid("email", d))?;
        if self.store.find_by_email(&email).await?.is_some() {
            return Ok(false);
        }
        self.create(email, "Administrator", password, &[ROLE_USER, ROLE_ADMIN])
            .await?;
        Ok(true)
    }

    /// The account `email` and `password` prove, with failed attempts throttled per account
    /// (whether or not it exists) and recorded for audit.
    pub async fn authenticate(&self, email: &str, password: &str) -> Result<UserRecord, UserError> {
        let mut v = Violations::new();
        let email = normalize_email(email).unwrap_or_else(|d| {
            v.add("email", d);
            String::new()
        });
        v.check(!password.is_empty(), "password", "is required");
        v.check(
            password.len() <= 4 * MAX_PASSWORD,
            "password",
            "is too long",
        );
        checked(v)?;
        // Locked the same way whether or not the account exists, before any password work.
        if let Some(wait) = self.throttle.locked_for(&email).await? {
            return Err(UserError::Throttled(wait));
        }
        let found = self.store.find_by_email(&email).await?;
        let pw = password.to_string();
        let user = match found {
            None => {
                password_work(move || verify_against_nothing(&pw)).await?;
                None
            }
            Some((user, _)) => {
                let hash = user.password_hash.clone();
                password_work(move || verify_password(&pw, &hash))
                    .await?
                    .then_some(user)
            }
        };
        let Some(user) = user else {
            if let Err(e) = self.throttle.failed(&email).await {
                tracing::warn!(error = %e, "could not count a failed sign-in");
            }
            let event = self
                .outbox
                .event("anonymous", "user.login_failed", "users/unknown");
            self.outbox
                .commit(self.store.record(self.outbox.writes(event)))
                .await?;
            return Err(UserError::BadCredentials);
        };
        if let Err(e) = self.throttle.succeeded(&email).await {
            tracing::warn!(error = %e, "could not clear failed sign-ins");
        }
        Ok(user)
    }

    /// Sets a new password once `current` proves the account (failed proofs count towards the
    /// same lock as failed sign-ins). Every session opened before ends: its refresh token is
    /// refused from now on, and its access tokens once the gateway follows the revocation.
    pub async fn change_password(
        &self,
        id: &str,
        current: &str,
        new: &str,
    ) -> Result<UserRecord, UserError> {
        let (mut record, version) = self.store.get(id).await?.ok_or(UserError::NotFound)?;
        let mut v = Violations::new();
        check_password(&mut v, new, &record.email);
        v.check(
            new != current,
            "new_password",
            "must differ from the current password",
        );
        checked(v)?;
        if let Some(wait) = self.throttle.locked_for(&record.email).await? {
            return Err(UserError::Throttled(wait));
        }
        let (pw, hash) = (current.to_string(), record.password_hash.clone());
        if !password_work(move || verify_password(&pw, &hash)).await? {
            if let Err(e) = self.throttle.failed(&record.email).await {
                tracing::warn!(error = %e, "could not count a failed password proof");
            }
            return Err(UserError::invalid(
                "current_password",
                "is not the account's password",
            ));
        }
        record.password_hash = hashed(new).await?;
        record.update_time = Some(timestamp());
        record.sessions_not_before_ms = unix_millis();
        let who = format!("users/{id}");
        let event = self.outbox.event(&who, "user.password_changed", &who);
        self.update_revoking_tokens(record, version, event).await
    }

    /// Starts a reset for the account with `email`, if there is one and it has not had too
    /// many reset emails lately: a single-use token, stored hashed, goes to notification-service
    /// (only there) in the same write as the `user.password_reset_requested` event. Says
    /// nothing about whether the account exists.
    pub async fn request_password_reset(&self, email: &str) -> Result<(), UserError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(());
        };
        let Some((record, _)) = self.store.find_by_email(&email).await? else {
            return Ok(());
        };
        if !self.resets.admit(&record.id).await? {
            tracing::info!(user = %record.id, "password reset requests throttled");
            return Ok(());
        }
        let (token, stored) = self.resets.issue(&record.id);
        let who = format!("users/{}", record.id);
        let event = self
            .outbox
            .event(&who, "user.password_reset_requested", &who);
        let private = [("reset_token".to_string(), token)].into_iter().collect();
        let mut writes = self.outbox.writes_with_private(event, private);
        writes.push(stored);
        self.outbox.commit(self.store.record(writes)).await?;
        Ok(())
    }

    /// Sets a new password with a reset token: the token is used up in the same write, and
    /// every session of the user ends as on a password change. A used, expired or unknown
    /// token (or one issued before the password last changed) is one and the same error.
    pub async fn reset_password(&self, token: &str, new: &str) -> Result<UserRecord, UserError> {
        let refused = || {
            UserError::invalid(
                "token",
                "is not a valid reset token: it is unknown, used or expired",
            )
        };
        let found = self.resets.find(token).await?.ok_or_else(refused)?;
        let (mut record, version) = self.store.get(&found.user_id).await?.ok_or_else(refused)?;
        if found.issued_ms < record.sessions_not_before_ms {
            return Err(refused());
        }
        let mut v = Violations::new();
        check_password(&mut v, new, &record.email);
        checked(v)?;
        record.password_hash = hashed(new).await?;
        record.update_time = Some(timestamp());
        record.sessions_not_before_ms = unix_millis();
        let who = format!("users/{}", record.id);
        let event = self.outbox.event(&who, "user.password_reset", &who);
        match self
            .write_revoking_tokens(record, version, event, vec![found.consume])
            .await
        {
            // Lost a race: with another use of the token (refused), or with another change
            // of the account (the caller may retry).
            Err(UserError::Store(crate::store::UserStoreError::Concurrent))
                if self.resets.find(token).await?.is_none() =>
            {
                Err(refused())
            }
            other => other,
        }
    }

    /// Writes `record` with its audit `event` and, in the same write, a revocation of every
    /// access token the user was issued before it (a role or password change).
    async fn update_revoking_tokens(
        &self,
        record: UserRecord,
        version: u64,
        event: ordermesh_contracts::audit::AuditEvent,
    ) -> Result<UserRecord, UserError> {
        self.write_revoking_tokens(record, version, event, Vec::new())
            .await
    }

    /// [`Accounts::update_revoking_tokens`] with `extra` writes in the same batch.
    async fn write_revoking_tokens(
        &self,
        record: UserRecord,
        version: u64,
        event: ordermesh_contracts::audit::AuditEvent,
        extra: Vec<ordermesh_platform::store::Write>,
    ) -> Result<UserRecord, UserError> {
        let mut writes = self.outbox.writes(event);
        writes.extend(extra);
        writes.push(revocations::write(Kind::User, &record.id, self.access_ttl));
        self.outbox
            .commit(self.store.update(&record, version, writes))
            .await?;
        Ok(record)
    }

    pub async fn get(&self, id: &str) -> Result<UserRecord, UserError> {
        self.store
            .get(id)
            .await?
            .map(|(u, _)| u)
            .ok_or(UserError::NotFound)
    }

    /// Sets the fields `paths` names (only `display_name` can change), by `actor`.
    pub async fn update_profile(
        &self,
        id: &str,
        actor: &str,
        paths: &[String],
        display_name: &str,
    ) -> Result<UserRecord, UserError> {
        let mut v = Violations::new();
        v.check(
            !paths.is_empty(),
            "update_mask",
            "nothing to update: set a field or name it in the mask",
        );
        for path in paths {
            match path.as_str() {
                "display_name" | "displayName" => {
                    check_display_name(&mut v, "user.display_name", display_name)
                }
                other => v.add(
                    "update_mask",
                    format!("{other} cannot be updated (updatable: display_name)"),
                ),
            }
        }
        checked(v)?;
        let (mut record, version) = self.store.get(id).await?.ok_or(UserError::NotFound)?;
        record.display_name = display_name.trim().to_string();
        record.update_time = Some(timestamp());
        let event = self
            .outbox
            .event(actor, "user.profile_updated", &format!("users/{id}"));
        self.outbox
            .commit(
                self.store
                    .update(&record, version, self.outbox.writes(event)),
            )
            .await?;
        Ok(record)
    }

    /// Replaces the user's roles, by `actor`; access tokens carrying the old roles stop
    /// counting.
    pub async fn set_roles(
        &self,
        id: &str,
        actor: &str,
        roles: Vec<String>,
    ) -> Result<UserRecord, UserError> {
        let (mut record, version) = self.store.get(id).await?.ok_or(UserError::NotFound)?;
        let before = record.roles.join(",");
        record.roles = roles;
        record.update_time = Some(timestamp());
        let mut event = self
            .outbox
            .event(actor, "user.role_changed", &format!("users/{id}"));
        event.attributes.insert("before".into(), before);
        event
            .attributes
            .insert("after".into(), record.roles.join(","));
        self.update_revoking_tokens(record, version, event).await
    }
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
