//! Roles travel one way: the gateway decides with the roles the services will read back
//! (one encoder, one decoder, `ordermesh_platform::user_context`). A token whose role string
//! smuggles a comma (`"user,admin"`) is neither an admin at the gateway nor at a service;
//! a genuine admin role passes both.

use ordermesh_platform::jwt::{AccessClaims, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use ordermesh_tests::http::Api;
use ordermesh_tests::local_mesh::LocalMesh;
use ordermesh_user_service::SigningKeys;

fn mint(keys: &SigningKeys, sub: &str, roles: &[&str]) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    keys.sign(&AccessClaims {
        iss: DEFAULT_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        sub: sub.into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        sid: String::new(),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_inside_a_role_grants_nothing_at_the_gateway_or_at_a_service() {
    let mesh = LocalMesh::start().await;
    let anon = Api {
        addr: mesh.gateway,
        token: None,
    };
    let alice = anon.new_user("alice-roles@example.com").await;
    let bob = anon.new_user("bob-roles@example.com").await;
    let alice_name = alice.get("/v1/users/me").await.json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_id = alice_name.trim_start_matches("users/").to_string();
    let bob_name = bob.get("/v1/users/me").await.json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let pem = std::fs::read_to_string(mesh.data_dir.join("jwt-signing-key.pem")).unwrap();
    let keys = SigningKeys::from_pem(&pem, &[]).unwrap();

    // The minted tokens are genuine: a plain user token reads its own profile.
    let plain = anon.with_token(&mint(&keys, &alice_id, &["user"]));
    assert_eq!(plain.get("/v1/users/me").await.status, 200);

    for smuggled in [&["user,admin"][..], &["user", "admin "], &["user", "Admin"]] {
        let forged = anon.with_token(&mint(&keys, &alice_id, smuggled));
        // The gateway's own admin check (an admin-audience route).
        let verify = forged.get("/v1/audit:verify").await;
        assert_eq!(verify.status, 403, "{smuggled:?}: {}", verify.text());
        // A service's check: another user's profile is for its owner or an admin.
        let other = forged.get(&format!("/v1/{bob_name}")).await;
        assert!(
            matches!(other.status, 403 | 404),
            "{smuggled:?} read another user's profile: {} {}",
            other.status,
            other.text()
        );
    }

    // The real admin role passes both checks, through the same encoding.
    let admin = anon.with_token(&mint(&keys, &alice_id, &["user", "admin"]));
    assert_eq!(admin.get("/v1/audit:verify").await.status, 200);
    let other = admin.get(&format!("/v1/{bob_name}")).await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(other.json()["name"], bob_name);
    mesh.stop().await;
}
