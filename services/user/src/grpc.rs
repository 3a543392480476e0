//! The gRPC face of user-service. The authorization layer has already checked the calling
//! workload and, for calls forwarded by the gateway, the method's audience; this file checks
//! object-level rights (a user sees only their own profile), validates input and maps errors.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_contracts::user::revocation::Kind;
use ordermesh_contracts::user::user_service_server::{UserService, UserServiceServer};
use ordermesh_contracts::user::{
    CreateUserRequest, GetJwksRequest, GetUserRequest, Jwks, ListRevocationsRequest,
    ListRevocationsResponse, LoginRequest, LogoutRequest, LogoutResponse, RefreshTokenRequest,
    Role, SetUserRolesRequest, TokenPair, UpdateUserRequest, User,
};
use ordermesh_platform::authz::CallerIdentity;
use ordermesh_platform::jwt::AccessClaims;
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::status::{Violations, invalid};
use ordermesh_platform::store::now_unix;
use ordermesh_platform::user_context::UserContext;
use tonic::{Request, Response, Status};

use crate::accounts::{self, MAX_PASSWORD};
use crate::keys::SigningKeys;
use crate::login_throttle::{LoginThrottle, ThrottleSettings};
use crate::revocations;
use crate::sessions;
use crate::store::{SessionRecord, UserRecord, UserStore, UserStoreError};

/// Token lifetimes and the claims that bind a token to this deployment.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long after a refresh the token it replaced may be presented again and get the same
    /// new pair back (a client retrying on a flaky network) instead of revoking the session.
    pub refresh_reuse_grace: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: ordermesh_platform::jwt::DEFAULT_ISSUER.into(),
            audience: ordermesh_platform::jwt::DEFAULT_AUDIENCE.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(5),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct UserServer {
    store: UserStore,
    keys: Arc<SigningKeys>,
    outbox: Outbox,
    tokens: TokenConfig,
    throttle: LoginThrottle,
}

const INVALID_CREDENTIALS: &str = "invalid email or password";

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

fn role_name(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some("user"),
        Role::Admin => Some("admin"),
        Role::Unspecified => None,
    }
}

fn role_of(name: &str) -> Role {
    match name {
        "admin" => Role::Admin,
        "user" => Role::User,
        _ => Role::Unspecified,
    }
}

fn to_proto(u: &UserRecord) -> User {
    User {
        name: format!("users/{}", u.id),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        roles: u.roles.iter().map(|r| role_of(r) as i32).collect(),
        create_time: u.create_time,
        update_time: u.update_time,
    }
}

/// Who acted, for audit: the signed-in user, else the calling workload.
fn actor_of<T>(req: &Request<T>, user: Option<&UserContext>) -> String {
    match user {
        Some(u) => format!("users/{}", u.user_id),
        None => CallerIdentity::of(req)
            .map(|w| format!("workloads/{}", w.service_account))
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// Password hashing is CPU- and memory-hard (argon2id takes ~19 MiB per hash), so at most
/// one runs per core: a burst of logins queues instead of taking gigabytes.
static PASSWORD_WORK: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });

