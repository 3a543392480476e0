//! proto3 JSON ↔ protobuf by descriptor. A request message is assembled as one JSON object
//! from the body (`body: "*"` or one field), the path variables and the query parameters,
//! then parsed by prost-reflect, which rejects unknown fields and wrong types by name.
//! Responses are printed with every field present (zero values too), int64 as strings and
//! enums by name.

use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

use crate::proto_json;
use crate::routes::{Bindings, Route};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscodeError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("this method takes no request body")]
    UnexpectedBody,
    #[error("unknown query parameter {0:?}")]
    UnknownParameter(String),
    #[error("query parameter {name:?}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the response could not be decoded")]
    BadResponse,
}

/// Finds `path` (dotted; JSON or proto names) in `desc`.
fn field_path(desc: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut out = Vec::new();
    let mut current = desc.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = proto_json::field_named(&current, part)?;
        if parts.peek().is_some() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return None,
            }
        }
        out.push(field);
    }
    Some(out)
}

fn is_scalar_like(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(m) => matches!(
            m.full_name(),
            "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
        ),
        _ => !field.is_map(),
    }
}

/// A raw text value (path or query) as the JSON that field's parser accepts.
fn text_value(field: &FieldDescriptor, name: &str, raw: &str) -> Result<Value, TranscodeError> {
    let bad = |reason: &str| TranscodeError::BadParameter {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    Ok(match field.kind() {
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("must be true or false")),
        },
        Kind::Double | Kind::Float => Value::Number(
            raw.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .ok_or_else(|| bad("must be a number"))?,
        ),
        // A field mask in the query may name fields as in the proto or as in JSON.
        Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask" => {
            Value::String(raw.split(',').map(camel_path).collect::<Vec<_>>().join(","))
        }
        // proto3 JSON accepts integers as strings; the parser checks range and sign.
        _ => Value::String(raw.to_string()),
    })
}

/// Sets `value` at the dotted `path` of `root` (JSON names).
fn set_path(
    root: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    value: Value,
    append: bool,
) -> Result<(), String> {
    let (last, parents) = fields.split_last().ok_or("empty path")?;
    let mut node = root;
    for f in parents {
        let entry = node
            .entry(f.json_name().to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        node = entry
            .as_object_mut()
            .ok_or_else(|| format!("{} is not an object", f.json_name()))?;
    }
    let key = last.json_name().to_string();
    if append {
        match node.entry(key).or_insert_with(|| Value::Array(vec![])) {
            Value::Array(items) => items.push(value),
            _ => return Err(format!("{} is not a list", last.json_name())),
        }
    } else {
        node.insert(key, value);
    }
    Ok(())
}

fn decode_component(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// The request message for `route` from the path bindings, query string and body.
pub fn request(
    route: &Route,
    bindings: &Bindings,
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, TranscodeError> {
    let desc = route.rpc.descriptor.input();
    let body_text =
        std::str::from_utf8(body).map_err(|_| TranscodeError::MalformedJson("not UTF-8".into()))?;
    let has_body = !body_text.trim().is_empty();
    let mut root = Map::new();
    match route.body.as_str() {
        "" if has_body => return Err(TranscodeError::UnexpectedBody),
        "" => {}
        "*" => {
            if has_body {
                match proto_json::parse(body_text).map_err(TranscodeError::MalformedJson)? {
                    Value::Object(obj) => root = obj,
                    _ => return Err(TranscodeError::NotAnObject),
                }
            }
        }
        field => {
            if has_body {
                let value = proto_json::parse(body_text).map_err(TranscodeError::MalformedJson)?;
                let fields = field_path(&desc, field)
                    .ok_or_else(|| TranscodeError::Invalid(format!("body field {field}")))?;
                set_path(&mut root, &fields, value, false).map_err(TranscodeError::Invalid)?;
            }
        }
    }
    for (path, value) in bindings {
        let fields = field_path(&desc, path)
            .ok_or_else(|| TranscodeError::Invalid(format!("path field {path}")))?;
        let leaf = fields
            .last()
            .cloned()
            .ok_or_else(|| TranscodeError::Invalid(path.clone()))?;
        let v = text_value(&leaf, path, value)?;
        set_path(&mut root, &fields, v, false).map_err(TranscodeError::Invalid)?;
    }
    let bound: Vec<&str> = bindings.iter().map(|(p, _)| p.as_str()).collect();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode_component(raw_key), decode_component(raw_value));
        let unknown = || TranscodeError::UnknownParameter(key.clone());
        if route.body == "*" {
            return Err(unknown());
        }
        let fields = field_path(&desc, &key).ok_or_else(unknown)?;
        let leaf = fields.last().cloned().ok_or_else(unknown)?;
        let top = fields[0].name().to_string();
        if top == route.body
            || bound
                .iter()
                .any(|b| b.split('.').next() == Some(top.as_str()))
            || !is_scalar_like(&leaf)
        {
            return Err(unknown());
        }
        let v = text_value(&leaf, &key, &value)?;
        if !leaf.is_list() && root_has(&root, &fields) {
            return Err(TranscodeError::BadParameter {
                name: key,
                reason: "given more than once".into(),
            });
        }
        set_path(&mut root, &fields, v, leaf.is_list()).map_err(TranscodeError::Invalid)?;
    }
    if let Some(mask) = inferred_update_mask(route, &desc, &root, &bound) {
        root.insert(UPDATE_MASK_JSON.to_string(), Value::String(mask));
    }
    let mut root = Value::Object(root);
    proto_json::normalize(&desc, &mut root).map_err(TranscodeError::Invalid)?;
    // Track where in the document a value fails, so the 400 names the field.
    let mut track = serde_path_to_error::Track::new();
    let message = DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(root, &mut track),
        &DeserializeOptions::new(),
    )
    .map_err(|e| match track.path().to_string() {
        path if path.is_empty() || path == "." => TranscodeError::Invalid(e.to_string()),
        path => TranscodeError::Invalid(format!("{path}: {e}")),
    })?;
    Ok(Bytes::from(message.encode_to_vec()))
}

