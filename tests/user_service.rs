//! user-service end to end over mTLS: accounts, tokens that verify against the published
//! JWKS, refresh rotation with reuse detection, profiles only their owner (or an admin) sees,
//! admin role management, and every change audited through the outbox.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ordermesh::roles::Role;
use ordermesh_contracts::audit::ListEventsRequest;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::user::user_service_client::UserServiceClient;
use ordermesh_contracts::user::{
    CreateUserRequest, GetJwksRequest, GetUserRequest, LoginRequest, LogoutRequest,
    RefreshTokenRequest, Role as UserRole, SetUserRolesRequest, TokenPair, UpdateUserRequest, User,
};
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::identity::workloads;
use ordermesh_platform::jwt::AccessClaims;
use ordermesh_platform::status;
use ordermesh_tests::mesh::{RunningService, TestCerts, audit_only, with_roles};
use ordermesh_user_service::grpc::TokenConfig;
use tonic::Code;

struct Mesh {
    certs: TestCerts,
    audit: RunningService,
    user: RunningService,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Mesh {
    async fn start() -> Self {
        let certs = TestCerts::new();
        let (a, u) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let audit = RunningService::start(Role::Audit, &certs, a.path()).await;
        let loopback = "127.0.0.1:0".parse().unwrap();
        let user = RunningService::start_with(
            Role::User,
            &certs,
            u.path(),
            loopback,
            audit_only(audit.grpc_addr),
        )
        .await;
        Self {
            certs,
            audit,
            user,
            _dirs: (a, u),
        }
    }

    /// What the gateway is: the edge-gateway identity, forwarding for no one.
    fn gateway(&self) -> UserServiceClient<MeshChannel> {
        UserServiceClient::new(self.certs.channel(
            workloads::GATEWAY,
            workloads::USER,
            self.user.grpc_addr,
        ))
    }

    fn operator(&self) -> UserServiceClient<MeshChannel> {
        UserServiceClient::new(self.certs.channel(
            workloads::OPERATOR,
            workloads::USER,
            self.user.grpc_addr,
        ))
    }

    async fn stop(self) {
        self.user.stop().await;
        self.audit.stop().await;
    }
}

fn id_of(user: &User) -> String {
    user.name.trim_start_matches("users/").to_string()
}

async fn register(gw: &mut UserServiceClient<MeshChannel>, email: &str) -> User {
    gw.create_user(CreateUserRequest {
        email: email.into(),
        password: "correct horse battery".into(),
        display_name: "Ada".into(),
    })
    .await
    .expect("register")
    .into_inner()
}

async fn login(gw: &mut UserServiceClient<MeshChannel>, email: &str) -> TokenPair {
    gw.login(LoginRequest {
        email: email.into(),
        password: "correct horse battery".into(),
    })
    .await
    .expect("login")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_the_token_verifies_against_the_jwks() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway();
    let user = register(&mut gw, "  Ada@Example.com ").await;
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.roles, vec![UserRole::User as i32]);

