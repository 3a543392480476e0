//! Per-method authorization of mesh callers, as a tower layer in front of every gRPC router.
//!
//! The caller is the SPIFFE id in the verified peer certificate (builtin mTLS) or in the
//! sidecar's `x-forwarded-client-cert` header (Istio mode). The allowed callers of each method
//! come from its `ordermesh.options.v1.access` option, the same source the Istio
//! AuthorizationPolicies are generated from. Health and reflection are open to every mesh
//! workload. Nothing unverified reaches a handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use ordermesh_contracts::descriptors;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use ordermesh_contracts::options::Audience;

use crate::config::MtlsMode;
use crate::identity::WorkloadId;
use crate::user_context::{self, UserContext};

/// The verified mesh identity of the caller, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub WorkloadId);

impl CallerIdentity {
    /// The caller of a tonic request, set by [`AuthzLayer`].
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&WorkloadId> {
        req.extensions().get::<CallerIdentity>().map(|c| &c.0)
    }
}

/// gRPC paths any mesh workload may call: health checks and server reflection.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// What the mesh looks like to the authorizer.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    pub trust_domain: String,
    pub namespace: String,
    pub mode: MtlsMode,
}

impl AuthzPolicy {
    /// Decides whether `caller` may call `path`; `Err` carries the status to answer with.
    /// A call forwarded for a signed-in user must also meet the method's audience: a
    /// `USER` method needs a user, an `ADMIN` method a user with the admin role.
    /// On success, the user the call is made for, if a trusted forwarder named one.
    pub fn check_request(
        &self,
        caller: &WorkloadId,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<UserContext>, Status> {
        self.check(caller, path)?;
        let Some(method) = descriptors::method_by_path(path) else {
            return Ok(None);
        };
        let forwarded_user = headers.get(user_context::USER_ID_KEY).is_some();
        let forwarder = user_context::TRUSTED_FORWARDERS.contains(&caller.service_account.as_str());
        if forwarded_user && !forwarder {
            return Err(Status::permission_denied(format!(
                "workload {} may not act on behalf of users",
                caller.service_account
            )));
        }
        if !forwarder {
            return Ok(None);
        }
        let roles = headers
            .get(user_context::USER_ROLES_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match method.audience {
            Audience::User | Audience::Admin if !forwarded_user => Err(Status::unauthenticated(
                "this method needs a signed-in user",
            )),
            Audience::Admin
                if !user_context::decode_roles(roles)
                    .iter()
                    .any(|r| r == user_context::ROLE_ADMIN) =>
            {
                Err(Status::permission_denied(
                    "this method is for administrators",
                ))
            }
            // The gateway may call an internal method for itself (following revocations), never
            // on behalf of an outside user.
            Audience::Internal if forwarded_user => Err(Status::permission_denied(
                "this method is not reachable from outside the mesh",
            )),
            _ => UserContext::from_headers(headers),
        }
    }

    /// Decides whether `caller` may call `path` by identity alone.
    pub fn check(&self, caller: &WorkloadId, path: &str) -> Result<(), Status> {
        if caller.trust_domain != self.trust_domain || caller.namespace != self.namespace {
            return Err(Status::permission_denied(format!(
                "workload {caller} is outside this mesh (spiffe://{}/ns/{})",
                self.trust_domain, self.namespace
            )));
        }
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        let Some(method) = descriptors::method_by_path(path) else {
            return Err(Status::unimplemented(format!("unknown method {path}")));
        };
        if method.allows_caller(&caller.service_account) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "workload {} may not call {}",
                caller.service_account, method.path
            )))
        }
    }

    fn caller_of<B>(&self, req: &Request<B>) -> Result<WorkloadId, Status> {
        match self.mode {
            MtlsMode::Builtin => {
                let certs = req
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.peer_certs())
                    .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
                let leaf = certs
                    .first()
                    .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
                WorkloadId::from_certificate_der(leaf)
                    .map_err(|e| Status::unauthenticated(e.to_string()))
            }
            MtlsMode::Istio => {
                let header = req
                    .headers()
                    .get(FORWARDED_CLIENT_CERT)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Status::unauthenticated("no x-forwarded-client-cert from the sidecar")
                    })?;
                WorkloadId::from_forwarded_client_cert(header)
                    .map_err(|e| Status::unauthenticated(e.to_string()))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<AuthzPolicy>,
}

