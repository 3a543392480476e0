//! The OpenAPI 3.1 document of the public REST surface, generated from the same descriptors
//! and bindings the gateway routes by, so it cannot drift from what is served.

use std::collections::BTreeMap;

use ordermesh_contracts::descriptors;
use ordermesh_contracts::options::{Audience, FieldRules};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::Route;

/// A path parameter: its OpenAPI name and the request field it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParam {
    pub name: String,
    pub field: String,
}

/// `/v1/{name=orders/*}:cancel` → `/v1/orders/{name}:cancel` (OpenAPI parameters are one
/// segment; the literal parts of a resource-name pattern stay in the path). A parameter is
/// named by the last part of its field path (`{product.name=products/*}` →
/// `/v1/products/{name}`), so two operations on one resource share one path template, as
/// generators require.
pub fn openapi_path(template: &str) -> (String, Vec<PathParam>) {
    let mut out = String::new();
    let mut params = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let spec = &rest[open + 1..close];
        let (field, pattern) = spec.split_once('=').unwrap_or((spec, "*"));
        let literal: Vec<&str> = pattern
            .split('/')
            .filter(|p| *p != "*" && *p != "**")
            .collect();
        for l in literal {
            out.push_str(l);
            out.push('/');
        }
        let name = field.rsplit('.').next().unwrap_or(field);
        out.push_str(&format!("{{{name}}}"));
        params.push(PathParam {
            name: name.to_string(),
            field: field.to_string(),
        });
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    (out, params)
}

fn scalar_schema(field: &FieldDescriptor, refs: &mut Vec<MessageDescriptor>) -> Value {
    match field.kind() {
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        // proto3 JSON writes 64-bit integers as strings (and reads numbers too).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
        }
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Duration" => {
                json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
            }
            "google.protobuf.FieldMask" => {
                json!({"type": "string", "description": "comma-separated field paths"})
            }
            _ => {
                refs.push(m.clone());
                json!({"$ref": format!("#/components/schemas/{}", m.full_name())})
            }
        },
    }
}

/// The field's declared input constraints as JSON Schema keywords on its (item) schema.
fn with_rules(mut schema: Value, rules: Option<&FieldRules>) -> Value {
    let (Some(rules), Some(obj)) = (rules, schema.as_object_mut()) else {
        return schema;
    };
    if rules.min_length > 0 {
        obj.insert("minLength".into(), json!(rules.min_length));
    }
    if rules.max_length > 0 {
        obj.insert("maxLength".into(), json!(rules.max_length));
    }
    if !rules.pattern.is_empty() {
        obj.insert("pattern".into(), json!(rules.pattern));
    }
    if !rules.format.is_empty() {
        obj.insert("format".into(), json!(rules.format));
    }
    if let Some(lo) = rules.minimum {
        obj.insert("minimum".into(), json!(lo));
    }
    if let Some(hi) = rules.maximum {
        obj.insert("maximum".into(), json!(hi));
    }
    if obj.get("type") == Some(&json!("string")) && obj.get("format") == Some(&json!("int64")) {
        let range =
            ordermesh_platform::constraints::range_description(rules.minimum, rules.maximum);
        if !range.is_empty() {
            // JSON Schema bounds apply to numbers; the int64 string form says them in words.
            obj.insert(
                "description".into(),
                json!(format!("an integer that {range}")),
            );
        }
    }
    schema
}

fn field_schema(field: &FieldDescriptor, refs: &mut Vec<MessageDescriptor>) -> Value {
    let rules = descriptors::field_rules(field);
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => entry
                .get_field_by_name("value")
                .map(|v| scalar_schema(&v, refs)),
            _ => None,
        };
        return json!({"type": "object", "additionalProperties": value.unwrap_or(json!({}))});
    }
    let item = scalar_schema(field, refs);
    if field.is_list() {
        let mut list = json!({"type": "array", "items": item});
        if let Some(r) = &rules {
            if r.min_items > 0 {
                list["minItems"] = json!(r.min_items);
            }
            if r.max_items > 0 {
                list["maxItems"] = json!(r.max_items);
            }
        }
        list
    } else if item.get("$ref").is_some() {
        item
    } else {
        with_rules(item, rules)
    }
}

fn message_schema(m: &MessageDescriptor, refs: &mut Vec<MessageDescriptor>) -> Value {
    message_schema_without(m, &[], refs)
}

/// The schema of `m` without the fields named in `left_out` (proto names): a request body
/// leaves out what the URL binds.
fn message_schema_without(
    m: &MessageDescriptor,
    left_out: &[&str],
    refs: &mut Vec<MessageDescriptor>,
) -> Value {
    let properties: Map<String, Value> = m
        .fields()
        .filter(|f| !left_out.contains(&f.name()))
        .map(|f| (f.json_name().to_string(), field_schema(&f, refs)))
        .collect();
    let required: Vec<String> = m
        .fields()
        .filter(|f| !left_out.contains(&f.name()))
        .filter(|f| descriptors::field_rules(f).is_some_and(|r| r.required))
        .map(|f| f.json_name().to_string())
        .collect();
    let mut schema =
        json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "requestId": {"type": "string"},
            "violations": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "description": {"type": "string"}}}}
        },
        "required": ["type", "title", "status", "requestId"]
    })
}