const UPDATE_MASK: &str = "update_mask";
const UPDATE_MASK_JSON: &str = "updateMask";

/// `display_name` → `displayName`; JSON names pass unchanged.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A field path in the FieldMask JSON form: `unit_price.amount_minor` → `unitPrice.amountMinor`.
fn camel_path(path: &str) -> String {
    path.split('.')
        .map(lower_camel)
        .collect::<Vec<_>>()
        .join(".")
}

/// The field mask a PATCH implies when it names none: the fields present in its body, as
/// grpc-gateway's `FieldMaskFromRequestBody` derives it, so a partial update never clears what
/// it did not send. Nested messages contribute their own keys (`unit_price.currency`); a
/// well-known type, map or list is one path; fields bound from the URL name the resource and
/// are left out.
fn inferred_update_mask(
    route: &Route,
    desc: &MessageDescriptor,
    root: &Map<String, Value>,
    bound: &[&str],
) -> Option<String> {
    if route.method != http::Method::PATCH || route.body.is_empty() || route.body == "*" {
        return None;
    }
    let mask_field = desc.get_field_by_name(UPDATE_MASK)?;
    if !matches!(mask_field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
        || root.contains_key(mask_field.json_name())
    {
        return None;
    }
    let body_fields = field_path(desc, &route.body)?;
    let body_field = body_fields.last()?;
    let Kind::Message(resource) = body_field.kind() else {
        return None;
    };
    let mut node = root;
    for f in &body_fields {
        node = node.get(f.json_name())?.as_object()?;
    }
    let prefix = format!("{}.", route.body);
    let skip: Vec<&str> = bound
        .iter()
        .filter_map(|b| b.strip_prefix(&prefix))
        .collect();
    let mut paths = Vec::new();
    collect_paths(&resource, node, "", &skip, &mut paths);
    Some(paths.join(","))
}

fn collect_paths(
    desc: &MessageDescriptor,
    object: &Map<String, Value>,
    prefix: &str,
    skip: &[&str],
    out: &mut Vec<String>,
) {
    for (key, value) in object {
        let Some(field) = proto_json::field_named(desc, key) else {
            // Unknown keys are refused by the parser, naming them.
            continue;
        };
        let path = format!("{prefix}{}", field.name());
        if skip.contains(&path.as_str()) {
            continue;
        }
        match (field.kind(), value) {
            (Kind::Message(m), Value::Object(inner))
                if !field.is_map()
                    && !field.is_list()
                    && !m.full_name().starts_with("google.protobuf.") =>
            {
                collect_paths(&m, inner, &format!("{path}."), skip, out)
            }
            _ => out.push(camel_path(&path)),
        }
    }
}

fn root_has(root: &Map<String, Value>, fields: &[FieldDescriptor]) -> bool {
    let mut node = root;
    for (i, f) in fields.iter().enumerate() {
        match node.get(f.json_name()) {
            None => return false,
            Some(Value::Object(o)) if i + 1 < fields.len() => node = o,
            Some(_) => return i + 1 == fields.len(),
        }
    }
    false
}

fn print_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

fn decode_response(
    desc: &MessageDescriptor,
    bytes: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    DynamicMessage::decode(desc.clone(), bytes).map_err(|_| TranscodeError::BadResponse)
}

/// The JSON text of a response message (or of its `response_body` field). A whole message is
/// written straight from the decoded message, without building a `Value` first: this is the
/// gateway's per-request path.
pub fn response_json(
    desc: &MessageDescriptor,
    bytes: &[u8],
    response_body: &str,
) -> Result<Vec<u8>, TranscodeError> {
    if !response_body.is_empty() {
        let value = response(desc, bytes, response_body)?;
        return serde_json::to_vec(&value).map_err(|_| TranscodeError::BadResponse);
    }
    let message = decode_response(desc, bytes)?;
    let mut out = Vec::with_capacity(bytes.len() * 2 + 64);
    message
        .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &print_options())
        .map_err(|_| TranscodeError::BadResponse)?;
    Ok(out)
}