async fn password_work<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let _permit = PASSWORD_WORK
        .acquire()
        .await
        .map_err(|_| Status::unavailable("shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::internal("worker failed"))
}

impl UserServer {
    pub fn new(
        store: UserStore,
        keys: Arc<SigningKeys>,
        outbox: Outbox,
        tokens: TokenConfig,
    ) -> Self {
        Self {
            throttle: LoginThrottle::new(store.table().clone(), ThrottleSettings::default()),
            store,
            keys,
            outbox,
            tokens,
        }
    }

    pub fn into_service(self) -> UserServiceServer<Self> {
        UserServiceServer::new(self)
    }

    /// Creates an account with the admin role unless one exists for `email`; returns whether
    /// it was created. Used by `ordermesh up` on first run.
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<bool, Status> {
        let email = accounts::normalize_email(email).map_err(|d| invalid("email", d))?;
        if self.store.find_by_email(&email).await?.is_some() {
            return Ok(false);
        }
        let pw = password.to_string();
        let hash = password_work(move || accounts::hash_password(&pw))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        let record = UserRecord {
            id: id.clone(),
            email,
            display_name: "Administrator".into(),
            roles: vec!["user".into(), "admin".into()],
            password_hash: hash,
            create_time: Some(now()),
            update_time: Some(now()),
        };
        let event = self.outbox.event(
            "workloads/user-service",
            "user.registered",
            &format!("users/{id}"),
        );
        self.store
            .create(&record, vec![self.outbox.write(event)])
            .await?;
        self.outbox.notify();
        Ok(true)
    }

    fn access_token(&self, user: &UserRecord, session_id: &str) -> Result<(String, i64), Status> {
        let iat = now_unix();
        let ttl = self.tokens.access_ttl.as_secs() as i64;
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            aud: self.tokens.audience.clone(),
            sub: user.id.clone(),
            exp: iat + ttl,
            iat,
            nbf: iat,
            jti: uuid::Uuid::now_v7().to_string(),
            roles: user.roles.clone(),
            sid: session_id.to_string(),
        };
        let token = self.keys.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing an access token failed");
            Status::internal("cannot issue a token")
        })?;
        Ok((token, ttl))
    }

    async fn new_session(&self, user: &UserRecord, action: &str) -> Result<TokenPair, Status> {
        let session_id = uuid::Uuid::now_v7().to_string();
        let secret = sessions::new_secret();
        let session = SessionRecord {
            user_id: user.id.clone(),
            current_hash: sessions::hash_secret(&secret),
            previous_hashes: vec![],
            revoked: false,
            expires_at: now_unix() + self.tokens.refresh_ttl.as_secs() as i64,
            rotated_at_ms: 0,
        };
        let event = self.outbox.event(
            &format!("users/{}", user.id),
            action,
            &format!("users/{}", user.id),
        );
        self.store
            .create_session(&session_id, &session, vec![self.outbox.write(event)])
            .await?;
        self.outbox.notify();
        let (access_token, expires_in) = self.access_token(user, &session_id)?;
        Ok(TokenPair {
            access_token,
            refresh_token: sessions::format_token(&session_id, &secret),
            token_type: "Bearer".into(),
            expires_in,
        })
    }

    /// The session a refresh token names, if the token is well formed and the session live.
    async fn live_session(
        &self,
        token: &str,
    ) -> Result<(String, String, SessionRecord, u64), Status> {
        if token.is_empty() {
            return Err(invalid("refresh_token", "is required"));
        }
        let (id, secret) = sessions::parse_token(token)
            .ok_or_else(|| Status::unauthenticated("malformed refresh token"))?;
        let (session, version) = self
            .store
            .session(id)
            .await?
            .filter(|(s, _)| !s.revoked)
            .ok_or_else(|| Status::unauthenticated("refresh token is expired or revoked"))?;
        Ok((id.to_string(), secret.to_string(), session, version))
    }

    /// A new access token for `user_id` and the refresh token `secret` of session `id`.
    async fn pair_for(
        &self,
        user_id: &str,
        session_id: &str,
        secret: &str,
    ) -> Result<Response<TokenPair>, Status> {
        let (user, _) = self
            .store
            .get(user_id)
            .await?
            .ok_or_else(|| Status::unauthenticated("the account no longer exists"))?;
        let (access_token, expires_in) = self.access_token(&user, session_id)?;
        Ok(Response::new(TokenPair {
            access_token,
            refresh_token: sessions::format_token(session_id, secret),
            token_type: "Bearer".into(),
            expires_in,
        }))
    }

    /// Marks a session revoked and, in the same write, records `action` for the audit trail
    /// and a revocation the gateway follows, so the session's access tokens stop too.
    async fn end_session(
        &self,
        id: &str,
        session: &mut SessionRecord,
        version: u64,
        action: &str,
    ) -> Result<(), UserStoreError> {
        session.revoked = true;
        let user = format!("users/{}", session.user_id);
        let event = self.outbox.event(&user, action, &user);
        let ended = revocations::write(Kind::Session, id, self.tokens.access_ttl);
        self.store
            .update_session(id, session, version, vec![self.outbox.write(event), ended])
            .await
    }

    /// Resolves `users/me` or `users/{id}` for the caller; another user's profile reads as
    /// NOT_FOUND unless the caller is an admin (or an operator workload).
    fn resolve_name(
        &self,
        name: &str,
        user: Option<&UserContext>,
        allow_admin: bool,
    ) -> Result<String, Status> {
        let id = name
            .strip_prefix("users/")
            .filter(|id| !id.is_empty() && !id.contains('/') && id.len() <= 64)
            .ok_or_else(|| invalid("name", "must be users/me or users/{id}"))?;
        match (id, user) {
            ("me", Some(u)) => Ok(u.user_id.clone()),
            ("me", None) => Err(Status::unauthenticated("users/me needs a signed-in user")),
            (id, Some(u)) if id == u.user_id || (allow_admin && u.is_admin()) => Ok(id.to_string()),
            (_, Some(_)) => Err(Status::not_found("user not found")),
            (id, None) => Ok(id.to_string()),
        }
    }
}

