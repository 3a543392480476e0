//! HTTP routes derived from the contracts' `google.api.http` bindings: path templates with
//! variables (`{name=orders/*}`), custom verbs (`:cancel`) and additional bindings. A newly
//! annotated RPC is routed without gateway code.

use ordermesh_contracts::descriptors::{self, MethodInfo};
use ordermesh_contracts::google::api::HttpRule;
use ordermesh_contracts::google::api::http_rule::Pattern;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Matches one segment (`*`).
    Any,
    /// Matches the rest of the path (`**`).
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    /// Index of the first and one-past-last template segment the variable spans.
    start: usize,
    end: usize,
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: http::Method,
    /// The template as written, used as the metrics label.
    pub template: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
    /// `*`, a field name, or empty.
    pub body: String,
    pub response_body: String,
    pub rpc: &'static MethodInfo,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template {0:?} must start with '/'")]
    NoLeadingSlash(String),
    #[error("template {0:?} has an unclosed variable")]
    Unclosed(String),
}

/// A parsed template: its segments, the variables over them, and the custom verb.
type Parsed = (Vec<Segment>, Vec<Variable>, Option<String>);

fn parse(template: &str) -> Result<Parsed, TemplateError> {
    let path = template
        .strip_prefix('/')
        .ok_or_else(|| TemplateError::NoLeadingSlash(template.into()))?;
    // A verb follows the last ':' outside braces.
    let (path, verb) = match path.rfind(':') {
        Some(i) if !path[i..].contains('}') => (&path[..i], Some(path[i + 1..].to_string())),
        _ => (path, None),
    };
    let mut segments = Vec::new();
    let mut variables = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(template.into()))?;
            let spec = &inner[..close];
            let (field, pattern) = spec.split_once('=').unwrap_or((spec, "*"));
            let start = segments.len();
            for part in pattern.split('/') {
                segments.push(match part {
                    "*" => Segment::Any,
                    "**" => Segment::Rest,
                    lit => Segment::Literal(lit.to_string()),
                });
            }
            variables.push(Variable {
                field: field.to_string(),
                start,
                end: segments.len(),
            });
            rest = inner[close + 1..].trim_start_matches('/');
        } else {
            let end = rest.find('/').unwrap_or(rest.len());
            let part = &rest[..end];
            segments.push(match part {
                "*" => Segment::Any,
                "**" => Segment::Rest,
                lit => Segment::Literal(lit.to_string()),
            });
            rest = rest[end..].trim_start_matches('/');
        }
    }
    Ok((segments, variables, verb))
}

/// Path variables bound by a match: `(field path, value)`.
pub type Bindings = Vec<(String, String)>;

/// Why a path does not fit a route.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    No,
    /// It fits, but a variable segment carried an encoded '/'.
    EncodedSlash,
}

impl Route {
    fn new(rpc: &'static MethodInfo, rule: &HttpRule) -> Option<Result<Self, TemplateError>> {
        let (method, template) = match rule.pattern.as_ref()? {
            Pattern::Get(t) => (http::Method::GET, t),
            Pattern::Put(t) => (http::Method::PUT, t),
            Pattern::Post(t) => (http::Method::POST, t),
            Pattern::Delete(t) => (http::Method::DELETE, t),
            Pattern::Patch(t) => (http::Method::PATCH, t),
            Pattern::Custom(c) => (http::Method::from_bytes(c.kind.as_bytes()).ok()?, &c.path),
        };
        Some(parse(template).map(|(segments, variables, verb)| Self {
            method,
            template: template.clone(),
            segments,
            variables,
            verb,
            body: rule.body.clone(),
            response_body: rule.response_body.clone(),
            rpc,
        }))
    }

    /// Binds `path` (still percent-encoded) to this route's variables.
    pub fn matches(&self, path: &str) -> Result<Bindings, Mismatch> {
        let path = path.strip_prefix('/').ok_or(Mismatch::No)?;
        let path = match &self.verb {
            Some(verb) => path
                .strip_suffix(verb.as_str())
                .and_then(|p| p.strip_suffix(':'))
                .ok_or(Mismatch::No)?,
            None => path,
        };
        let parts: Vec<&str> = if path.is_empty() {
            vec![]
        } else {
            path.split('/').collect()
        };
        let mut consumed = Vec::with_capacity(self.segments.len());
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => {
                    consumed.push((i, parts.len()));
                    i = parts.len();
                }
                _ => {
                    let part = *parts.get(i).ok_or(Mismatch::No)?;
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .map_err(|_| Mismatch::No)?
                        .into_owned();
                    match seg {
                        Segment::Literal(l) if *l == value => {}
                        Segment::Literal(_) => return Err(Mismatch::No),
                        _ if value.is_empty() => return Err(Mismatch::No),
                        _ => {}
                    }
                    consumed.push((i, i + 1));
                    i += 1;
                }
            }
        }
        if i != parts.len() {
            return Err(Mismatch::No);
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let (from, _) = consumed[var.start];
            let (_, to) = consumed[var.end - 1];
            let mut values = Vec::new();
            for part in &parts[from..to] {
                let value = percent_encoding::percent_decode_str(part)
                    .decode_utf8()
                    .map_err(|_| Mismatch::No)?;
                if value.contains('/') {
                    return Err(Mismatch::EncodedSlash);
                }
                values.push(value.into_owned());
            }
            bindings.push((var.field.clone(), values.join("/")));
        }
        Ok(bindings)
    }
}

