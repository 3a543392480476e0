//! What a request resolved to, worked out once (by the observing layer) and read by every
//! later layer and the handler: the route template, who may call it and which rate-limit
//! bucket it draws on.

use axum::extract::MatchedPath;
use http::Request;
use ordermesh_contracts::options::Audience;

use crate::limits::RouteClass;
use crate::routes::{Resolved, Route};

/// Endpoints the gateway composes itself, as ordinary axum routes (GET only), with who may
/// call them.
pub const COMPOSITES: &[(&str, Audience)] = &[(crate::overview::PATH, crate::overview::AUDIENCE)];

/// A request's endpoint, as a request extension.
#[derive(Clone)]
pub struct Endpoint {
    /// The route template (the metrics label and span name), or `unmatched`.
    pub template: &'static str,
    pub audience: Audience,
    pub class: RouteClass,
    pub resolved: Resolved<'static>,
}

impl Endpoint {
    /// Resolves `req` against the composite routes (axum matched them already) and the
    /// contracts' HTTP bindings.
    pub fn of<B>(routes: &'static [Route], req: &Request<B>) -> Self {
        if let Some(matched) = req.extensions().get::<MatchedPath>()
            && let Some((path, audience)) = COMPOSITES.iter().find(|(p, _)| *p == matched.as_str())
        {
            // Another method is answered 405 by the route itself, whoever asks.
            let readable = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
            return Self {
                template: path,
                audience: if readable {
                    *audience
                } else {
                    Audience::Public
                },
                class: RouteClass::Default,
                resolved: if readable {
                    Resolved::Composite
                } else {
                    Resolved::WrongMethod(vec![http::Method::GET])
                },
            };
        }
        let resolved = crate::routes::resolve(routes, req.method(), req.uri().path());
        match &resolved {
            Resolved::Found(route, _) => Self {
                template: route.template.as_str(),
                audience: route.rpc.audience,
                class: route_class(route),
                resolved,
            },
            // Unresolved requests are answered by the handler; nobody has to sign in for that.
            _ => Self {
                template: "unmatched",
                audience: Audience::Public,
                class: RouteClass::Default,
                resolved,
            },
        }
    }
}

/// Login, registration and token refresh draw on the stricter per-address account bucket.
fn route_class(route: &Route) -> RouteClass {
    let account = route.rpc.service == "ordermesh.user.v1.UserService"
        && route.rpc.audience == Audience::Public
        && route.rpc.method != "GetJwks";
    if account {
        RouteClass::Account
    } else {
        RouteClass::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_resolves_to_its_template_audience_and_bucket() {
        let routes = crate::routes::table().unwrap();
        let get = |method: &str, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            Endpoint::of(routes, &req)
        };
        let login = get("POST", "/v1/auth/login");
        assert_eq!(login.class, RouteClass::Account);
        assert_eq!(login.audience, Audience::Public);
        let product = get("GET", "/v1/products/MUG-001");
        assert_eq!(product.template, "/v1/{name=products/*}");
        assert_eq!(product.class, RouteClass::Default);
        let admin = get("POST", "/v1/orders/x:ship");
        assert_eq!(admin.audience, Audience::Admin);
        let nothing = get("GET", "/v1/nothing");
        assert_eq!(nothing.template, "unmatched");
        assert!(matches!(nothing.resolved, Resolved::NotFound));
    }
}
