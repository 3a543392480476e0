//! Per-address limits come before authentication and cover every answer: a sender of bad
//! tokens, or of calls it is refused, spends its own address's budget and gets 429 like
//! anyone else, while other addresses keep theirs.

use std::net::{IpAddr, Ipv4Addr};

use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_edge_gateway::limits::Limit;
use ordermesh_tests::gateway::SignInMesh;
use ordermesh_tests::http::try_request_from;
use ordermesh_tests::mesh::TestCerts;

const BURST: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_refused_calls_are_rate_limited_per_address() {
    let certs = TestCerts::new();
    let mesh = SignInMesh::start(
        &certs,
        GatewayConfig {
            rate_address: Limit {
                per_minute: 6,
                burst: BURST,
            },
            ..Default::default()
        },
    )
    .await;
    let gateway = &mesh.gateway;
    let forger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 41));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 42));
    // A token with a kid nobody issued: each one costs the gateway a key lookup.
    let forged = "Bearer eyJhbGciOiJFZERTQSIsImtpZCI6Im5vLXN1Y2gta2V5IiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.c2ln";
    let mut statuses = Vec::new();
    for _ in 0..(BURST + 5) {
        let r = try_request_from(
            Some(forger),
            gateway.addr,
            "GET",
            "/v1/users/me",
            &[("authorization", forged)],
            b"",
        )
        .await
        .unwrap();
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "429 says when to retry");
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        BURST as usize,
        "the burst is spent on 401s: {statuses:?}"
    );
    assert!(
        statuses.iter().skip(BURST as usize).all(|s| *s == 429),
        "{statuses:?}"
    );

    // Another address has its own budget.
    let r = try_request_from(
        Some(other),
        gateway.addr,
        "GET",
        "/v1/users/me",
        &[("authorization", forged)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    // A signed-in user refused an admin route spends its address's budget too.
    let user_api = gateway.new_user("limits@example.com").await;
    let token = format!("Bearer {}", user_api.token.clone().unwrap());
    let caller = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 43));
    let mut refused = Vec::new();
    for _ in 0..(BURST + 3) {
        let r = try_request_from(
            Some(caller),
            gateway.addr,
            "GET",
            "/v1/audit:verify",
            &[("authorization", &token)],
            b"",
        )
        .await
        .unwrap();
        refused.push(r.status);
    }
    assert_eq!(
        refused.iter().filter(|s| **s == 403).count(),
        BURST as usize,
        "{refused:?}"
    );
    assert!(
        refused.iter().skip(BURST as usize).all(|s| *s == 429),
        "{refused:?}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_spread_over_addresses_is_stopped_per_account_alike_for_unknown_ones() {
    let certs = TestCerts::new();
    let mesh = SignInMesh::start(&certs, GatewayConfig::default()).await;
    let gateway = &mesh.gateway;
    gateway.new_user("victim@example.com").await;
    let login = |email: &str, password: &str| {
        serde_json::json!({"email": email, "password": password}).to_string()
    };
    for email in ["victim@example.com", "nobody-here@example.com"] {
        let mut statuses = Vec::new();
        let mut last = None;
        // Each guess from its own address: the per-address limits never see more than one.
        for i in 0..6u8 {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i));
            let r = try_request_from(
                Some(from),
                gateway.addr,
                "POST",
                "/v1/auth/login",
                &[("content-type", "application/json")],
                login(email, &format!("guess number {i}")).as_bytes(),
            )
            .await
            .unwrap();
            statuses.push(r.status);
            last = Some(r);
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "{email}");
        let last = last.unwrap();
        let detail = last.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            detail.starts_with("too many failed sign-ins for this account"),
            "{detail}"
        );
    }
    // The right password does not get through the lock either.
    let r = try_request_from(
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 99))),
        gateway.addr,
        "POST",
        "/v1/auth/login",
        &[("content-type", "application/json")],
        login("victim@example.com", "correct horse battery").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    mesh.stop().await;
}
