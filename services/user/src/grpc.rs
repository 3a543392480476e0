//! The gRPC face of user-service: requests in, domain calls (accounts, sessions, tokens),
//! messages and statuses out. The authorization layer has already checked the calling
//! workload and, for calls forwarded by the gateway, the method's audience; this file checks
//! object-level rights (a user sees only their own profile) and maps errors, once.

use std::sync::Arc;

use ordermesh_contracts::user::user_service_server::{UserService, UserServiceServer};
use ordermesh_contracts::user::{
    ChangePasswordRequest, ConfirmPasswordResetRequest, ConfirmPasswordResetResponse,
    CreateApiKeyRequest, CreateApiKeyResponse, CreateUserRequest, DeleteApiKeyRequest,
    DeleteApiKeyResponse, GetJwksRequest, GetUserRequest, Jwks, ListApiKeyScopesRequest,
    ListApiKeyScopesResponse, ListApiKeysRequest, ListApiKeysResponse, ListRevocationsRequest,
    ListRevocationsResponse, LoginRequest, LogoutRequest, LogoutResponse, RefreshTokenRequest,
    RequestPasswordResetRequest, RequestPasswordResetResponse, Role, SetUserRolesRequest,
    TokenPair, UpdateUserRequest, User, VerifiedApiKey, VerifyApiKeyRequest,
};
use ordermesh_platform::authz::CallerIdentity;
use ordermesh_platform::outbox::Outbox;
use ordermesh_platform::status::{invalid, retry_later};
use ordermesh_platform::user_context::{ROLE_ADMIN, ROLE_USER, UserContext};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::accounts::Accounts;
use crate::api_keys::{ApiKeys, NewKey, Requester};
use crate::error::UserError;
use crate::keys::SigningKeys;
use crate::revocations;
use crate::sessions::Sessions;
use crate::store::{UserRecord, UserStore};
pub use crate::tokens::TokenConfig;
use crate::tokens::Tokens;

impl From<UserError> for Status {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(v) => v
                .into_result()
                .err()
                .unwrap_or_else(|| Status::invalid_argument("the request is invalid")),
            UserError::BadCredentials | UserError::Session(_) => {
                Status::unauthenticated(e.to_string())
            }
            UserError::Throttled(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                retry_later(
                    tonic::Code::ResourceExhausted,
                    "TOO_MANY_FAILED_SIGN_INS",
                    wait,
                    format!("too many failed sign-ins for this account; try again in {secs} s"),
                )
            }
            UserError::NotFound | UserError::ApiKeyNotFound => Status::not_found(e.to_string()),
            UserError::Raced => Status::aborted(e.to_string()),
            UserError::LimitReached(what) => ordermesh_platform::status::with_reason(
                tonic::Code::FailedPrecondition,
                "LIMIT_REACHED",
                what,
            ),
            UserError::Internal(what) => Status::internal(what),
            UserError::ShuttingDown => Status::unavailable(e.to_string()),
            UserError::Store(s) => s.into(),
        }
    }
}

pub struct UserServer {
    store: UserStore,
    accounts: Accounts,
    api_keys: ApiKeys,
    sessions: Sessions,
    tokens: Arc<Tokens>,
}

fn role_name(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some(ROLE_USER),
        Role::Admin => Some(ROLE_ADMIN),
        Role::Unspecified => None,
    }
}

