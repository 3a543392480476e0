//! The transcoding conformance suite: `tests/conformance/transcoding.json` holds cases drawn
//! from grpc-gateway's runtime and integration tests, Envoy's transcoder tests,
//! `google/api/http.proto` and the proto3 JSON mapping, each citing its origin and adapted to
//! this API. Every case is a real HTTP request to `ordermesh up`'s gateway; all run, and the
//! failures are reported together.

use std::collections::HashMap;

use ordermesh_tests::http::{Api, HttpResponse, StreamingResponse, request};
use ordermesh_tests::local_mesh::LocalMesh;
use serde_json::{Value, json};

const CASES: &str = include_str!("conformance/transcoding.json");

fn substitute(text: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

fn substitute_value(v: &Value, vars: &HashMap<&str, String>) -> Value {
    match v {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| substitute_value(i, vars)).collect())
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute_value(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Where `actual` does not contain `expected` (objects by subset, arrays element-wise with
/// equal length, anything else by equality).
fn mismatch(expected: &Value, actual: &Value, at: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, ev)| match a.get(k) {
            None => Some(format!("{at}.{k} is missing")),
            Some(av) => mismatch(ev, av, &format!("{at}.{k}")),
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (ev, av))| mismatch(ev, av, &format!("{at}[{i}]"))),
        (e, a) if e == a => None,
        (e, a) => Some(format!("{at}: expected {e}, got {a}")),
    }
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(v, |node, part| match part.parse::<usize>() {
            Ok(i) if node.is_array() => node.get(i),
            _ => node.get(part),
        })
}

struct Callers {
    anonymous: Api,
    user: Api,
    admin: Api,
}

