//! The OpenAPI 3.1 document of the public REST surface, generated from the same descriptors
//! and bindings the gateway routes by, so it cannot drift from what is served.

use std::collections::BTreeMap;

use ordermesh_contracts::options::Audience;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::Route;

/// `/v1/{name=orders/*}:cancel` → `/v1/orders/{name}:cancel` (OpenAPI parameters are one
/// segment; the literal parts of a resource-name pattern stay in the path).
pub fn openapi_path(template: &str) -> (String, Vec<String>) {
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
        out.push_str(&format!("{{{field}}}"));
        params.push(field.to_string());
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
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "int64"})
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

fn field_schema(field: &FieldDescriptor, refs: &mut Vec<MessageDescriptor>) -> Value {
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
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

fn message_schema(m: &MessageDescriptor, refs: &mut Vec<MessageDescriptor>) -> Value {
    let properties: Map<String, Value> = m
        .fields()
        .map(|f| (f.json_name().to_string(), field_schema(&f, refs)))
        .collect();
    json!({"type": "object", "properties": properties, "additionalProperties": false})
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

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut refs: Vec<MessageDescriptor> = Vec::new();
    for route in routes {
        let (path, path_params) = openapi_path(&route.template);
        let input = route.rpc.descriptor.input();
        let output = route.rpc.descriptor.output();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|p| {
                json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"},
                "description": format!("the last segment of the resource name bound to `{p}`")})
            })
            .collect();
        if route.body != "*" {
            for f in input.fields() {
                let bound = path_params
                    .iter()
                    .any(|p| p.split('.').next() == Some(f.name()));
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
        let mut op = json!({
            "operationId": route.rpc.method,
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
        if route.rpc.server_streaming {
            op["responses"]["200"]["content"]["text/event-stream"] =
                json!({"schema": {"type": "string"}});
        }
        match route.rpc.audience {
            Audience::Public => op["security"] = json!([]),
            Audience::Admin => {
                op["security"] = json!([{"bearer": []}]);
                op["description"] = json!("Administrators only.");
            }
            _ => op["security"] = json!([{"bearer": []}]),
        }
        let body_schema = match route.body.as_str() {
            "" => None,
            "*" => {
                refs.push(input.clone());
                Some(json!({"$ref": format!("#/components/schemas/{}", input.full_name())}))
            }
            field => input
                .get_field_by_name(field)
                .map(|f| field_schema(&f, &mut refs)),
        };
        if let Some(schema) = body_schema {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(path)
            .or_default()
            .insert(route.method.as_str().to_lowercase(), op);
    }
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
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
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
            ("/v1/orders/{name}:cancel".into(), vec!["name".into()])
        );
        assert_eq!(
            openapi_path("/v1/products"),
            ("/v1/products".into(), vec![])
        );
        assert_eq!(
            openapi_path("/v1/{product.name=products/*}").0,
            "/v1/products/{product.name}"
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
            json!([{"bearer": []}])
        );
        let money = &schemas["ordermesh.type.v1.Money"]["properties"];
        assert_eq!(money["amountMinor"]["type"], "string");
    }
}