/// The JSON of a response message (or of its `response_body` field), as a value to compose
/// into a larger answer.
pub fn response(
    desc: &MessageDescriptor,
    bytes: &[u8],
    response_body: &str,
) -> Result<Value, TranscodeError> {
    let message = decode_response(desc, bytes)?;
    let value = message
        .serialize_with_options(serde_json::value::Serializer, &print_options())
        .map_err(|_| TranscodeError::BadResponse)?;
    if response_body.is_empty() {
        return Ok(value);
    }
    let json_name = desc
        .get_field_by_name(response_body)
        .map(|f| f.json_name().to_string())
        .unwrap_or_else(|| response_body.to_string());
    Ok(value.get(&json_name).cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes;

    fn route(method: &str) -> routes::Route {
        routes::all()
            .unwrap()
            .into_iter()
            .find(|r| r.rpc.method == method)
            .unwrap()
    }

    fn decode<M: Message + Default>(b: Bytes) -> M {
        M::decode(b).unwrap()
    }

    #[test]
    fn body_star_path_and_query_build_the_request() {
        use ordermesh_contracts::order::{
            CreateOrderRequest, ListOrdersRequest, UpdateProductRequest,
        };
        let r = route("CreateOrder");
        let body =
            br#"{"items":[{"sku":"MUG","quantity":"2"}],"currency":"EUR","idempotency_key":"k"}"#;
        let m: CreateOrderRequest = decode(request(&r, &vec![], None, body).unwrap());
        assert_eq!(
            (
                m.items[0].quantity,
                m.currency.as_str(),
                m.idempotency_key.as_str()
            ),
            (2, "EUR", "k")
        );

        let list = route("ListOrders");
        let m: ListOrdersRequest = decode(
            request(
                &list,
                &vec![],
                Some("pageSize=5&page_token=abc&userId=u%201"),
                b"",
            )
            .unwrap(),
        );
        assert_eq!(
            (m.page_size, m.page_token.as_str(), m.user_id.as_str()),
            (5, "abc", "u 1")
        );

        let upd = route("UpdateProduct");
        let bindings = vec![("product.name".to_string(), "products/MUG".to_string())];
        let m: UpdateProductRequest = decode(
            request(
                &upd,
                &bindings,
                Some("updateMask=stock"),
                br#"{"stock":"7"}"#,
            )
            .unwrap(),
        );
        let p = m.product.unwrap();
        assert_eq!((p.name.as_str(), p.stock), ("products/MUG", 7));
        assert_eq!(m.update_mask.unwrap().paths, vec!["stock"]);
    }

    #[test]
    fn bad_input_is_named() {
        let r = route("CreateOrder");
        assert!(matches!(
            request(&r, &vec![], None, b"{\"items\": ["),
            Err(TranscodeError::MalformedJson(_))
        ));
        assert_eq!(
            request(&r, &vec![], None, b"[1]"),
            Err(TranscodeError::NotAnObject)
        );
        let e = request(&r, &vec![], None, br#"{"bogus": 1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = request(&r, &vec![], None, br#"{"items": [{"quantity": "lots"}]}"#).unwrap_err();
        assert!(matches!(e, TranscodeError::Invalid(_)), "{e}");
        assert_eq!(
            request(&r, &vec![], Some("x=1"), b"{}"),
            Err(TranscodeError::UnknownParameter("x".into()))
        );
        let list = route("ListOrders");
        assert_eq!(
            request(&list, &vec![], Some("nope=1"), b""),
            Err(TranscodeError::UnknownParameter("nope".into()))
        );
        assert_eq!(
            request(&list, &vec![], None, b"{}"),
            Err(TranscodeError::UnexpectedBody)
        );
        let e = request(&list, &vec![], Some("pageSize=9999999999999"), b"").unwrap_err();
        assert!(matches!(e, TranscodeError::Invalid(_)), "{e}");
    }

    #[test]
    fn responses_print_every_field_in_proto3_json() {
        use ordermesh_contracts::order::{Order, OrderState};
        let order = Order {
            name: "orders/1".into(),
            state: OrderState::Confirmed as i32,
            total: Some(ordermesh_platform::money::money("EUR", 1250)),
            ..Default::default()
        };
        let desc = route("GetOrder").rpc.descriptor.output();
        let v = response(&desc, &order.encode_to_vec(), "").unwrap();
        assert_eq!(v["state"], "ORDER_STATE_CONFIRMED");
        assert_eq!(v["total"]["amountMinor"], "1250");
        assert_eq!(v["cancelReason"], "", "zero values are emitted");
        assert_eq!(v["items"], serde_json::json!([]));

        let text = response_json(&desc, &order.encode_to_vec(), "").unwrap();
        let parsed: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            parsed, v,
            "the direct writer prints what the value path prints"
        );
        let total = response_json(&desc, &order.encode_to_vec(), "total").unwrap();
        let total: Value = serde_json::from_slice(&total).unwrap();
        assert_eq!(total, v["total"]);
        assert!(matches!(
            response_json(&desc, b"\xff\xff\xff", ""),
            Err(TranscodeError::BadResponse)
        ));
    }
}
