//! The signed-in user on whose behalf a mesh call is made. The gateway verifies the user's
//! JWT and forwards the user id and roles as metadata; the authorization layer believes that
//! metadata only from a mesh identity allowed to forward it, and hands handlers the typed
//! context as a request extension.

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::identity::workloads;

pub const USER_ID_KEY: &str = "x-ordermesh-user-id";
pub const USER_ROLES_KEY: &str = "x-ordermesh-user-roles";

/// Workloads trusted to say which user a call is for.
pub const TRUSTED_FORWARDERS: &[&str] = &[workloads::GATEWAY];

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserContext {
    pub user_id: String,
    pub roles: Vec<String>,
}

/// A role name: lowercase ASCII letters, digits, `-` and `_`. The restriction is what makes the
/// one wire encoding (names joined by `,`) read back as it was written.
pub fn valid_role(role: &str) -> bool {
    !role.is_empty()
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The roles of a forwarded-roles header. The one decoder: the gateway checks roles through
/// [`UserContext::new`], which keeps exactly what this would read back.
pub fn decode_roles(header: &str) -> Vec<String> {
    header
        .split(',')
        .filter(|r| valid_role(r))
        .map(str::to_string)
        .collect()
}

/// The forwarded-roles header for `roles` (invalid names are left out).
pub fn encode_roles(roles: &[String]) -> String {
    roles
        .iter()
        .filter(|r| valid_role(r))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl UserContext {
    /// The context for a verified user, its roles as services will read them: names that are
    /// not valid roles (a token could carry `"user,admin"` as one string) are dropped here, so
    /// the gateway and the services agree on what the caller is.
    pub fn new(user_id: impl Into<String>, roles: &[String]) -> Self {
        Self {
            user_id: user_id.into(),
            roles: decode_roles(&encode_roles(roles)),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ROLE_ADMIN)
    }

    /// Writes the context into outgoing metadata (gateway side).
    pub fn inject(&self, metadata: &mut MetadataMap) -> Result<(), Status> {
        let id = MetadataValue::try_from(self.user_id.as_str())
            .map_err(|_| Status::internal("user id is not valid metadata"))?;
        let roles = MetadataValue::try_from(encode_roles(&self.roles).as_str())
            .map_err(|_| Status::internal("roles are not valid metadata"))?;
        metadata.insert(USER_ID_KEY, id);
        metadata.insert(USER_ROLES_KEY, roles);
        Ok(())
    }

    /// The user forwarded metadata names (`Ok(None)` when none), or why it is unusable.
    /// Only the authorization layer calls this, once it knows the caller may forward users.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Option<Self>, Status> {
        let Some(raw_id) = headers.get(USER_ID_KEY) else {
            return Ok(None);
        };
        let user_id = raw_id
            .to_str()
            .map_err(|_| Status::invalid_argument("x-ordermesh-user-id is not ASCII"))?
            .to_string();
        if user_id.is_empty() {
            return Err(Status::unauthenticated("empty user id"));
        }
        let roles = headers
            .get(USER_ROLES_KEY)
            .and_then(|v| v.to_str().ok())
            .map(decode_roles)
            .unwrap_or_default();
        Ok(Some(Self { user_id, roles }))
    }

    /// The user a request is made for, as the authorization layer established it (`None`
    /// when none is named).
    pub fn from_request<T>(req: &tonic::Request<T>) -> Result<Option<Self>, Status> {
        Ok(req.extensions().get::<Self>().cloned())
    }

    /// Like [`Self::from_request`], but a user is required.
    pub fn require<T>(req: &tonic::Request<T>) -> Result<Self, Status> {
        Self::from_request(req)?.ok_or_else(|| Status::unauthenticated("no signed-in user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_encoding_of_roles_both_ways() {
        let smuggled = UserContext::new("u", &["user,admin".to_string()]);
        assert!(
            !smuggled.is_admin(),
            "a comma inside one role name makes no admin"
        );
        assert!(smuggled.roles.is_empty());
        let real = UserContext::new("u", &["user".to_string(), "admin".to_string()]);
        assert!(real.is_admin());
        let mut md = MetadataMap::new();
        real.inject(&mut md).unwrap();
        let header = md.get(USER_ROLES_KEY).unwrap().to_str().unwrap();
        assert_eq!(decode_roles(header), real.roles);
        assert_eq!(
            decode_roles("user,,Admin, admin,x y"),
            vec!["user".to_string()]
        );
    }
    #[test]
    fn the_headers_the_gateway_writes_read_back_as_the_same_user() {
        let ctx = UserContext {
            user_id: "u1".into(),
            roles: vec!["user".into(), "admin".into()],
        };
        let mut md = MetadataMap::new();
        ctx.inject(&mut md).unwrap();
        let headers = md.into_headers();
        assert_eq!(
            UserContext::from_headers(&headers).unwrap(),
            Some(ctx.clone())
        );
        let mut empty = http::HeaderMap::new();
        assert_eq!(UserContext::from_headers(&empty).unwrap(), None);
        empty.insert(USER_ID_KEY, http::HeaderValue::from_static(""));
        assert_eq!(
            UserContext::from_headers(&empty).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(ctx.clone());
        assert_eq!(UserContext::require(&req).unwrap(), ctx);
    }

    #[test]
    fn no_user_is_unauthenticated_when_required() {
        let req = tonic::Request::new(());
        assert_eq!(UserContext::from_request(&req).unwrap(), None);
        assert_eq!(
            UserContext::require(&req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