    let dup = gw
        .create_user(CreateUserRequest {
            email: "ADA@example.com".into(),
            password: "another long password".into(),
            display_name: "Imposter".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let bad = gw
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            password: "short".into(),
            display_name: "".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<_> = status::details(&bad)
        .violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    // Declared constraints first, then the handler's address check.
    assert_eq!(fields, ["password", "display_name"]);
    let bad = gw
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            password: "a long enough password".into(),
            display_name: "Ada".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(status::details(&bad).violations[0].field, "email");

    let tokens = login(&mut gw, "ada@example.com").await;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    let jwks = gw.get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = jwks
        .keys
        .iter()
        .find(|k| Some(&k.kid) == header.kid.as_ref())
        .expect("kid published");
    assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&["https://ordermesh.local"]);
    validation.set_audience(&["ordermesh"]);
    let claims = jsonwebtoken::decode::<AccessClaims>(
        &tokens.access_token,
        &DecodingKey::from_ed_components(&jwk.x).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, id_of(&user));
    assert_eq!(claims.roles, vec!["user"]);
    assert_eq!(claims.exp - claims.iat, 900);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_look_the_same() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway();
    register(&mut gw, "bob@example.com").await;
    let wrong = gw
        .login(LoginRequest {
            email: "bob@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    let unknown = gw
        .login(LoginRequest {
            email: "nobody@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.code(), unknown.code()),
        (Code::Unauthenticated, Code::Unauthenticated)
    );
    assert_eq!(wrong.message(), unknown.message());
    let empty = gw
        .login(LoginRequest {
            email: "".into(),
            password: "".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_reuse_revokes_and_logout_ends_the_session() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway();
    register(&mut gw, "cy@example.com").await;
    let first = login(&mut gw, "cy@example.com").await;
    let refresh = |t: &str| RefreshTokenRequest {
        refresh_token: t.into(),
    };

    let second = gw
        .refresh_token(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    // A retry moments later (the answer was lost): the same new refresh token, session alive.
    let retried = gw
        .refresh_token(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.refresh_token, second.refresh_token);
    let third = gw
        .refresh_token(refresh(&second.refresh_token))
        .await
        .unwrap()
        .into_inner();
    // A token two rotations old comes back: someone else holds it. The session is revoked,
    // even for the newest token.
    let reuse = gw
        .refresh_token(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(reuse.message().contains("reuse"), "{}", reuse.message());
    let after = gw
        .refresh_token(refresh(&third.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);

    let other = login(&mut gw, "cy@example.com").await;
    gw.logout(LogoutRequest {
        refresh_token: other.refresh_token.clone(),
    })
    .await
    .unwrap();
    let gone = gw
        .refresh_token(refresh(&other.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);

    let malformed = gw.refresh_token(refresh("garbage")).await.unwrap_err();
    assert_eq!(malformed.code(), Code::Unauthenticated);
    let missing = gw.refresh_token(refresh("")).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_belong_to_their_owner_and_admins_manage_roles() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway();
    let dee = register(&mut gw, "dee@example.com").await;
    let eve = register(&mut gw, "eve@example.com").await;
    let (dee_id, eve_id) = (id_of(&dee), id_of(&eve));

    let me = gw
        .get_user(with_roles(
            GetUserRequest {
                name: "users/me".into(),
            },
            &dee_id,
            &["user"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.email, "dee@example.com");
    let other = gw
        .get_user(with_roles(
            GetUserRequest {
                name: eve.name.clone(),
            },
            &dee_id,
            &["user"],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        other.code(),
        Code::NotFound,
        "no leak of another user's existence"
    );
    let as_admin = gw
        .get_user(with_roles(
            GetUserRequest {
                name: eve.name.clone(),
            },
            &dee_id,
            &["user", "admin"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_admin.email, "eve@example.com");
    let anonymous = gw
        .get_user(GetUserRequest {
            name: "users/me".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let update = |name: &str, display: &str, paths: &[&str]| UpdateUserRequest {
        user: Some(User {
            name: name.into(),
            display_name: display.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let renamed = gw
        .update_user(with_roles(
            update("users/me", "Dee D.", &["display_name"]),
            &dee_id,
            &["user"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.display_name, "Dee D.");
    let bad_mask = gw
        .update_user(with_roles(
            update("users/me", "x", &["email"]),
            &dee_id,
            &["user"],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_mask.code(), Code::InvalidArgument);
    let not_yours = gw
        .update_user(with_roles(
            update(&eve.name, "hacked", &["display_name"]),
            &dee_id,
            &["user", "admin"],
        ))
        .await
        .unwrap_err();
    assert_eq!(not_yours.code(), Code::NotFound);

    let set = SetUserRolesRequest {
        name: eve.name.clone(),
        roles: vec![UserRole::User as i32, UserRole::Admin as i32],
    };
    let denied = gw
        .set_user_roles(with_roles(set.clone(), &dee_id, &["user"]))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "the authz layer enforces the admin audience"
    );
    let promoted = gw
        .set_user_roles(with_roles(set, &dee_id, &["user", "admin"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        promoted.roles,
        vec![UserRole::User as i32, UserRole::Admin as i32]
    );
    let eve_tokens = login(&mut gw, "eve@example.com").await;
    let claims = jsonwebtoken::dangerous::insecure_decode::<AccessClaims>(&eve_tokens.access_token)
        .unwrap()
        .claims;
    assert_eq!(claims.roles, vec!["user", "admin"]);

    // Operators may read profiles directly; nobody else may forward a user.
    let op = mesh
        .operator()
        .get_user(GetUserRequest {
            name: format!("users/{eve_id}"),
        })
        .await
        .unwrap();
    assert_eq!(op.into_inner().email, "eve@example.com");
    let forged = mesh
        .operator()
        .get_user(with_roles(
            GetUserRequest {
                name: "users/me".into(),
            },
            &eve_id,
            &["admin"],
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied);

    // Every change reached the audit log through the outbox.
    let mut audit = AuditServiceClient::new(mesh.certs.channel(
        workloads::OPERATOR,
        workloads::AUDIT,
        mesh.audit.grpc_addr,
    ));
    let mut actions = Vec::new();
    for _ in 0..100 {
        actions = audit
            .list_events(ListEventsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .map(|r| r.event.unwrap().action)
            .collect::<Vec<_>>();
        if actions.iter().any(|a| a == "user.role_changed")
            && actions.iter().filter(|a| *a == "user.logged_in").count() == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        "user.registered",
        "user.profile_updated",
        "user.role_changed",
        "user.logged_in",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} missing from {actions:?}"
        );
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_refreshes_with_one_token_share_the_new_pair_and_late_reuse_revokes() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway();
    register(&mut gw, "dee@example.com").await;
    let first = login(&mut gw, "dee@example.com").await;
    let refresh = |t: &str| RefreshTokenRequest {
        refresh_token: t.into(),
    };
    // A mobile app retrying on a flaky network: the same token, twice at once.
    let (mut one, mut two) = (mesh.gateway(), mesh.gateway());
    let (a, b) = tokio::join!(
        one.refresh_token(refresh(&first.refresh_token)),
        two.refresh_token(refresh(&first.refresh_token)),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(
        a.refresh_token, b.refresh_token,
        "both get the pair issued once"
    );
    let next = gw
        .refresh_token(refresh(&a.refresh_token))
        .await
        .unwrap()
        .into_inner();

    // Outside the grace window, the replaced token coming back still revokes the session.
    tokio::time::sleep(TokenConfig::default().refresh_reuse_grace + Duration::from_millis(300))
        .await;
    let late = gw
        .refresh_token(refresh(&a.refresh_token))
        .await
        .unwrap_err();
    assert!(late.message().contains("reuse"), "{}", late.message());
    assert!(
        gw.refresh_token(refresh(&next.refresh_token))
            .await
            .is_err()
    );
    mesh.stop().await;
}
