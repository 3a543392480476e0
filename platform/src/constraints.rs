//! The input constraints the contracts declare on request fields
//! (`(ordermesh.options.v1.field)`: required, lengths, ranges, patterns, list sizes),
//! enforced for every RPC in one server layer before any handler runs. The same declarations
//! become JSON Schema keywords in the gateway's OpenAPI document, so what is documented and
//! what is enforced cannot drift. Handlers keep only the checks a declaration cannot say
//! (a supported currency, a SKU appearing twice, a password containing the email).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use ordermesh_contracts::descriptors;
use ordermesh_contracts::options::FieldRules;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::status::Violations;

/// The largest request message a service accepts (tonic's default decoding limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

fn is_well_known(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

/// The violations of `message` against the rules declared on its fields, nested messages
/// included; field paths are proto names (`items[0].quantity`), as the handlers name them.
pub fn check(message: &DynamicMessage) -> Violations {
    let mut v = Violations::new();
    walk(message, "", &mut v);
    v
}

fn walk(message: &DynamicMessage, prefix: &str, v: &mut Violations) {
    for field in message.descriptor().fields() {
        let path = format!("{prefix}{}", field.name());
        let value = message.get_field(&field);
        if let Some(rules) = descriptors::field_rules(&field) {
            apply(rules, &field, &value, message.has_field(&field), &path, v);
        }
        let Kind::Message(m) = field.kind() else {
            continue;
        };
        if is_well_known(&m) || field.is_map() {
            continue;
        }
        match value.as_ref() {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        walk(inner, &format!("{path}[{i}]."), v);
                    }
                }
            }
            Value::Message(inner) if message.has_field(&field) => {
                walk(inner, &format!("{path}."), v)
            }
            _ => {}
        }
    }
}

fn is_unset(value: &Value, present: bool) -> bool {
    match value {
        Value::String(s) => s.trim().is_empty(),
        Value::List(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        Value::Message(_) => !present,
        Value::Bool(b) => !b,
        Value::Bytes(b) => b.is_empty(),
        Value::EnumNumber(n) | Value::I32(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
    }
}

fn integer(value: &Value) -> Option<i128> {
    Some(match value {
        Value::I32(n) => i128::from(*n),
        Value::I64(n) => i128::from(*n),
        Value::U32(n) => i128::from(*n),
        Value::U64(n) => i128::from(*n),
        _ => return None,
    })
}

/// The description of a range violation, worded as the handlers word theirs.
pub fn range_description(minimum: Option<i64>, maximum: Option<i64>) -> String {
    match (minimum, maximum) {
        (Some(lo), Some(hi)) => format!("must be {lo}..={hi}"),
        (Some(0), None) => "must not be negative".to_string(),
        (Some(lo), None) => format!("must be at least {lo}"),
        (None, Some(hi)) => format!("must be at most {hi}"),
        (None, None) => String::new(),
    }
}

fn pattern_matches(pattern: &str, text: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex_lite::Regex>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let re = cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex_lite::Regex::new(pattern).ok());
    // A pattern that does not compile is a contract bug, caught by the contract tests; it
    // never blocks a request.
    re.as_ref().is_none_or(|re| re.is_match(text))
}

fn apply(
    rules: &FieldRules,
    field: &FieldDescriptor,
    value: &Value,
    present: bool,
    path: &str,
    v: &mut Violations,
) {
    if is_unset(value, present) {
        if rules.required {
            v.add(path, "is required");
        } else if field.is_list() && rules.min_items > 0 {
            v.add(path, format!("at least {} required", rules.min_items));
        }
        // An unset integer is still checked against its range (0 may be out of it).
        if !(field.is_list() || rules.minimum.is_none() && rules.maximum.is_none())
            && let Some(n) = integer(value)
        {
            check_range(rules, n, path, v);
        }
        return;
    }
    match value {
        Value::String(s) => {
            let chars = s.chars().count();
            if rules.min_length > 0 && chars < rules.min_length as usize {
                v.add(
                    path,
                    format!("must be at least {} characters", rules.min_length),
                );
            } else if rules.max_length > 0 && chars > rules.max_length as usize {
                v.add(
                    path,
                    format!("is longer than {} characters", rules.max_length),
                );
            } else if !rules.pattern.is_empty() && !pattern_matches(&rules.pattern, s) {
                let description = if rules.pattern_description.is_empty() {
                    format!("must match {}", rules.pattern)
                } else {
                    rules.pattern_description.clone()
                };
                v.add(path, description);
            }
        }
        Value::List(items) => {
            if rules.min_items > 0 && items.len() < rules.min_items as usize {
                v.add(path, format!("at least {} required", rules.min_items));
            } else if rules.max_items > 0 && items.len() > rules.max_items as usize {
                v.add(path, format!("at most {} allowed", rules.max_items));
            }
        }
        other => {
            if let Some(n) = integer(other) {
                check_range(rules, n, path, v);
            }
        }
    }
}

fn check_range(rules: &FieldRules, n: i128, path: &str, v: &mut Violations) {
    let below = rules.minimum.is_some_and(|lo| n < i128::from(lo));
    let above = rules.maximum.is_some_and(|hi| n > i128::from(hi));
    if below || above {
        v.add(path, range_description(rules.minimum, rules.maximum));
    }
}

/// Whether any field reachable from `desc` declares rules (computed once per message).
fn has_rules(desc: &MessageDescriptor) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(desc.full_name())
    {
        return *known;
    }
    let mut seen = Vec::new();
    let answer = reachable_rules(desc, &mut seen);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(desc.full_name().to_string(), answer);
    answer
}

