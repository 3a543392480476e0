//! The signed-in user on whose behalf a mesh call is made. The gateway verifies the user's
//! JWT and forwards the user id and roles as metadata; services believe that metadata only
//! from a mesh identity allowed to forward it.

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::authz::CallerIdentity;
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

impl UserContext {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ROLE_ADMIN)
    }

    /// Writes the context into outgoing metadata (gateway side).
    pub fn inject(&self, metadata: &mut MetadataMap) -> Result<(), Status> {
        let id = MetadataValue::try_from(self.user_id.as_str())
            .map_err(|_| Status::internal("user id is not valid metadata"))?;
        let roles = MetadataValue::try_from(self.roles.join(",").as_str())
            .map_err(|_| Status::internal("roles are not valid metadata"))?;
        metadata.insert(USER_ID_KEY, id);
        metadata.insert(USER_ROLES_KEY, roles);
        Ok(())
    }

    /// The user a request is made for: `Ok(None)` when none is named, an error when one is
    /// named by a caller that may not forward users.
    pub fn from_request<T>(req: &tonic::Request<T>) -> Result<Option<Self>, Status> {
        let md = req.metadata();
        let Some(raw_id) = md.get(USER_ID_KEY) else {
            return Ok(None);
        };
        let forwarder = CallerIdentity::of(req)
            .map(|id| id.service_account.as_str())
            .unwrap_or_default();
        if !TRUSTED_FORWARDERS.contains(&forwarder) {
            return Err(Status::permission_denied(format!(
                "workload {forwarder:?} may not act on behalf of users"
            )));
        }
        let user_id = raw_id
            .to_str()
            .map_err(|_| Status::invalid_argument("x-ordermesh-user-id is not ASCII"))?
            .to_string();
        if user_id.is_empty() {
            return Err(Status::unauthenticated("empty user id"));
        }
        let roles = md
            .get(USER_ROLES_KEY)
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self { user_id, roles }))
    }

    /// Like [`Self::from_request`], but a user is required.
    pub fn require<T>(req: &tonic::Request<T>) -> Result<Self, Status> {
        Self::from_request(req)?.ok_or_else(|| Status::unauthenticated("no signed-in user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::WorkloadId;

    fn request_from(workload: &str, ctx: &UserContext) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        ctx.inject(req.metadata_mut()).unwrap();
        req.extensions_mut().insert(CallerIdentity(WorkloadId::new(
            "cluster.local",
            "ordermesh",
            workload,
        )));
        req
    }

    #[test]
    fn trusts_the_gateway_only() {
        let ctx = UserContext {
            user_id: "u1".into(),
            roles: vec!["user".into(), "admin".into()],
        };
        let got = UserContext::require(&request_from("edge-gateway", &ctx)).unwrap();
        assert_eq!(got, ctx);
        assert!(got.is_admin());
        let err = UserContext::require(&request_from("order-service", &ctx)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
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