fn role_of(name: &str) -> Role {
    match name {
        ROLE_ADMIN => Role::Admin,
        ROLE_USER => Role::User,
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

/// Resolves `users/me` or `users/{id}` for the caller; another user's profile reads as
/// NOT_FOUND unless the caller is an admin (or an operator workload).
fn resolve_name(
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

impl UserServer {
    pub fn new(
        store: UserStore,
        keys: Arc<SigningKeys>,
        outbox: Outbox,
        tokens: TokenConfig,
    ) -> Self {
        let access_ttl = tokens.access_ttl;
        let tokens = Arc::new(Tokens::new(keys, tokens));
        Self {
            accounts: Accounts::new(store.clone(), outbox.clone(), access_ttl),
            api_keys: ApiKeys::new(store.clone(), outbox.clone(), access_ttl),
            sessions: Sessions::new(store.clone(), outbox, tokens.clone()),
            store,
            tokens,
        }
    }

    pub fn into_service(self) -> UserServiceServer<Self> {
        UserServiceServer::new(self)
    }

    /// Creates an account with the admin role unless one exists for `email`; returns whether
    /// it was created. Used by `ordermesh up` on first run.
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<bool, Status> {
        Ok(self.accounts.ensure_admin(email, password).await?)
    }
}

#[tonic::async_trait]
impl UserService for UserServer {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let req = request.into_inner();
        let record = self
            .accounts
            .register(&req.email, &req.display_name, &req.password)
            .await?;
        Ok(Response::new(to_proto(&record)))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        let req = request.into_inner();
        let user = self
            .accounts
            .authenticate(&req.email, &req.password)
            .await?;
        Ok(Response::new(
            self.sessions.open(&user, "user.logged_in").await?,
        ))
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let token = request.into_inner().refresh_token;
        Ok(Response::new(self.sessions.refresh(&token).await?))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        self.sessions
            .logout(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<RequestPasswordResetResponse>, Status> {
        // Answered before any work is done, so the time taken does not tell whether the
        // address has an account; the work (a read, and for an account a write) follows.
        let accounts = self.accounts.clone();
        let email = request.into_inner().email;
        tokio::spawn(
            async move {
                if let Err(e) = accounts.request_password_reset(&email).await {
                    tracing::warn!(error = %e, "password reset request not recorded");
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(RequestPasswordResetResponse {}))
    }

    async fn confirm_password_reset(
        &self,
        request: Request<ConfirmPasswordResetRequest>,
    ) -> Result<Response<ConfirmPasswordResetResponse>, Status> {
        let req = request.into_inner();
        self.accounts
            .reset_password(&req.token, &req.new_password)
            .await?;
        Ok(Response::new(ConfirmPasswordResetResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let user = UserContext::require(&request)?;
        let actor = actor_of(&request, Some(&user));
        let req = request.into_inner();
        let expire_ms = ordermesh_platform::clock::millis_of(req.expire_time.as_ref());
        let (api_key, secret) = self
            .api_keys
            .create(
                &Requester {
                    user_id: &user.user_id,
                    is_admin: user.is_admin(),
                    actor: &actor,
                },
                &NewKey {
                    display_name: &req.display_name,
                    scopes: &req.scopes,
                    expire_ms,
                    owner: &req.owner,
                },
            )
            .await?;
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(api_key),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let user = UserContext::require(&request)?;
        Ok(Response::new(ListApiKeysResponse {
            api_keys: self.api_keys.list(&user.user_id).await?,
        }))
    }

    async fn delete_api_key(
        &self,
        request: Request<DeleteApiKeyRequest>,
    ) -> Result<Response<DeleteApiKeyResponse>, Status> {
        let user = UserContext::require(&request)?;
        let actor = actor_of(&request, Some(&user));
        self.api_keys
            .delete(
                &Requester {
                    user_id: &user.user_id,
                    is_admin: user.is_admin(),
                    actor: &actor,
                },
                &request.get_ref().name,
            )
            .await?;
        Ok(Response::new(DeleteApiKeyResponse {}))
    }

    async fn list_api_key_scopes(
        &self,
        _request: Request<ListApiKeyScopesRequest>,
    ) -> Result<Response<ListApiKeyScopesResponse>, Status> {
        Ok(Response::new(ListApiKeyScopesResponse {
            scopes: ordermesh_contracts::api_key_scopes::all().to_vec(),
        }))
    }

    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifiedApiKey>, Status> {
        match self.api_keys.verify(&request.get_ref().key).await? {
            Some(verified) => Ok(Response::new(verified)),
            None => Err(Status::unauthenticated(
                "the API key is unknown, revoked or expired",
            )),
        }
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
        Ok(Response::new(self.tokens.jwks()))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let user = UserContext::from_request(&request)?;
        let id = resolve_name(&request.get_ref().name, user.as_ref(), true)?;
        Ok(Response::new(to_proto(&self.accounts.get(&id).await?)))
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
        let id = resolve_name(&patch.name, user.as_ref(), false)?;
        // With no mask, the fields the update sets (AIP-134): an empty update changes nothing.
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ if !patch.display_name.is_empty() => vec!["display_name".into()],
            _ => vec![],
        };
        let record = self
            .accounts
            .update_profile(
                &id,
                &actor_of(&request, user.as_ref()),
                &paths,
                &patch.display_name,
            )
            .await?;
        Ok(Response::new(to_proto(&record)))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let user = UserContext::from_request(&request)?;
        let req = request.into_inner();
        let id = resolve_name(&req.name, user.as_ref(), false)?;
        let record = self
            .accounts
            .change_password(&id, &req.current_password, &req.new_password)
            .await?;
        Ok(Response::new(
            self.sessions.open(&record, "user.logged_in").await?,
        ))
    }

    async fn set_user_roles(
        &self,
        request: Request<SetUserRolesRequest>,
    ) -> Result<Response<User>, Status> {
        let user = UserContext::from_request(&request)?;
        let req = request.get_ref();
        let id = resolve_name(&req.name, user.as_ref(), true)?;
        let mut roles: Vec<String> = Vec::new();
        let mut v = ordermesh_platform::status::Violations::new();
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
        let record = self
            .accounts
            .set_roles(&id, &actor_of(&request, user.as_ref()), roles)
            .await?;
        Ok(Response::new(to_proto(&record)))
    }
}