#[tonic::async_trait]
impl UserService for UserServer {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let email = match accounts::normalize_email(&req.email) {
            Ok(e) => e,
            Err(d) => {
                v.add("email", d);
                String::new()
            }
        };
        accounts::check_display_name(&mut v, "display_name", &req.display_name);
        accounts::check_password(&mut v, &req.password, &email);
        v.into_result()?;
        let pw = req.password;
        let hash = password_work(move || accounts::hash_password(&pw))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        let record = UserRecord {
            id: id.clone(),
            email,
            display_name: req.display_name.trim().to_string(),
            roles: vec!["user".into()],
            password_hash: hash,
            create_time: Some(now()),
            update_time: Some(now()),
        };
        let event = self.outbox.event(
            &format!("users/{id}"),
            "user.registered",
            &format!("users/{id}"),
        );
        self.store
            .create(&record, vec![self.outbox.write(event)])
            .await?;
        self.outbox.notify();
        Ok(Response::new(to_proto(&record)))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let email = accounts::normalize_email(&req.email).unwrap_or_else(|d| {
            v.add("email", d);
            String::new()
        });
        v.check(!req.password.is_empty(), "password", "is required");
        v.check(
            req.password.len() <= 4 * MAX_PASSWORD,
            "password",
            "is too long",
        );
        v.into_result()?;