/// Every route of every served RPC, primary bindings first.
pub fn all() -> Result<Vec<Route>, TemplateError> {
    let mut routes = Vec::new();
    for rpc in descriptors::methods() {
        let Some(rule) = &rpc.http else { continue };
        for r in std::iter::once(rule).chain(rule.additional_bindings.iter()) {
            if let Some(route) = Route::new(rpc, r) {
                routes.push(route?);
            }
        }
    }
    Ok(routes)
}

/// Every route of the contracts' HTTP bindings, built once per process (they come from the
/// compiled-in descriptors, so they cannot differ between gateways).
pub fn table() -> Result<&'static [Route], TemplateError> {
    static TABLE: std::sync::OnceLock<Result<Vec<Route>, TemplateError>> =
        std::sync::OnceLock::new();
    match TABLE.get_or_init(all) {
        Ok(routes) => Ok(routes),
        Err(e) => Err(e.clone()),
    }
}

/// What a request path and method resolved to.
#[derive(Clone)]
pub enum Resolved<'a> {
    Found(&'a Route, Bindings),
    /// One of the gateway's own composite endpoints (an axum route).
    Composite,
    /// The path exists with other methods.
    WrongMethod(Vec<http::Method>),
    EncodedSlash,
    NotFound,
}

pub fn resolve<'a>(routes: &'a [Route], method: &http::Method, path: &str) -> Resolved<'a> {
    let mut allowed = Vec::new();
    let mut slash = false;
    for route in routes {
        match route.matches(path) {
            Ok(b) if route.method == method => return Resolved::Found(route, b),
            Ok(_) => allowed.push(route.method.clone()),
            Err(Mismatch::EncodedSlash) => slash = true,
            Err(Mismatch::No) => {}
        }
    }
    if !allowed.is_empty() {
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        Resolved::WrongMethod(allowed)
    } else if slash {
        Resolved::EncodedSlash
    } else {
        Resolved::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(template: &str) -> Route {
        let rpc = &descriptors::methods()[0];
        let rule = HttpRule {
            pattern: Some(Pattern::Get(template.into())),
            ..Default::default()
        };
        Route::new(rpc, &rule).unwrap().unwrap()
    }

    #[test]
    fn binds_variables_with_patterns_and_verbs() {
        let r = route("/v1/{name=orders/*}:cancel");
        assert_eq!(
            r.matches("/v1/orders/o-1:cancel"),
            Ok(vec![("name".into(), "orders/o-1".into())])
        );
        assert_eq!(r.matches("/v1/orders/o-1"), Err(Mismatch::No));
        assert_eq!(r.matches("/v1/orders/o-1:ship"), Err(Mismatch::No));
        let g = route("/v1/{name=orders/*}");
        assert_eq!(
            g.matches("/v1/orders/o%2D1"),
            Ok(vec![("name".into(), "orders/o-1".into())])
        );
        assert_eq!(g.matches("/v1/orders/a%2Fb"), Err(Mismatch::EncodedSlash));
        assert_eq!(g.matches("/v1/orders/"), Err(Mismatch::No));
        assert_eq!(g.matches("/v1/orders/a/b"), Err(Mismatch::No));
        let nested = route("/v1/{product.name=products/*}");
        assert_eq!(
            nested.matches("/v1/products/MUG"),
            Ok(vec![("product.name".into(), "products/MUG".into())])
        );
        let plain = route("/v1/orders");
        assert_eq!(plain.matches("/v1/orders"), Ok(vec![]));
        let rest = route("/files/{path=**}");
        assert_eq!(
            rest.matches("/files/a/b/c"),
            Ok(vec![("path".into(), "a/b/c".into())])
        );
    }

    #[test]
    fn every_binding_in_the_contracts_parses_and_resolves() {
        let routes = all().unwrap();
        assert!(routes.len() >= 20);
        let found = |m: http::Method, p: &str| match resolve(&routes, &m, p) {
            Resolved::Found(r, b) => Some((r.rpc.method.clone(), b)),
            _ => None,
        };
        assert_eq!(
            found(http::Method::POST, "/v1/orders/x:cancel").unwrap().0,
            "CancelOrder"
        );
        assert_eq!(
            found(http::Method::GET, "/v1/orders/x").unwrap().0,
            "GetOrder"
        );
        assert_eq!(
            found(http::Method::GET, "/v1/users/me").unwrap().1,
            vec![("name".to_string(), "users/me".to_string())]
        );
        assert_eq!(
            found(http::Method::GET, "/.well-known/jwks.json")
                .unwrap()
                .0,
            "GetJwks"
        );
        assert_eq!(
            found(http::Method::GET, "/v1/audit:verify").unwrap().0,
            "VerifyChain"
        );
        assert!(
            matches!(resolve(&routes, &http::Method::DELETE, "/v1/orders"), Resolved::WrongMethod(m) if m == vec![http::Method::GET, http::Method::POST])
        );
        assert!(matches!(
            resolve(&routes, &http::Method::GET, "/v2/nothing"),
            Resolved::NotFound
        ));
    }
}