async fn send(case: &Value, callers: &Callers, vars: &HashMap<&str, String>) -> HttpResponse {
    let req = &case["request"];
    let caller = match case["as"].as_str().unwrap_or("anonymous") {
        "user" => &callers.user,
        "admin" => &callers.admin,
        _ => &callers.anonymous,
    };
    let method = req["method"].as_str().unwrap_or("GET");
    let mut target = substitute(req["path"].as_str().unwrap_or("/"), vars);
    if let Some(q) = req["query"].as_str() {
        target = format!("{target}?{}", substitute(q, vars));
    }
    let body: Vec<u8> = if let Some(raw) = req["rawBody"].as_str() {
        substitute(raw, vars).into_bytes()
    } else if let Some(rep) = req.get("rawBodyRepeat") {
        rep["text"]
            .as_str()
            .unwrap_or("a")
            .repeat(rep["times"].as_u64().unwrap_or(1) as usize)
            .into_bytes()
    } else if let Some(b) = req.get("body") {
        substitute_value(b, vars).to_string().into_bytes()
    } else {
        Vec::new()
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(token) = &caller.token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let given: Vec<(String, String)> = req["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    if !body.is_empty() && !given.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    headers.extend(given);
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if req["stream"].as_bool() == Some(true) {
        // A stream stays open: its head and first bytes are what a case checks.
        let mut stream = StreamingResponse::get(caller.addr, &target, &refs).await;
        return stream
            .read_until(std::time::Duration::from_secs(10), |r| !r.body.is_empty())
            .await;
    }
    request(caller.addr, method, &target, &refs, &body).await
}

fn check(case: &Value, res: &HttpResponse, vars: &HashMap<&str, String>) -> Vec<String> {
    let expect = substitute_value(&case["expect"], vars);
    let mut problems = Vec::new();
    if let Some(status) = expect["status"].as_u64()
        && u64::from(res.status) != status
    {
        problems.push(format!("status {} (expected {status})", res.status));
    }
    let content_type = res.header("content-type").unwrap_or("");
    if let Some(want) = expect["contentType"].as_str()
        && !content_type.starts_with(want)
    {
        problems.push(format!("content-type {content_type:?} (expected {want})"));
    }
    for (name, want) in expect["headers"].as_object().into_iter().flatten() {
        let got = res.header(name);
        if got != want.as_str() {
            problems.push(format!("header {name}: {got:?} (expected {want})"));
        }
    }
    let streamed = case["request"]["stream"].as_bool() == Some(true);
    let body: Value = if streamed {
        Value::Null
    } else {
        serde_json::from_slice(&res.body).unwrap_or(Value::Null)
    };
    if content_type.starts_with("application/problem+json") {
        for key in ["type", "title", "status", "detail", "requestId"] {
            if body.get(key).is_none() {
                problems.push(format!("the problem has no {key}"));
            }
        }
    }
    if let Some(want) = expect.get("json")
        && let Some(m) = mismatch(want, &body, "$")
    {
        problems.push(m);
    }
    if let Some(want) = expect["problemType"].as_str()
        && body["type"] != want
    {
        problems.push(format!("problem type {} (expected {want})", body["type"]));
    }
    if let Some(word) = expect["mentions"].as_str() {
        let detail = body["detail"].as_str().unwrap_or("");
        let in_violations = body["violations"].as_array().is_some_and(|vs| {
            vs.iter().any(|v| {
                v["field"].as_str().is_some_and(|f| f.contains(word))
                    || v["description"].as_str().is_some_and(|d| d.contains(word))
            })
        });
        if !detail.contains(word) && !in_violations {
            problems.push(format!("the problem does not mention {word:?}"));
        }
    }
    for (path, pattern) in expect["patterns"].as_object().into_iter().flatten() {
        let re = regex_lite::Regex::new(pattern.as_str().unwrap_or("")).expect("pattern");
        match lookup(&body, path).and_then(Value::as_str) {
            Some(s) if re.is_match(s) => {}
            other => problems.push(format!("{path}: {other:?} does not match {pattern}")),
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_transcodes_as_grpc_gateway_and_envoy_do() {
    let cases: Vec<Value> = serde_json::from_str(CASES).expect("the cases are JSON");
    let mesh = LocalMesh::start().await;
    let anonymous = Api {
        addr: mesh.gateway,
        token: None,
    };
    let user = anonymous.new_user("conformance@example.com").await;
    let admin = anonymous.login(&mesh.admin.0, &mesh.admin.1).await;
    let user_name = user.get("/v1/users/me").await.json()["name"]
        .as_str()
        .expect("name")
        .to_string();
    // Placed without funds: payment declines it and it ends CANCELLED.
    let placed = user
        .post(
            "/v1/orders",
            json!({"items": [{"sku": "MUG-001", "quantity": "1"}], "currency": "EUR", "idempotencyKey": "conformance-setup"}),
        )
        .await;
    assert_eq!(placed.status, 200, "{}", placed.text());
    let order = placed.json()["name"]
        .as_str()
        .expect("order name")
        .trim_start_matches("orders/")
        .to_string();
    let sku = format!("CONF-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
    let created = admin
        .post(
            "/v1/products",
            json!({"sku": sku, "displayName": "Conformance thing", "unitPrice": {"currency": "EUR", "amountMinor": "1000"}, "stock": "8"}),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let vars = HashMap::from([
        ("order", order),
        ("user", user_name.trim_start_matches("users/").to_string()),
        ("sku", sku),
    ]);
    let callers = Callers {
        anonymous,
        user,
        admin,
    };

    let mut failures = Vec::new();
    let mut by_area: HashMap<String, usize> = HashMap::new();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        *by_area
            .entry(case["area"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        let res = send(case, &callers, &vars).await;
        let problems = check(case, &res, &vars);
        if !problems.is_empty() {
            failures.push(format!(
                "{id} ({}):\n    {}\n    answer: {} {}",
                case["origin"].as_str().unwrap_or(""),
                problems.join("\n    "),
                res.status,
                String::from_utf8_lossy(&res.body)
                    .chars()
                    .take(400)
                    .collect::<String>()
            ));
        }
    }
    let mut areas: Vec<_> = by_area.into_iter().collect();
    areas.sort();
    eprintln!(
        "transcoding conformance: {} cases ({}), {} failed",
        cases.len(),
        areas
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    mesh.stop().await;
}