        // Locked the same way whether or not the account exists, before any password work.
        if let Some(wait) = self.throttle.locked_for(&email).await? {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ordermesh_platform::status::retry_later(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_FAILED_SIGN_INS",
                wait,
                format!("too many failed sign-ins for this account; try again in {secs} s"),
            ));
        }
        let found = self.store.find_by_email(&email).await?;
        let pw = req.password;
        let user = match found {
            None => {
                password_work(move || accounts::verify_against_nothing(&pw)).await?;
                None
            }
            Some((user, _)) => {
                let hash = user.password_hash.clone();
                password_work(move || accounts::verify_password(&pw, &hash))
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
            self.store.record(vec![self.outbox.write(event)]).await?;
            self.outbox.notify();
            return Err(Status::unauthenticated(INVALID_CREDENTIALS));
        };
        if let Err(e) = self.throttle.succeeded(&email).await {
            tracing::warn!(error = %e, "could not clear failed sign-ins");
        }
        Ok(Response::new(
            self.new_session(&user, "user.logged_in").await?,
        ))
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let token = request.into_inner().refresh_token;
        // Two rounds at most: a refresh that loses a race with a parallel one using the same
        // token reads the session again and is answered as a retry.
        for _ in 0..2 {
            let (id, secret, mut session, version) = self.live_session(&token).await?;
            let presented = sessions::hash_secret(&secret);
            let next = self.keys.next_refresh_secret(&id, &secret);
            if sessions::same_hash(&presented, &session.current_hash) {
                let previous =
                    std::mem::replace(&mut session.current_hash, sessions::hash_secret(&next));
                session.previous_hashes.insert(0, previous);
                session.previous_hashes.truncate(sessions::REMEMBERED);
                session.rotated_at_ms = now_ms();
                match self
                    .store
                    .update_session(&id, &session, version, vec![])
                    .await
                {
                    Ok(()) => return self.pair_for(&session.user_id, &id, &next).await,
                    Err(UserStoreError::Concurrent) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let just_replaced = session
                .previous_hashes
                .first()
                .is_some_and(|h| sessions::same_hash(&presented, h));
            let within_grace = now_ms().saturating_sub(session.rotated_at_ms)
                <= self.tokens.refresh_reuse_grace.as_millis() as i64;
            if just_replaced
                && within_grace
                && sessions::same_hash(&sessions::hash_secret(&next), &session.current_hash)
            {
                // The same token again, moments after it was used: the answer was lost on the
                // way. The same new refresh token, and a fresh access token.
                return self.pair_for(&session.user_id, &id, &next).await;
            }
            if session
                .previous_hashes
                .iter()
                .any(|h| sessions::same_hash(&presented, h))
            {
                // A rotated token came back: someone else holds it. End the whole session.
                match self
                    .end_session(&id, &mut session, version, "user.session_revoked")
                    .await
                {
                    Ok(()) => {}
                    Err(UserStoreError::Concurrent) => continue,
                    Err(e) => return Err(e.into()),
                }
                self.outbox.notify();
                tracing::warn!(user = %session.user_id, "refresh token reuse: session revoked");
                return Err(Status::unauthenticated(
                    "refresh token reuse detected; the session is revoked",
                ));
            }
            return Err(Status::unauthenticated("invalid refresh token"));
        }
        Err(Status::aborted(
            "the session changed while refreshing; try again",
        ))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let token = request.into_inner().refresh_token;
        let (id, secret, mut session, version) = self.live_session(&token).await?;
        let presented = sessions::hash_secret(&secret);
        let known = sessions::same_hash(&presented, &session.current_hash)
            || session
                .previous_hashes
                .iter()
                .any(|h| sessions::same_hash(&presented, h));
        if !known {
            return Err(Status::unauthenticated("invalid refresh token"));
        }
        self.end_session(&id, &mut session, version, "user.logged_out")
            .await?;
        self.outbox.notify();
        Ok(Response::new(LogoutResponse {}))
    }

    async fn list_revocations(
        &self,
        request: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        let req = request.into_inner();
        if req.after.len() > 64 || req.after.contains('\0') {
            return Err(invalid("after", "is not a cursor from this service"));
        }
        let size = match req.page_size {
            n if n <= 0 => revocations::MAX_PAGE,
            n => n as usize,
        };
        let (revocations, cursor) = revocations::list(self.store.table(), &req.after, size).await?;
        Ok(Response::new(ListRevocationsResponse {
            revocations,
            cursor,
        }))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        Ok(Response::new(self.keys.jwks()))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let user = UserContext::from_request(&request)?;
        let id = self.resolve_name(&request.get_ref().name, user.as_ref(), true)?;
        let (record, _) = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| Status::not_found("user not found"))?;
        Ok(Response::new(to_proto(&record)))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let user = UserContext::from_request(&request)?;
        let req = request.get_ref();
        let patch = req
            .user
            .as_ref()
            .ok_or_else(|| invalid("user", "is required"))?;
        let id = self.resolve_name(&patch.name, user.as_ref(), false)?;
        // With no mask, the fields the update sets (AIP-134): an empty update changes nothing.
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ if !patch.display_name.is_empty() => vec!["display_name".into()],
            _ => vec![],
        };
        let mut v = Violations::new();
        v.check(
            !paths.is_empty(),
            "update_mask",
            "nothing to update: set a field or name it in the mask",
        );
        for path in &paths {
            match path.as_str() {
                "display_name" | "displayName" => {
                    accounts::check_display_name(&mut v, "user.display_name", &patch.display_name)
                }
                other => v.add(
                    "update_mask",
                    format!("{other} cannot be updated (updatable: display_name)"),
                ),
            }
        }
        v.into_result()?;
        let (mut record, version) = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| Status::not_found("user not found"))?;
        record.display_name = patch.display_name.trim().to_string();
        record.update_time = Some(now());
        let event = self.outbox.event(
            &actor_of(&request, user.as_ref()),
            "user.profile_updated",
            &format!("users/{id}"),
        );
        self.store
            .update(&record, version, vec![self.outbox.write(event)])
            .await?;
        self.outbox.notify();
        Ok(Response::new(to_proto(&record)))
    }

    async fn set_user_roles(
        &self,
        request: Request<SetUserRolesRequest>,
    ) -> Result<Response<User>, Status> {
        let user = UserContext::from_request(&request)?;
        let req = request.get_ref();
        let id = self.resolve_name(&req.name, user.as_ref(), true)?;
        let mut roles: Vec<String> = Vec::new();
        let mut v = Violations::new();
        v.check(
            !req.roles.is_empty(),
            "roles",
            "at least one role is required",
        );
        for (i, r) in req.roles.iter().enumerate() {
            match Role::try_from(*r).ok().and_then(role_name) {
                Some(name) if !roles.iter().any(|x| x == name) => roles.push(name.to_string()),
                Some(_) => {}
                None => v.add(&format!("roles[{i}]"), "must be ROLE_USER or ROLE_ADMIN"),
            }
        }
        v.into_result()?;
        let (mut record, version) = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| Status::not_found("user not found"))?;
        let before = record.roles.join(",");
        record.roles = roles;
        record.update_time = Some(now());
        let mut event = self.outbox.event(
            &actor_of(&request, user.as_ref()),
            "user.role_changed",
            &format!("users/{id}"),
        );
        event.attributes.insert("before".into(), before);
        event
            .attributes
            .insert("after".into(), record.roles.join(","));
        self.store
            .update(
                &record,
                version,
                vec![
                    self.outbox.write(event),
                    // Access tokens carrying the old roles stop counting.
                    revocations::write(Kind::User, &record.id, self.tokens.access_ttl),
                ],
            )
            .await?;
        self.outbox.notify();
        Ok(Response::new(to_proto(&record)))
    }
}
