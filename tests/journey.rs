//! The newcomer's journey over HTTP against the whole mesh as `ordermesh up` runs it (real
//! mTLS between every hop, the embedded store), with the state asserted after each step;
//! then the ways a client can get it wrong, each with its documented answer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ordermesh_platform::jwt::AccessClaims;
use ordermesh_platform::store::now_unix;
use ordermesh_tests::http::{Api, HttpResponse, request};
use ordermesh_tests::local_mesh::LocalMesh;
use serde_json::json;
use std::time::Duration;

fn token_of(res: &HttpResponse) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_string()
}

async fn eur_balance(api: &Api) -> i64 {
    let w = api.get("/v1/wallet").await.json();
    w["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|m| m["currency"] == "EUR"))
        .and_then(|m| m["amountMinor"].as_str())
        .map_or(0, |s| s.parse().unwrap())
}

async fn stock(api: &Api, sku: &str) -> i64 {
    api.get(&format!("/v1/products/{sku}")).await.json()["stock"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newcomer_journey() {
    let mesh = LocalMesh::start().await;
    let anon = Api {
        addr: mesh.gateway,
        token: None,
    };
    for role in ["user", "order", "payment", "audit"] {
        assert!(
            mesh.mesh_json["services"][role].is_string(),
            "mesh.json lists {role}"
        );
    }
    assert!(mesh.mesh_json["tls"]["ca"].is_string());

    // Browse.
    let products = anon.get("/v1/products").await;
    assert_eq!(products.status, 200);
    assert_eq!(
        products.json()["products"].as_array().unwrap().len(),
        4,
        "the demo catalog is seeded"
    );
    let mug_stock = stock(&anon, "MUG-001").await;

    // Register and log in.
    let reg = anon.post("/v1/users", json!({"email": "ada@example.com", "password": "correct horse battery", "displayName": "Ada"})).await;
    assert_eq!(reg.status, 200, "{}", reg.text());
    assert_eq!(reg.json()["roles"], json!(["ROLE_USER"]));
    let login = anon
        .post(
            "/v1/auth/login",
            json!({"email": "ada@example.com", "password": "correct horse battery"}),
        )
        .await;
    let tokens = login.json();
    assert_eq!(tokens["tokenType"], "Bearer");
    assert_eq!(tokens["expiresIn"], "900");
    let ada = anon.with_token(&token_of(&login));
    let me = ada.get("/v1/users/me").await;
    assert_eq!(me.json()["email"], "ada@example.com");
    assert_eq!(me.header("content-type"), Some("application/json"));

    // Deposit, order, see it confirmed and the wallet debited.
    let dep = ada.post("/v1/wallet/deposits", json!({"amount": {"currency": "EUR", "amountMinor": "5000"}, "idempotencyKey": "dep-1"})).await;
    assert_eq!(
        dep.json()["balanceAfter"]["amountMinor"],
        "5000",
        "{}",
        dep.text()
    );
    let order = ada
        .post("/v1/orders", json!({"items": [{"sku": "MUG-001", "quantity": 2}], "currency": "EUR", "idempotencyKey": "order-1"}))
        .await;
    let order = order.json();
    assert_eq!(order["state"], "ORDER_STATE_CONFIRMED", "{order}");
    assert_eq!(order["total"]["amountMinor"], "2500");
    let name = order["name"].as_str().unwrap().to_string();
    assert_eq!(eur_balance(&ada).await, 2500);
    assert_eq!(stock(&anon, "MUG-001").await, mug_stock - 2);
    let listed = ada.get("/v1/orders?pageSize=10").await.json();
    assert_eq!(listed["orders"][0]["name"], name.as_str());
    let overview = ada.get("/v1/me/overview").await.json();
    assert_eq!(overview["profile"]["email"], "ada@example.com");
    assert_eq!(overview["wallet"]["balances"][0]["amountMinor"], "2500");
    assert_eq!(overview["recentOrders"][0]["name"], name.as_str());
    assert_eq!(overview["unavailable"], json!([]));

    // Cancel and see the refund and the stock back.
    let cancelled = ada
        .post(&format!("/v1/{name}:cancel"), json!({}))
        .await
        .json();
    assert_eq!(cancelled["state"], "ORDER_STATE_CANCELLED", "{cancelled}");
    assert_eq!(eur_balance(&ada).await, 5000);
    assert_eq!(stock(&anon, "MUG-001").await, mug_stock);
    let txns = ada.get("/v1/wallet/transactions").await.json();
    let kinds: Vec<_> = txns["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "TRANSACTION_KIND_REFUND",
            "TRANSACTION_KIND_CHARGE",
            "TRANSACTION_KIND_DEPOSIT"
        ]
    );

    // The audit trail, as admin.
    let admin_login = anon
        .post(
            "/v1/auth/login",
            json!({"email": mesh.admin.0, "password": mesh.admin.1}),
        )
        .await;
    let admin = anon.with_token(&token_of(&admin_login));
    let forbidden = ada.get("/v1/audit/events").await;
    forbidden.problem(403);
    let mut actions = Vec::new();
    for _ in 0..100 {
        let events = admin
            .get(&format!("/v1/audit/events?resource={name}&pageSize=50"))
            .await
            .json();
        actions = events["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["event"]["action"].as_str().unwrap().to_string())
            .collect();
        if actions.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        actions,
        ["order.created", "order.confirmed", "order.cancelled"]
    );
    let verify = admin.get("/v1/audit:verify").await.json();
    assert_eq!(verify["ok"], true, "{verify}");

    // Refresh rotates; logout ends the session.
    let refreshed = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": tokens["refreshToken"]}),
        )
        .await;
    assert_eq!(refreshed.status, 200);
    // The same token again at once (a retry whose answer was lost): the same new pair.
    let retried = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": tokens["refreshToken"]}),
        )
        .await;
    assert_eq!(retried.status, 200);
    assert_eq!(
        retried.json()["refreshToken"],
        refreshed.json()["refreshToken"]
    );
    let rotated = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": refreshed.json()["refreshToken"]}),
        )
        .await;
    assert_eq!(rotated.status, 200);
    // Two rotations old: stolen. 401, and the session is over.
    let reuse = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": tokens["refreshToken"]}),
        )
        .await;
    reuse.problem(401);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_on_dynamodb_too() {
    let endpoint = ordermesh_tests::moto::moto().endpoint.clone();
    let prefix = format!("up{}-", std::process::id());
    let mesh = LocalMesh::start_on(ordermesh::up::UpStore::DynamoDb {
        endpoint: Some(endpoint),
        table_prefix: prefix,
    })
    .await;
    let anon = Api {
        addr: mesh.gateway,
        token: None,
    };
    assert_eq!(
        anon.get("/v1/products").await.json()["products"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    anon.post("/v1/users", json!({"email": "dy@example.com", "password": "correct horse battery", "displayName": "Dy"})).await;
    let dy = anon.with_token(&token_of(
        &anon
            .post(
                "/v1/auth/login",
                json!({"email": "dy@example.com", "password": "correct horse battery"}),
            )
            .await,
    ));
    dy.post(
        "/v1/wallet/deposits",
        json!({"amount": {"currency": "EUR", "amountMinor": "3000"}, "idempotencyKey": "d"}),
    )
    .await;
    let order = dy.post("/v1/orders", json!({"items": [{"sku": "TEE-002", "quantity": 1}], "currency": "EUR", "idempotencyKey": "o"})).await.json();
    assert_eq!(order["state"], "ORDER_STATE_CONFIRMED", "{order}");
    assert_eq!(eur_balance(&dy).await, 600);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mistake_gets_its_documented_answer() {
    let mesh = LocalMesh::start().await;
    let anon = Api {
        addr: mesh.gateway,
        token: None,
    };
    anon.post("/v1/users", json!({"email": "bo@example.com", "password": "correct horse battery", "displayName": "Bo"})).await;
    let bo = anon.with_token(&token_of(
        &anon
            .post(
                "/v1/auth/login",
                json!({"email": "bo@example.com", "password": "correct horse battery"}),
            )
            .await,
    ));

    let unknown = anon.get("/v2/nothing").await.problem(404);
    assert_eq!(unknown["title"], "Not Found");
    let wrong = anon.call("DELETE", "/v1/orders", None).await;
    wrong.problem(405);
    assert_eq!(wrong.header("allow"), Some("GET, POST"));
    let no_token = Api {
        addr: mesh.gateway,
        token: None,
    }
    .get("/v1/wallet")
    .await;
    no_token.problem(401);
    assert!(
        no_token
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"))
    );

    let bad_json = request(
        mesh.gateway,
        "POST",
        "/v1/orders",
        &[
            (
                "authorization",
                &format!("Bearer {}", bo.token.clone().unwrap()),
            ),
            ("content-type", "application/json"),
        ],
        b"{\"items\": [",
    )
    .await;
    bad_json.problem(400);
    let unknown_field = bo
        .post(
            "/v1/orders",
            json!({"items": [], "currency": "EUR", "idempotencyKey": "k", "discount": 5}),
        )
        .await
        .problem(400);
    assert!(
        unknown_field["detail"]
            .as_str()
            .unwrap()
            .contains("discount"),
        "{unknown_field}"
    );
    let wrong_type = bo.post("/v1/orders", json!({"items": [{"sku": "MUG-001", "quantity": "many"}], "currency": "EUR", "idempotencyKey": "k"})).await;
    wrong_type.problem(400);
    let unknown_param = bo.get("/v1/orders?colour=red").await.problem(400);
    assert_eq!(unknown_param["violations"][0]["field"], "colour");
    let violations = (bo.post("/v1/orders", json!({"items": [{"sku": "MUG-001", "quantity": 0}], "currency": "XXX", "idempotencyKey": "k"})).await).problem(400);
    let fields: Vec<_> = violations["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    // Declared constraints first (one server layer, before the handler), then the handler's
    // own checks: a currency we do not support is named once the quantity is right.
    assert_eq!(fields, ["items[0].quantity"]);
    let unsupported = (bo.post("/v1/orders", json!({"items": [{"sku": "MUG-001", "quantity": 1}], "currency": "XXX", "idempotencyKey": "k"})).await).problem(400);
    assert_eq!(unsupported["violations"][0]["field"], "currency");
    let wrong_media = request(
        mesh.gateway,
        "POST",
        "/v1/users",
        &[("content-type", "text/plain")],
        b"{}",
    )
    .await;
    wrong_media.problem(415);
    let huge = vec![b' '; 2 * 1024 * 1024];
    let too_big = request(
        mesh.gateway,
        "POST",
        "/v1/users",
        &[("content-type", "application/json")],
        &huge,
    )
    .await;
    too_big.problem(413);
    let slash = anon.get("/v1/products/MUG%2F001").await;
    slash.problem(400);
    // A declined payment is not an error of the request: the order exists, cancelled, with why.
    let declined = bo.post("/v1/orders", json!({"items": [{"sku": "BOOK-004", "quantity": 1}], "currency": "EUR", "idempotencyKey": "poor"})).await;
    assert_eq!(declined.status, 200);
    assert_eq!(declined.json()["state"], "ORDER_STATE_CANCELLED");
    assert!(
        declined.json()["cancelReason"]
            .as_str()
            .unwrap()
            .contains("insufficient funds")
    );

    // Forged and broken tokens: all 401 with a Bearer challenge.
    let jwks = anon.get("/.well-known/jwks.json").await.json();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let pem = std::fs::read_to_string(mesh.data_dir.join("jwt-signing-key.pem")).unwrap();
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    let now = now_unix();
    let claims = |f: &dyn Fn(&mut AccessClaims)| {
        let mut c = AccessClaims {
            iss: "https://ordermesh.local".into(),
            aud: "ordermesh".into(),
            sub: "someone".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "j".into(),
            roles: vec!["user".into(), "admin".into()],
            sid: String::new(),
        };
        f(&mut c);
        c
    };
    let sign = |c: &AccessClaims, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, c, key).unwrap()
    };
    let valid = sign(&claims(&|_| {}), &kid, &key);
    assert_eq!(
        anon.with_token(&valid).get("/v1/audit:verify").await.status,
        200,
        "a correctly signed token passes"
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&|_| {})).unwrap())
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hmac_with_public_key =
        jsonwebtoken::encode(&hs, &claims(&|_| {}), &EncodingKey::from_secret(&x)).unwrap();
    let other_key = EncodingKey::from_ed_pem(
        ordermesh_user_service::SigningKeys::generate_pem()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let mut tampered = valid.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let forgeries = [
        ("alg none", none),
        ("HMAC with the public key", hmac_with_public_key),
        ("expired", sign(&claims(&|c| c.exp = now - 120), &kid, &key)),
        (
            "not yet valid",
            sign(&claims(&|c| c.nbf = now + 600), &kid, &key),
        ),
        (
            "wrong issuer",
            sign(
                &claims(&|c| c.iss = "https://evil.example".into()),
                &kid,
                &key,
            ),
        ),
        (
            "wrong audience",
            sign(&claims(&|c| c.aud = "another-api".into()), &kid, &key),
        ),
        (
            "unknown kid",
            sign(&claims(&|_| {}), "kid-from-nowhere", &other_key),
        ),
        (
            "another key under our kid",
            sign(&claims(&|_| {}), &kid, &other_key),
        ),
        ("bad signature", tampered),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in forgeries {
        let res = anon.with_token(&token).get("/v1/audit:verify").await;
        assert_eq!(res.status, 401, "{what}: {}", res.text());
        assert!(
            res.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "{what}"
        );
        let write = anon
            .with_token(&token)
            .post(
                "/v1/wallet/deposits",
                json!({"amount": {"currency": "EUR", "amountMinor": "100"}, "idempotencyKey": what}),
            )
            .await;
        assert_eq!(write.status, 401, "{what}: {}", write.text());
    }
    assert_eq!(
        anon.with_token(&valid).get("/v1/wallet").await.json()["balances"],
        json!([]),
        "no forged deposit landed"
    );

    // Client-supplied internal headers are not forwarded: the backend sees the token's user.
    let spoof = request(
        mesh.gateway,
        "GET",
        "/v1/users/me",
        &[
            (
                "authorization",
                &format!("Bearer {}", bo.token.clone().unwrap()),
            ),
            ("x-ordermesh-user-id", "someone-else"),
            ("x-ordermesh-user-roles", "admin"),
        ],
        b"",
    )
    .await;
    assert_eq!(spoof.json()["email"], "bo@example.com");

    // Request ids are kept when sane; responses carry security headers (the traceparent is
    // checked in journey_trace.rs, where telemetry is on).
    let traced = request(
        mesh.gateway,
        "GET",
        "/v1/products",
        &[("x-request-id", "my-id-42")],
        b"",
    )
    .await;
    assert_eq!(traced.header("x-request-id"), Some("my-id-42"));
    assert_eq!(traced.header("x-content-type-options"), Some("nosniff"));
    assert!(traced.header("ratelimit-remaining").is_some());
    // ...every response: a CORS preflight, the gateway's own endpoints, a refused request.
    for (method, path, headers) in [
        (
            "OPTIONS",
            "/v1/products",
            vec![
                ("origin", "https://elsewhere.example"),
                ("access-control-request-method", "GET"),
            ],
        ),
        ("GET", "/healthz", vec![]),
        ("GET", "/readyz", vec![]),
        ("GET", "/openapi.json", vec![]),
        ("GET", "/no/such/route", vec![]),
    ] {
        let res = request(mesh.gateway, method, path, &headers, b"").await;
        assert!(
            res.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{method} {path}: no request id"
        );
        assert_eq!(
            res.header("x-content-type-options"),
            Some("nosniff"),
            "{method} {path}: no security headers"
        );
    }

    // A name the store cannot hold gets a plain 400, not the store's own words.
    let odd = bo.get("/v1/orders/%00").await;
    assert_eq!(odd.status, 400, "{}", odd.text());
    assert!(
        !odd.text().contains("NUL") && !odd.text().contains("bytes"),
        "{}",
        odd.text()
    );

    // The OpenAPI document is served and describes the routes served.
    let doc = anon.get("/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orders/{name}:cancel"]["post"].is_object());
    assert_eq!(
        doc["paths"]["/v1/wallet/deposits"]["post"]["security"],
        json!([{"bearer": []}, {"apiKey": []}])
    );

    // Metrics are on the admin listener only, and use route templates, not raw paths.
    assert_eq!(
        anon.get("/metrics").await.status,
        404,
        "no metrics on the public port"
    );
    let metrics = request(mesh.gateway_admin, "GET", "/metrics", &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(r#"method="GET",route="/v1/{name=users/*}",status="200""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"method="GET",route="/v1/audit:verify",status="401"} 10"#),
        "{metrics}"
    );
    assert!(!metrics.contains("MUG-001"), "no raw paths in labels");

    // The account endpoints are limited per client address (a different account each time,
    // so the per-account sign-in throttle is not what answers).
    let mut limited = None;
    for n in 0..30 {
        let r = anon
            .post(
                "/v1/auth/login",
                json!({"email": format!("bo{n}@example.com"), "password": "wrong password!!"}),
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the login limit trips");
    limited.problem(429);
    assert!(
        limited
            .header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1)
    );
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    mesh.stop().await;
}