fn reachable_rules(desc: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|s| s == desc.full_name()) {
        return false;
    }
    seen.push(desc.full_name().to_string());
    desc.fields().any(|f| {
        descriptors::field_rules(&f).is_some()
            || matches!(f.kind(), Kind::Message(m) if !is_well_known(&m) && reachable_rules(&m, seen))
    })
}

/// The violations of one gRPC request body (a single uncompressed length-prefixed message),
/// or `None` when it is not one (tonic's own decoding then answers).
fn check_frame(input: &MessageDescriptor, mut frame: Bytes) -> Option<Violations> {
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    frame.advance(1);
    let len = frame.get_u32() as usize;
    if frame.len() != len {
        return None;
    }
    let message = DynamicMessage::decode(input.clone(), frame).ok()?;
    Some(check(&message))
}

/// The server layer that enforces the declared constraints (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ConstraintLayer;

impl<S> tower::Layer<S> for ConstraintLayer {
    type Service = Constrained<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Constrained { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Constrained<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Constrained<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let input = descriptors::method_by_path(req.uri().path())
            .filter(|rpc| !rpc.client_streaming)
            .map(|rpc| rpc.descriptor.input())
            .filter(has_rules);
        let Some(input) = input else {
            return async move { inner.call(req).await }.boxed();
        };
        async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MAX_MESSAGE + 5).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    let status = Status::new(
                        Code::ResourceExhausted,
                        format!("the request message is larger than {MAX_MESSAGE} bytes"),
                    );
                    return Ok(status.into_http());
                }
                // The caller's stream broke before its message was whole.
                Err(_) => {
                    let status = Status::new(Code::Cancelled, "the request ended early");
                    return Ok(status.into_http());
                }
            };
            if let Some(violations) = check_frame(&input, bytes.clone())
                && let Err(status) = violations.into_result()
            {
                return Ok(status.into_http());
            }
            inner
                .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
                .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn dynamic<M: Message>(name: &str, m: &M) -> DynamicMessage {
        let desc = descriptors::pool().get_message_by_name(name).unwrap();
        DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).unwrap()
    }

    fn fields(v: Violations) -> Vec<String> {
        match v.into_result() {
            Ok(()) => vec![],
            Err(s) => crate::status::details(&s)
                .violations
                .into_iter()
                .map(|f| format!("{}: {}", f.field, f.description))
                .collect(),
        }
    }

    const CREATE: &str = "ordermesh.order.v1.CreateOrderRequest";

    #[test]
    fn declared_rules_name_each_failing_field() {
        use ordermesh_contracts::order::{CreateOrderRequest, OrderItem};
        let ok = CreateOrderRequest {
            items: vec![OrderItem {
                sku: "MUG-001".into(),
                quantity: 2,
                ..Default::default()
            }],
            currency: "EUR".into(),
            idempotency_key: "k-1".into(),
        };
        assert_eq!(fields(check(&dynamic(CREATE, &ok))), Vec::<String>::new());
        let bad = CreateOrderRequest {
            items: vec![OrderItem {
                sku: "mug".into(),
                quantity: 0,
                ..Default::default()
            }],
            currency: "euro".into(),
            idempotency_key: String::new(),
        };
        let got = fields(check(&dynamic(CREATE, &bad)));
        for want in [
            "items[0].sku",
            "items[0].quantity: must be 1..=1000",
            "currency",
            "idempotency_key: is required",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "{want} in {got:?}");
        }
        let empty = CreateOrderRequest::default();
        let got = fields(check(&dynamic(CREATE, &empty)));
        assert!(got.iter().any(|g| g.starts_with("items")), "{got:?}");
    }

    #[test]
    fn every_declared_pattern_compiles_and_every_rule_fits_its_field() {
        for message in descriptors::pool().all_messages() {
            for field in message.fields() {
                let Some(rules) = descriptors::field_rules(&field) else {
                    continue;
                };
                let at = format!("{}.{}", message.full_name(), field.name());
                if !rules.pattern.is_empty() {
                    assert!(regex_lite::Regex::new(&rules.pattern).is_ok(), "{at}");
                }
                let string = matches!(field.kind(), Kind::String);
                let integer = matches!(
                    field.kind(),
                    Kind::Int32
                        | Kind::Int64
                        | Kind::Uint32
                        | Kind::Uint64
                        | Kind::Sint32
                        | Kind::Sint64
                );
                if rules.min_length > 0 || rules.max_length > 0 || !rules.pattern.is_empty() {
                    assert!(
                        string && !field.is_list(),
                        "{at}: length/pattern on a non-string"
                    );
                }
                if rules.minimum.is_some() || rules.maximum.is_some() {
                    assert!(integer && !field.is_list(), "{at}: range on a non-integer");
                }
                if rules.min_items > 0 || rules.max_items > 0 {
                    assert!(field.is_list(), "{at}: item counts on a non-list");
                }
            }
        }
    }
}