/// The schema of a request body: the input message (`body: "*"`) or one of its fields, less
/// what the URL binds (`PATCH /v1/products/{name}` takes the product without its name).
fn body_message_schema(
    body: &str,
    input: &MessageDescriptor,
    path_params: &[PathParam],
    refs: &mut Vec<MessageDescriptor>,
) -> Option<Value> {
    let (message, prefix) = if body == "*" {
        (input.clone(), String::new())
    } else {
        let field = input.get_field_by_name(body)?;
        match field.kind() {
            Kind::Message(m)
                if !field.is_list()
                    && !field.is_map()
                    && !m.full_name().starts_with("google.protobuf.") =>
            {
                (m, format!("{body}."))
            }
            _ => return Some(field_schema(&field, refs)),
        }
    };
    let bound: Vec<&str> = path_params
        .iter()
        .filter_map(|p| p.field.strip_prefix(prefix.as_str()))
        .filter(|f| !f.contains('.'))
        .collect();
    if bound.is_empty() {
        refs.push(message.clone());
        return Some(json!({"$ref": format!("#/components/schemas/{}", message.full_name())}));
    }
    Some(message_schema_without(&message, &bound, refs))
}

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut refs: Vec<MessageDescriptor> = Vec::new();
    let mut operation_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for route in routes {
        let (path, path_params) = openapi_path(&route.template);
        let input = route.rpc.descriptor.input();
        let output = route.rpc.descriptor.output();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|p| {
                json!({"name": p.name, "in": "path", "required": true,
                "schema": {"type": "string", "pattern": "^[^/]+$"},
                "description": format!("the last segment of the resource name bound to `{}`", p.field)})
            })
            .collect();
        if route.body != "*" {
            for f in input.fields() {
                let bound = path_params
                    .iter()
                    .any(|p| p.field.split('.').next() == Some(f.name()));
                let scalar = !matches!(f.kind(), Kind::Message(ref m) if !matches!(m.full_name(),
                    "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"));
                if !bound && f.name() != route.body && scalar && !f.is_map() {
                    parameters.push(
                        json!({"name": f.json_name(), "in": "query", "required": false,
                        "schema": field_schema(&f, &mut refs)}),
                    );
                }
            }
        }
        // An RPC with additional bindings has one operation per binding, each its own id.
        let seen = operation_ids.entry(route.rpc.method.as_str()).or_default();
        *seen += 1;
        let operation_id = match *seen {
            1 => route.rpc.method.clone(),
            n => format!("{}{n}", route.rpc.method),
        };
        let mut op = json!({
            "operationId": operation_id,
            "tags": [route.rpc.service.rsplit('.').next().unwrap_or_default()],
            "summary": route.rpc.descriptor.input().name(),
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema":
                    if route.response_body.is_empty() {
                        refs.push(output.clone());
                        json!({"$ref": format!("#/components/schemas/{}", output.full_name())})
                    } else {
                        output.get_field_by_name(&route.response_body).map(|f| field_schema(&f, &mut refs)).unwrap_or(json!({}))
                    }}}},
                "default": {"description": "An error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
        if route.rpc.success_status != 200 {
            let status = route.rpc.success_status.to_string();
            let ok = op["responses"]["200"].take();
            if let Some(responses) = op["responses"].as_object_mut() {
                responses.remove("200");
                responses.insert(status, ok);
            }
            let reason = http::StatusCode::from_u16(route.rpc.success_status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("OK");
            op["responses"][route.rpc.success_status.to_string()]["description"] = json!(reason);
        }
        if route.rpc.server_streaming {
            // As served: one JSON message per line by default, Server-Sent Events on request.
            let message = op["responses"]["200"]["content"]["application/json"]["schema"].take();
            op["responses"]["200"]["content"] = json!({
                "application/x-ndjson": {"schema": message},
                "text/event-stream": {"schema": {"type": "string",
                    "description": "`event: message` with one JSON message per event; `event: error` with a problem ends the stream"}},
            });
        }
        // A signed-in caller: an access token, or an API key holding the method's scope.
        let scope = ordermesh_contracts::api_key_scopes::scope_of(route.rpc);
        let signed_in = json!([{"bearer": []}, {"apiKey": []}]);
        let key_note = |scope: &Option<String>| {
            scope
                .as_ref()
                .map(|s| format!("API keys need the `{s}` scope."))
                .unwrap_or_default()
        };
        match route.rpc.audience {
            Audience::Public => op["security"] = json!([]),
            Audience::Admin => {
                op["security"] = signed_in;
                op["description"] = json!(format!(
                    "Administrators only. {} and `admin`, on an administrator's key.",
                    key_note(&scope).trim_end_matches('.')
                ));
            }
            _ => {
                op["security"] = signed_in;
                op["description"] = json!(key_note(&scope));
            }
        }
        let body_schema = match route.body.as_str() {
            "" => None,
            body => body_message_schema(body, &input, &path_params, &mut refs),
        };
        if let Some(schema) = body_schema {
            // An empty body is accepted (every field takes its default); the service says
            // what it requires.
            op["requestBody"] =
                json!({"required": false, "content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(path)
            .or_default()
            .insert(route.method.as_str().to_lowercase(), op);
    }
    paths
        .entry(crate::overview::PATH.to_string())
        .or_default()
        .insert("get".into(), crate::overview::operation(&mut refs));
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    while let Some(m) = refs.pop() {
        if !schemas.contains_key(m.full_name()) {
            let schema = message_schema(&m, &mut refs);
            schemas.insert(m.full_name().to_string(), schema);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "ordermesh", "version": "v1",
            "description": "REST/JSON surface of ordermesh, generated from the gRPC contracts. Bodies are proto3 JSON; money is {currency, amountMinor}."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "An API key (`POST /v1/api-keys`); `Authorization: ApiKey <key>` is accepted too."}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_resource_literals() {
        assert_eq!(
            openapi_path("/v1/{name=orders/*}:cancel"),
            (
                "/v1/orders/{name}:cancel".into(),
                vec![PathParam {
                    name: "name".into(),
                    field: "name".into()
                }]
            )
        );
        assert_eq!(
            openapi_path("/v1/products"),
            ("/v1/products".into(), vec![])
        );
        assert_eq!(
            openapi_path("/v1/{product.name=products/*}").0,
            "/v1/products/{name}"
        );
    }

    #[test]
    fn every_route_is_documented_and_every_ref_resolves() {
        let routes = crate::routes::all().unwrap();
        let doc = document(&routes);
        let paths = doc["paths"].as_object().unwrap();
        for r in &routes {
            let (p, _) = openapi_path(&r.template);
            assert!(
                paths[&p][r.method.as_str().to_lowercase()].is_object(),
                "{} {}",
                r.method,
                p
            );
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        assert_eq!(doc["paths"]["/v1/products"]["get"]["security"], json!([]));
        assert_eq!(
            doc["paths"]["/v1/orders"]["post"]["security"],
            json!([{"bearer": []}, {"apiKey": []}])
        );
        assert_eq!(
            doc["paths"]["/v1/orders"]["post"]["description"],
            "API keys need the `orders:write` scope."
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"]["name"],
            "X-API-Key"
        );
        // Generators refuse two templates that differ only in variable names.
        let mut shapes: Vec<String> = paths
            .keys()
            .map(|p| {
                let mut shape = String::new();
                let mut inside = false;
                for c in p.chars() {
                    match c {
                        '{' => {
                            inside = true;
                            shape.push_str("{}");
                        }
                        '}' => inside = false,
                        c if !inside => shape.push(c),
                        _ => {}
                    }
                }
                shape
            })
            .collect();
        let before = shapes.len();
        shapes.sort();
        shapes.dedup();
        assert_eq!(
            shapes.len(),
            before,
            "{:?}",
            paths.keys().collect::<Vec<_>>()
        );
        // Operation ids are unique; a path-bound field is not in the body.
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|ops| {
                ops.as_object()
                    .into_iter()
                    .flat_map(|o| o.values())
                    .filter_map(|op| op["operationId"].as_str())
            })
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids repeat");
        let patch = &doc["paths"]["/v1/products/{name}"]["patch"];
        let body = &patch["requestBody"]["content"]["application/json"]["schema"];
        assert!(body["properties"]["stock"].is_object(), "{body}");
        assert!(body["properties"].get("name").is_none(), "{body}");
        let tail = &doc["paths"]["/v1/audit/events:tail"]["get"]["responses"]["200"]["content"];
        assert!(tail["application/x-ndjson"].is_object() && tail["text/event-stream"].is_object());
        assert!(doc["paths"]["/v1/me/overview"]["get"].is_object());
        // The declared constraints are in the schemas.
        let create = &schemas["ordermesh.order.v1.CreateOrderRequest"];
        assert_eq!(create["required"], json!(["currency", "idempotencyKey"]));
        assert_eq!(create["properties"]["items"]["minItems"], 1);
        assert_eq!(create["properties"]["idempotencyKey"]["maxLength"], 128);
        let item = &schemas["ordermesh.order.v1.OrderItem"]["properties"];
        assert_eq!(item["sku"]["pattern"], "^[A-Z0-9-]{1,32}$");
        assert_eq!(item["quantity"]["maximum"], 1000);
        let list = &doc["paths"]["/v1/orders"]["get"]["parameters"];
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "pageSize" && p["schema"]["minimum"] == 0),
            "{list}"
        );
        let money = &schemas["ordermesh.type.v1.Money"]["properties"];
        assert_eq!(money["amountMinor"]["type"], "string");
    }
}