impl AuthzLayer {
    pub fn new(policy: AuthzPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<AuthzPolicy>,
}

impl<S, B> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let decision = self.policy.caller_of(&req).and_then(|caller| {
            let user = self
                .policy
                .check_request(&caller, req.uri().path(), req.headers())?;
            Ok((caller, user))
        });
        match decision {
            Ok((caller, user)) => {
                req.extensions_mut().insert(CallerIdentity(caller));
                if let Some(user) = user {
                    req.extensions_mut().insert(user);
                }
                // Take the service that was driven to readiness, leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                async move { inner.call(req).await }.boxed()
            }
            Err(status) => {
                tracing::warn!(path = req.uri().path(), code = ?status.code(), reason = status.message(), "mesh call refused");
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AuthzPolicy {
        AuthzPolicy {
            trust_domain: "cluster.local".into(),
            namespace: "ordermesh".into(),
            mode: MtlsMode::Builtin,
        }
    }

    #[test]
    fn allows_exactly_the_callers_the_proto_names() {
        let p = policy();
        let order = WorkloadId::new("cluster.local", "ordermesh", "order-service");
        let gateway = WorkloadId::new("cluster.local", "ordermesh", "edge-gateway");
        let charge = "/ordermesh.payment.v1.PaymentService/Charge";
        assert!(p.check(&order, charge).is_ok());
        let denied = p.check(&gateway, charge).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("edge-gateway"));
    }

    #[test]
    fn health_and_reflection_are_open_to_mesh_workloads_only() {
        let p = policy();
        let anyone = WorkloadId::new("cluster.local", "ordermesh", "audit-service");
        assert!(p.check(&anyone, "/grpc.health.v1.Health/Check").is_ok());
        assert!(
            p.check(
                &anyone,
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            )
            .is_ok()
        );
        let foreign = WorkloadId::new("evil.example", "ordermesh", "audit-service");
        assert_eq!(
            p.check(&foreign, "/grpc.health.v1.Health/Check")
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        let other_ns = WorkloadId::new("cluster.local", "default", "order-service");
        assert!(
            p.check(&other_ns, "/ordermesh.payment.v1.PaymentService/Charge")
                .is_err()
        );
    }

    #[test]
    fn forwarded_calls_meet_the_method_audience() {
        let p = policy();
        let gw = WorkloadId::new("cluster.local", "ordermesh", "edge-gateway");
        let verify = "/ordermesh.audit.v1.AuditService/VerifyChain";
        let headers = |roles: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(roles) = roles {
                h.insert(user_context::USER_ID_KEY, "u1".parse().unwrap());
                h.insert(user_context::USER_ROLES_KEY, roles.parse().unwrap());
            }
            h
        };
        assert_eq!(
            p.check_request(&gw, verify, &headers(None))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            p.check_request(&gw, verify, &headers(Some("user")))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(
            p.check_request(&gw, verify, &headers(Some("user,admin")))
                .is_ok()
        );
        // Public methods need no user; operators act as themselves.
        let products = "/ordermesh.order.v1.CatalogService/ListProducts";
        assert!(p.check_request(&gw, products, &headers(None)).is_ok());
        let op = WorkloadId::new("cluster.local", "ordermesh", "operator");
        assert!(p.check_request(&op, verify, &headers(None)).is_ok());
        // Only the gateway may name a user.
        assert_eq!(
            p.check_request(&op, verify, &headers(Some("admin")))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn unknown_methods_never_pass() {
        let p = policy();
        let op = WorkloadId::new("cluster.local", "ordermesh", "operator");
        assert_eq!(
            p.check(&op, "/ordermesh.payment.v1.PaymentService/Steal")
                .unwrap_err()
                .code(),
            tonic::Code::Unimplemented
        );
    }
}
