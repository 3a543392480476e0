//! The gateway in front of a backend that goes away and comes back: 503 at once, then fast
//! while the circuit is open, and answers again after the cool-down once the backend is back.
//! Also CORS for configured origins only, and gzip when asked for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ordermesh::roles::{Role, Upstreams};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::gateway::RunningGateway;
use ordermesh_tests::http::{Api, request};
use ordermesh_tests::mesh::{RunningService, TestCerts, all_at, no_upstreams};

/// Starts payment-service again on `addr` with its data, and waits (bounded) until the
/// gateway's circuit lets a wallet call through to it.
async fn payment_returns(
    certs: &TestCerts,
    data_dir: &std::path::Path,
    addr: SocketAddr,
    upstreams: Upstreams,
    api: &Api,
) -> RunningService {
    let payment = RunningService::start_on(
        Role::Payment,
        certs,
        StoreConfig::Embedded {
            data_dir: data_dir.to_path_buf(),
        },
        addr,
        upstreams,
    )
    .await;
    // The breaker's cool-down may have grown while the backend was away (it doubles per
    // failed trial, up to 15 s): recovery takes at most that plus one deadline.
    let mut recovered = false;
    for _ in 0..120 {
        if api.get("/v1/wallet").await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the circuit closed again once payment-service was back"
    );
    payment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_opens_the_circuit_and_recovery_closes_it() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let with_audit = Upstreams {
        audit: format!("https://{}", audit.grpc_addr),
        ..no_upstreams()
    };
    let user =
        RunningService::start_with(Role::User, &certs, dirs[1].path(), any, with_audit.clone())
            .await;
    let payment = RunningService::start_with(
        Role::Payment,
        &certs,
        dirs[2].path(),
        any,
        with_audit.clone(),
    )
    .await;
    let payment_addr = payment.grpc_addr;

    let upstreams = Upstreams {
        user: format!("https://{}", user.grpc_addr),
        order: format!("https://{}", audit.grpc_addr),
        payment: format!("https://{payment_addr}"),
        audit: format!("https://{}", audit.grpc_addr),
        notification: format!("https://{}", audit.grpc_addr),
    };
    let gateway = RunningGateway::start(
        &certs,
        &upstreams,
        GatewayConfig {
            deadline: Duration::from_secs(2),
            cors_origins: vec!["https://shop.example".into()],
            ..Default::default()
        },
    )
    .await;
    let gateway_addr = gateway.addr;
    let api = gateway.new_user("cb@example.com").await;
    assert_eq!(api.get("/v1/wallet").await.status, 200);

    payment.stop().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(api.get("/v1/wallet").await.status);
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let started = Instant::now();
    let fast = api.get("/v1/wallet").await;
    assert_eq!(fast.status, 503);
    assert!(
        fast.json()["detail"]
            .as_str()
            .unwrap()
            .contains("unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an open circuit answers at once"
    );

    // One backend down takes neither the gateway out of rotation nor the other routes down;
    // the admin port shows which backend is in trouble.
    let ready = gateway.anonymous().get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        api.get("/v1/users/me").await.status,
        200,
        "user routes still work"
    );
    let health = gateway.admin_port().get("/health/backends").await;
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["backends"]["payment-service"]["status"], "unavailable",
        "{health}"
    );
    assert_eq!(
        health["backends"]["payment-service"]["circuit"], "open",
        "{health}"
    );
    assert_eq!(
        health["backends"]["user-service"]["status"], "serving",
        "{health}"
    );
    assert_eq!(
        gateway.anonymous().get("/metrics").await.status,
        404,
        "metrics are admin-only"
    );

    // Back on the same address; after the cool-down a trial call closes the circuit.
    let payment = payment_returns(&certs, dirs[2].path(), payment_addr, with_audit, &api).await;

    // CORS for a configured origin only.
    let allowed = request(
        gateway_addr,
        "OPTIONS",
        "/v1/products",
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let other = request(
        gateway_addr,
        "OPTIONS",
        "/v1/products",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    // gzip when asked for.
    let zipped = request(
        gateway_addr,
        "GET",
        "/openapi.json",
        &[("accept-encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));

    gateway.stop().await;
    payment.stop().await;
    user.stop().await;
    audit.stop().await;
}

/// Accepts connections and never answers, as a hung process or a dropped route does.
struct BlackHole {
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn at(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { task }
    }

    async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_backend_times_out_then_fails_fast_and_recovers() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let with_audit = Upstreams {
        audit: format!("https://{}", audit.grpc_addr),
        ..no_upstreams()
    };
    let user =
        RunningService::start_with(Role::User, &certs, dirs[1].path(), any, with_audit.clone())
            .await;
    let payment_addr = std::net::TcpListener::bind(any)
        .unwrap()
        .local_addr()
        .unwrap();
    let hole = BlackHole::at(payment_addr).await;
    let deadline = Duration::from_millis(400);
    let gateway = RunningGateway::start(
        &certs,
        &Upstreams {
            user: format!("https://{}", user.grpc_addr),
            payment: format!("https://{payment_addr}"),
            ..all_at(audit.grpc_addr)
        },
        GatewayConfig {
            deadline,
            ..Default::default()
        },
    )
    .await;
    let api = gateway.new_user("bh@example.com").await;

    // Each call waits at most the deadline (plus one retry for a GET) and gets a problem.
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let res = api.get("/v1/wallet").await;
        slowest = slowest.max(started.elapsed());
        statuses.push(res.status);
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
    }
    assert!(
        statuses.iter().all(|s| *s == 504 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        slowest < deadline * 2 + Duration::from_secs(2),
        "bounded by the deadline: {slowest:?}"
    );
    // Open circuit: answered without waiting on the hole.
    let started = Instant::now();
    let fast = api.get("/v1/wallet").await;
    assert_eq!(fast.status, 503, "{}", fast.text());
    assert!(
        started.elapsed() < deadline,
        "an open circuit does not wait for the deadline"
    );

    // The route comes back with a real payment-service behind it.
    hole.close().await;
    let payment = payment_returns(&certs, dirs[2].path(), payment_addr, with_audit, &api).await;

    gateway.stop().await;
    payment.stop().await;
    user.stop().await;
    audit.stop().await;
}
