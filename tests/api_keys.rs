//! API keys over real sockets: created by a signed-in user (the secret shown once), used as
//! `X-API-Key` or `Authorization: ApiKey`, limited per key, kept to their scopes (derived from
//! the contracts) and away from admin methods, revoked and then refused within the gateway's
//! revocation poll.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_edge_gateway::limits::Limit;
use ordermesh_tests::gateway::{ADMIN_EMAIL, ADMIN_PASSWORD, SignInMesh};
use ordermesh_tests::http::{Api, HttpResponse, request};
use ordermesh_tests::mesh::TestCerts;
use serde_json::{Value, json};

async fn with_key(addr: SocketAddr, method: &str, path: &str, key: &str) -> HttpResponse {
    request(addr, method, path, &[("x-api-key", key)], b"").await
}

async fn create_key(api: &Api, body: Value) -> (String, Value) {
    let res = api.post("/v1/api-keys", body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let created = res.json();
    let secret = created["secret"].as_str().expect("secret").to_string();
    (secret, created["apiKey"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_key_acts_as_its_owner_within_its_scopes_and_stops_when_revoked() {
    let certs = TestCerts::new();
    let mesh = SignInMesh::start(
        &certs,
        GatewayConfig {
            revocation_poll: Duration::from_millis(500),
            rate_account: Limit {
                per_minute: 6000,
                burst: 1000,
            },
            rate_api_key: Limit {
                per_minute: 60,
                burst: 8,
            },
            ..Default::default()
        },
    )
    .await;
    let gw = mesh.gateway.addr;
    let shopper = mesh.gateway.new_user("integrator@example.com").await;

    // The scopes come from the contracts.
    let scopes = mesh.gateway.anonymous().get("/v1/api-keys/scopes").await;
    assert_eq!(scopes.status, 200, "{}", scopes.text());
    let scopes = scopes.json()["scopes"].clone();
    for s in [
        "users:read",
        "users:write",
        "orders:write",
        "wallet:read",
        "admin",
    ] {
        assert!(
            scopes.as_array().unwrap().iter().any(|x| x == s),
            "{s}: {scopes}"
        );
    }

    let (secret, key) = create_key(
        &shopper,
        json!({"displayName": "shop sync", "scopes": ["users:read"]}),
    )
    .await;
    assert!(
        secret.starts_with(key["prefix"].as_str().unwrap()),
        "{secret} {key}"
    );
    assert!(secret.starts_with("omk_"));
    let name = key["name"].as_str().unwrap().to_string();

    // Listed without the secret.
    let listed = shopper.get("/v1/api-keys").await;
    assert_eq!(listed.status, 200);
    assert!(listed.text().contains(&name));
    assert!(
        !listed.text().contains(&secret[secret.len() - 20..]),
        "{}",
        listed.text()
    );

    // The key acts as its owner, in either header.
    let me = with_key(gw, "GET", "/v1/users/me", &secret).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["email"], "integrator@example.com");
    let auth = format!("ApiKey {secret}");
    let me = request(gw, "GET", "/v1/users/me", &[("authorization", &auth)], b"").await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert!(
        me.header("ratelimit-limit").is_some(),
        "per-key limit headers"
    );

    // Out of scope, and admin methods: 403.
    let p = (with_key(gw, "PATCH", "/v1/users/me", &secret).await).problem(403);
    assert!(p["detail"].as_str().unwrap().contains("users:write"), "{p}");
    (with_key(gw, "GET", "/v1/audit/events", &secret).await).problem(403);
    // A key never mints keys (nor subscribes webhooks), whatever it asks for.
    let res = request(
        gw,
        "POST",
        "/v1/api-keys",
        &[("x-api-key", &secret), ("content-type", "application/json")],
        br#"{"displayName": "wider", "scopes": ["admin", "users:write"]}"#,
    )
    .await;
    let p = res.problem(403);
    assert!(
        p["detail"].as_str().unwrap().contains("cannot manage"),
        "{p}"
    );
    let res = shopper
        .post(
            "/v1/api-keys",
            json!({"displayName": "x", "scopes": ["api-keys:write"]}),
        )
        .await;
    res.problem(400);
    // Unknown and malformed keys: 401.
    let bad = with_key(gw, "GET", "/v1/users/me", &format!("{secret}x")).await;
    bad.problem(401);
    assert_eq!(bad.header("www-authenticate"), Some("ApiKey"));
    (with_key(gw, "GET", "/v1/users/me", "nonsense").await).problem(401);

    // Creating keys: unknown scopes, and admin on a non-admin's key, are refused.
    let res = shopper
        .post(
            "/v1/api-keys",
            json!({"displayName": "x", "scopes": ["orders:fly"]}),
        )
        .await;
    res.problem(400);
    let res = shopper
        .post(
            "/v1/api-keys",
            json!({"displayName": "x", "scopes": ["admin", "audit:read"]}),
        )
        .await;
    res.problem(400);

    // A per-key budget: the key runs out, its owner's own token does not.
    let mut limited = None;
    for _ in 0..40 {
        let r = with_key(gw, "GET", "/v1/users/me", &secret).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let limited = limited.expect("the key's budget runs out");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert_eq!(shopper.get("/v1/users/me").await.status, 200);

    // Last use is recorded.
    let listed = shopper.get("/v1/api-keys").await.json();
    let entry = listed["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name.as_str())
        .cloned()
        .unwrap();
    assert!(entry["lastUseTime"].is_string(), "{entry}");

    // An admin's key reaches admin methods only with the admin scope.
    let admin = mesh.gateway.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (admin_key, _) = create_key(
        &admin,
        json!({"displayName": "ops", "scopes": ["audit:read", "admin"]}),
    )
    .await;
    let (plain_admin_key, _) = create_key(
        &admin,
        json!({"displayName": "ops2", "scopes": ["audit:read"]}),
    )
    .await;
    let audit = with_key(gw, "GET", "/v1/audit/events", &admin_key).await;
    assert_eq!(audit.status, 200, "{}", audit.text());
    with_key(gw, "GET", "/v1/audit/events", &plain_admin_key)
        .await
        .problem(403);
    // Admins create keys for another account; users do not.
    let shopper_id = shopper.get("/v1/users/me").await.json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, for_shopper) = create_key(
        &admin,
        json!({"displayName": "service", "scopes": ["users:read"], "owner": shopper_id}),
    )
    .await;
    assert_eq!(for_shopper["owner"], shopper_id.as_str());
    let res = shopper
        .post(
            "/v1/api-keys",
            json!({"displayName": "x", "scopes": ["users:read"], "owner": "users/someone-else"}),
        )
        .await;
    res.problem(400);

    // Revoked: refused within the revocation poll; someone else cannot revoke it.
    let other = mesh.gateway.new_user("other@example.com").await;
    let res = other.call("DELETE", &format!("/v1/{name}"), None).await;
    res.problem(404);
    tokio::time::sleep(Duration::from_secs(1)).await; // the budget refills a little
    let res = shopper.call("DELETE", &format!("/v1/{name}"), None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let revoked_at = Instant::now();
    loop {
        let r = with_key(gw, "GET", "/v1/users/me", &secret).await;
        if r.status == 401 {
            break;
        }
        assert!(matches!(r.status, 200 | 429), "{}: {}", r.status, r.text());
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "still accepted 10 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("revoked key refused after {:?}", revoked_at.elapsed());
    let listed = shopper.get("/v1/api-keys").await;
    assert!(!listed.text().contains(&name), "{}", listed.text());

    // The audit trail has the key's creation, first use and revocation.
    let deadline = Instant::now() + Duration::from_secs(15);
    for action in ["api_key.created", "api_key.first_used", "api_key.revoked"] {
        loop {
            let r = admin
                .get(&format!("/v1/audit/events?action={action}&resource={name}"))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            if r.json()["records"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                break;
            }
            assert!(Instant::now() < deadline, "no {action} event for {name}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    mesh.stop().await;
}
