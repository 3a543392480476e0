//! Typed access to the embedded descriptors: every RPC with its HTTP binding and access rule.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MethodDescriptor};

use crate::google::api::HttpRule;
use crate::options::{AccessRule, Audience, FieldRules};

/// Packages whose services ordermesh serves (the rest of the pool is their imports).
pub const SERVED_PACKAGES: &[&str] = &[
    "ordermesh.user.v1",
    "ordermesh.order.v1",
    "ordermesh.payment.v1",
    "ordermesh.audit.v1",
    "ordermesh.notification.v1",
];

/// One RPC as the contracts describe it.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// The gRPC path, `/ordermesh.order.v1.OrderService/GetOrder`.
    pub path: String,
    /// Fully qualified service name, `ordermesh.order.v1.OrderService`.
    pub service: String,
    /// Method name, `GetOrder`.
    pub method: String,
    /// Proto package, `ordermesh.order.v1`.
    pub package: String,
    pub audience: Audience,
    /// Mesh workload names allowed to call the method.
    pub callers: Vec<String>,
    pub http: Option<HttpRule>,
    pub server_streaming: bool,
    pub client_streaming: bool,
    /// Safe to send twice: bound to HTTP GET, or marked `idempotency_level` NO_SIDE_EFFECTS
    /// or IDEMPOTENT (a write keyed by an idempotency key). Only these are ever retried.
    pub idempotent: bool,
    /// The HTTP status of a successful answer (`ordermesh.options.v1.http_success_status`,
    /// else 200).
    pub success_status: u16,
    pub descriptor: MethodDescriptor,
}

impl MethodInfo {
    pub fn allows_caller(&self, workload: &str) -> bool {
        self.callers.iter().any(|c| c == workload)
    }
}

/// The descriptor pool of every contract. Decoding an embedded, build-time-checked constant
/// cannot fail unless the build itself is broken, which the crate's tests catch.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor set is valid (checked by tests)")
    })
}

/// Every RPC of every served package, in declaration order.
pub fn methods() -> &'static [MethodInfo] {
    static METHODS: OnceLock<Vec<MethodInfo>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = pool();
        let http_ext = pool.get_extension_by_name("google.api.http");
        let access_ext = pool.get_extension_by_name("ordermesh.options.v1.access");
        let status_ext = pool.get_extension_by_name("ordermesh.options.v1.http_success_status");
        let mut out = Vec::new();
        for service in pool.services() {
            if !SERVED_PACKAGES.contains(&service.package_name()) {
                continue;
            }
            for method in service.methods() {
                let options = method.options();
                let http = http_ext
                    .as_ref()
                    .filter(|ext| options.has_extension(ext))
                    .and_then(|ext| {
                        options
                            .get_extension(ext)
                            .as_message()
                            .and_then(|m| m.transcode_to::<HttpRule>().ok())
                    });
                let access = access_ext
                    .as_ref()
                    .filter(|ext| options.has_extension(ext))
                    .and_then(|ext| {
                        options
                            .get_extension(ext)
                            .as_message()
                            .and_then(|m| m.transcode_to::<AccessRule>().ok())
                    })
                    .unwrap_or_default();
                let success_status = status_ext
                    .as_ref()
                    .filter(|ext| options.has_extension(ext))
                    .and_then(|ext| options.get_extension(ext).as_u32())
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (200..300).contains(s))
                    .unwrap_or(200);
                let declared = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .and_then(|o| o.idempotency_level)
                    .is_some_and(|level| level != 0);
                let get = matches!(
                    http.as_ref().and_then(|h| h.pattern.as_ref()),
                    Some(crate::google::api::http_rule::Pattern::Get(_))
                );
                out.push(MethodInfo {
                    path: format!("/{}/{}", service.full_name(), method.name()),
                    service: service.full_name().to_string(),
                    method: method.name().to_string(),
                    package: service.package_name().to_string(),
                    audience: access.audience(),
                    callers: access.callers.clone(),
                    http,
                    server_streaming: method.is_server_streaming(),
                    client_streaming: method.is_client_streaming(),
                    idempotent: declared || get,
                    success_status,
                    descriptor: method,
                });
            }
        }
        out
    })
}

/// The input constraints declared on a field (`(ordermesh.options.v1.field)`), if any. Read
/// from the descriptors once: every request's validation asks.
pub fn field_rules(field: &prost_reflect::FieldDescriptor) -> Option<&'static FieldRules> {
    static RULES: OnceLock<std::collections::HashMap<String, FieldRules>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let Some(ext) = pool().get_extension_by_name("ordermesh.options.v1.field") else {
                return Default::default();
            };
            pool()
                .all_messages()
                .flat_map(|m| m.fields().collect::<Vec<_>>())
                .filter_map(|f| {
                    let options = f.options();
                    if !options.has_extension(&ext) {
                        return None;
                    }
                    let rules = options
                        .get_extension(&ext)
                        .as_message()
                        .and_then(|m| m.transcode_to::<FieldRules>().ok())?;
                    Some((f.full_name().to_string(), rules))
                })
                .collect()
        })
        .get(field.full_name())
}

/// The RPC served at a gRPC path, if any.
pub fn method_by_path(path: &str) -> Option<&'static MethodInfo> {
    // Looked up on every call a mesh client or server handles.
    static BY_PATH: OnceLock<std::collections::HashMap<&'static str, &'static MethodInfo>> =
        OnceLock::new();
    BY_PATH
        .get_or_init(|| methods().iter().map(|m| (m.path.as_str(), m)).collect())
        .get(path)
        .copied()
}

/// The RPCs of one fully qualified service.
pub fn methods_of_service(service: &str) -> impl Iterator<Item = &'static MethodInfo> {
    methods().iter().filter(move |m| m.service == service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::api::http_rule::Pattern;

    #[test]
    fn every_method_has_an_access_rule_with_callers() {
        assert!(methods().len() >= 25, "found {} methods", methods().len());
        for m in methods() {
            assert_ne!(
                m.audience,
                Audience::Unspecified,
                "{} has no audience",
                m.path
            );
            assert!(!m.callers.is_empty(), "{} names no callers", m.path);
        }
    }

    #[test]
    fn http_bindings_survive_the_build() {
        let get_order = method_by_path("/ordermesh.order.v1.OrderService/GetOrder").unwrap();
        let rule = get_order.http.as_ref().unwrap();
        assert_eq!(
            rule.pattern,
            Some(Pattern::Get("/v1/{name=orders/*}".into()))
        );
        let cancel = method_by_path("/ordermesh.order.v1.OrderService/CancelOrder").unwrap();
        assert_eq!(
            cancel.http.as_ref().unwrap().pattern,
            Some(Pattern::Post("/v1/{name=orders/*}:cancel".into()))
        );
    }

    #[test]
    fn internal_methods_have_no_http_binding_and_public_ones_do() {
        for m in methods() {
            match m.audience {
                Audience::Internal => assert!(m.http.is_none(), "{} is internal", m.path),
                _ => assert!(m.http.is_some(), "{} needs an HTTP binding", m.path),
            }
        }
        let charge = method_by_path("/ordermesh.payment.v1.PaymentService/Charge").unwrap();
        assert_eq!(charge.callers, vec!["order-service".to_string()]);
    }

    #[test]
    fn tail_is_server_streaming() {
        let tail = method_by_path("/ordermesh.audit.v1.AuditService/TailEvents").unwrap();
        assert!(tail.server_streaming && !tail.client_streaming);
    }
}
