//! One process, several services in the trace backend: `ordermesh up` runs every role in one
//! process, yet Jaeger should show `edge-gateway`, `order-service`, … as production does.
//! Spans that begin a role's work name it in [`ROLE_ATTRIBUTE`] (server spans, the gateway's
//! HTTP span, background deliveries); every other span inherits its local parent's role. At
//! the end each span goes to an exporter whose resource carries that role as `service.name`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanId, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// The span attribute naming the role whose work a span begins.
pub const ROLE_ATTRIBUTE: &str = "ordermesh.role";

/// Routes each finished span to its role's processor (see the module docs).
#[derive(Debug)]
pub struct RoleRouting<P> {
    by_role: HashMap<String, P>,
    /// For spans of no role (before any role starts).
    fallback: P,
    role_of: Mutex<HashMap<SpanId, String>>,
}

impl<P: SpanProcessor> RoleRouting<P> {
    pub fn new(by_role: HashMap<String, P>, fallback: P) -> Self {
        Self {
            by_role,
            fallback,
            role_of: Mutex::new(HashMap::new()),
        }
    }

    fn processor(&self, role: Option<&str>) -> &P {
        role.and_then(|r| self.by_role.get(r))
            .unwrap_or(&self.fallback)
    }
}

fn own_role(span: &Span) -> Option<String> {
    span.exported_data()?
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == ROLE_ATTRIBUTE)
        .map(|kv| kv.value.as_str().into_owned())
        .filter(|role| !role.is_empty())
}

impl<P: SpanProcessor> SpanProcessor for RoleRouting<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let mut roles = self.role_of.lock().unwrap_or_else(|p| p.into_inner());
        let parent = cx.span().span_context().clone();
        let inherited = (parent.is_valid() && !parent.is_remote())
            .then(|| roles.get(&parent.span_id()).cloned())
            .flatten();
        let role = own_role(span).or(inherited);
        if let Some(role) = role {
            roles.insert(span.span_context().span_id(), role.clone());
            drop(roles);
            self.processor(Some(&role)).on_start(span, cx);
        } else {
            drop(roles);
            self.fallback.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        let role = self
            .role_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&span.span_context.span_id());
        self.processor(role.as_deref()).on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        let mut result = self.fallback.force_flush();
        for p in self.by_role.values() {
            let r = p.force_flush();
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut result = self.fallback.shutdown_with_timeout(timeout);
        for p in self.by_role.values() {
            let r = p.shutdown_with_timeout(timeout);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.fallback.set_resource(resource);
        for (role, p) in &mut self.by_role {
            let attributes: Vec<KeyValue> = resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect();
            let own = Resource::builder_empty()
                .with_attributes(attributes)
                .with_service_name(role.clone())
                .build();
            p.set_resource(&own);
        }
    }
}
