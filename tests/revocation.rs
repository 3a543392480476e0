//! Access tokens stop working within about a second of what revoked them (logout, the session
//! revoked for refresh-token reuse, a role change), with no call to user-service per request:
//! the gateway follows user-service's revocation feed.

use std::time::{Duration, Instant};

use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_edge_gateway::limits::Limit;
use ordermesh_tests::gateway::{ADMIN_EMAIL, ADMIN_PASSWORD, SignInMesh};
use ordermesh_tests::http::Api;
use ordermesh_tests::mesh::TestCerts;
use serde_json::json;

/// How long until `api`'s token is refused on `path` (bounded at 10 s).
async fn refused_after(api: &Api, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let r = api.get(path).await;
        if r.status == 401 {
            assert!(
                r.json()["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("revoked"),
                "{}",
                r.text()
            );
            return started.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepted after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mesh whose gateway follows revocations every 500 ms and lets one address sign in
/// often (these tests are about revocation, not limits).
async fn fast_revocations(certs: &TestCerts) -> SignInMesh {
    SignInMesh::start(
        certs,
        GatewayConfig {
            revocation_poll: Duration::from_millis(500),
            rate_account: Limit {
                per_minute: 6000,
                burst: 1000,
            },
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_access_tokens_are_refused_within_seconds() {
    let certs = TestCerts::new();
    let mesh = fast_revocations(&certs).await;
    let gateway = &mesh.gateway;
    let anon = gateway.anonymous();
    let password = "correct horse battery";
    let sign_in = |email: &'static str| {
        let anon = gateway.anonymous();
        async move {
            let r = anon
                .post(
                    "/v1/auth/login",
                    json!({"email": email, "password": password}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let j = r.json();
            (
                anon.with_token(j["accessToken"].as_str().unwrap()),
                j["refreshToken"].as_str().unwrap().to_string(),
            )
        }
    };

    // Logout ends the session's access token too.
    gateway.new_user("rev@example.com").await;
    let (api, refresh) = sign_in("rev@example.com").await;
    assert_eq!(api.get("/v1/users/me").await.status, 200);
    let other_session = sign_in("rev@example.com").await.0;
    let out = anon
        .post("/v1/auth/logout", json!({"refreshToken": refresh}))
        .await;
    assert_eq!(out.status, 200, "{}", out.text());
    let after_logout = refused_after(&api, "/v1/users/me").await;
    assert_eq!(
        other_session.get("/v1/users/me").await.status,
        200,
        "only that session ended"
    );

    // Refresh-token reuse revokes the session: its access tokens stop too.
    let (api, first) = sign_in("rev@example.com").await;
    let second = anon
        .post("/v1/auth/refresh", json!({"refreshToken": first}))
        .await
        .json();
    let third = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": second["refreshToken"]}),
        )
        .await;
    assert_eq!(third.status, 200);
    let reuse = anon
        .post("/v1/auth/refresh", json!({"refreshToken": first}))
        .await;
    assert_eq!(reuse.status, 401);
    let after_reuse = refused_after(&api, "/v1/users/me").await;

    // A profile change is no revocation: the token that made it keeps working.
    let (profile, _) = sign_in("rev@example.com").await;
    let me = profile.get("/v1/users/me").await.json();
    let renamed = profile
        .call(
            "PATCH",
            &format!("/v1/{}", me["name"].as_str().unwrap()),
            Some(json!({"displayName": "Renamed"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        profile.get("/v1/users/me").await.status,
        200,
        "still accepted"
    );

    // A demoted admin's token stops carrying its old roles.
    let admin = gateway.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (target, _) = sign_in("rev@example.com").await;
    let me = target.get("/v1/users/me").await.json();
    let name = me["name"].as_str().unwrap().to_string();
    let promoted = admin
        .post(
            &format!("/v1/{name}:setRoles"),
            json!({"roles": ["ROLE_USER", "ROLE_ADMIN"]}),
        )
        .await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    let (as_admin, _) = sign_in("rev@example.com").await;
    assert_eq!(as_admin.get("/v1/audit:verify").await.status, 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let demoted = admin
        .post(
            &format!("/v1/{name}:setRoles"),
            json!({"roles": ["ROLE_USER"]}),
        )
        .await;
    assert_eq!(demoted.status, 200, "{}", demoted.text());
    let after_demotion = refused_after(&as_admin, "/v1/audit:verify").await;

    eprintln!(
        "revocation: refused {after_logout:?} after logout, {after_reuse:?} after reuse, \
         {after_demotion:?} after demotion (feed followed every 500 ms)"
    );
    for d in [after_logout, after_reuse, after_demotion] {
        assert!(d < Duration::from_secs(2), "refused only after {d:?}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_every_session_and_keeps_the_caller_signed_in() {
    let certs = TestCerts::new();
    let mesh = fast_revocations(&certs).await;
    let gateway = &mesh.gateway;
    let anon = gateway.anonymous();
    let old_password = "correct horse battery";
    let new_password = "a brand new passphrase";
    let sign_in = |password: &'static str| {
        let anon = gateway.anonymous();
        async move {
            let r = anon
                .post(
                    "/v1/auth/login",
                    json!({"email": "pw@example.com", "password": password}),
                )
                .await;
            (r.status, r.json())
        }
    };
    gateway.new_user("pw@example.com").await;
    let (_, first) = sign_in(old_password).await;
    let (_, second) = sign_in(old_password).await;
    let api = anon.with_token(first["accessToken"].as_str().unwrap());
    let other = anon.with_token(second["accessToken"].as_str().unwrap());
    let change = |current: &str, new: &str| {
        api.post(
            "/v1/users/me:changePassword",
            json!({"currentPassword": current, "newPassword": new}),
        )
    };

    // The wrong current password, or a new one that breaks the rules: 400, nothing changes.
    let wrong = change("not the password at all", new_password).await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(wrong.json()["violations"][0]["field"], "current_password");
    let short = change(old_password, "short").await;
    assert_eq!(short.status, 400, "{}", short.text());
    assert_eq!(api.get("/v1/users/me").await.status, 200);

    let changed = change(old_password, new_password).await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    let pair = changed.json();
    let renewed = anon.with_token(pair["accessToken"].as_str().unwrap());

    // Every earlier session ends: refresh tokens at once, access tokens within the poll.
    for session in [&first, &second] {
        let refreshed = anon
            .post(
                "/v1/auth/refresh",
                json!({"refreshToken": session["refreshToken"]}),
            )
            .await;
        assert_eq!(refreshed.status, 401, "{}", refreshed.text());
    }
    let other_stopped = refused_after(&other, "/v1/users/me").await;
    let own_stopped = refused_after(&api, "/v1/users/me").await;
    assert!(
        other_stopped < Duration::from_secs(5) && own_stopped < Duration::from_secs(5),
        "{other_stopped:?} {own_stopped:?}"
    );
    // The caller stays signed in with the new session, which refreshes as any other.
    assert_eq!(renewed.get("/v1/users/me").await.status, 200);
    let refreshed = anon
        .post(
            "/v1/auth/refresh",
            json!({"refreshToken": pair["refreshToken"]}),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());

    // The old password no longer signs in; the new one does.
    assert_eq!(sign_in(old_password).await.0, 401);
    assert_eq!(sign_in(new_password).await.0, 200);
    mesh.stop().await;
}
