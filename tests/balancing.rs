//! Clients spread calls over every replica their endpoint's name resolves to, and follow the
//! name as replicas come and go, without a restart: a replica added under traffic starts
//! taking calls, one removed stops getting them (while still running, as a pod in its
//! termination grace period does), and a failed lookup keeps the replicas already known.
//!
//! The name is resolved by a test resolver standing in for cluster DNS (a headless Service),
//! the only part not real here: every replica is a real mTLS gRPC server on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ordermesh::roles::Role;
use ordermesh_platform::client::{ChannelFactory, MeshChannel, Resolver};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::metrics::Metrics;
use ordermesh_tests::mesh::{RunningService, TestCerts, http_get};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What "DNS" answers now; `None` makes lookups fail.
struct TestDns(Mutex<Option<Vec<SocketAddr>>>);

impl TestDns {
    fn set(&self, addrs: Option<Vec<SocketAddr>>) {
        *self.0.lock().unwrap() = addrs;
    }
}

impl Resolver for TestDns {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        let answer = self.0.lock().unwrap().clone();
        Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("SERVFAIL")) })
    }
}

/// Health checks a replica has answered (from its own metrics).
async fn served(replica: &RunningService) -> u64 {
    let (_, body) = http_get(replica.metrics_addr, "/metrics").await;
    body.lines()
        .filter(|l| {
            l.starts_with("ordermesh_rpc_server_requests_total{")
                && l.contains("rpc_service=\"grpc.health.v1.Health\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (bounded) until `cond` holds; returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_follow_replicas_as_they_are_added_and_removed() {
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        replicas.push(RunningService::start(Role::Audit, &certs, d.path()).await);
    }
    let (a, b, c) = (
        replicas[0].grpc_addr,
        replicas[1].grpc_addr,
        replicas[2].grpc_addr,
    );

    let dns = Arc::new(TestDns(Mutex::new(Some(vec![a, b]))));
    let refresh = Duration::from_millis(100);
    let channel: MeshChannel = ChannelFactory::new(
        &certs.mesh_config(workloads::GATEWAY),
        Arc::new(Metrics::new()),
    )
    .unwrap()
    .with_resolver(dns.clone(), refresh)
    .channel(
        workloads::AUDIT,
        "https://audit-service-headless.test:50051",
    )
    .unwrap();

    // Steady traffic from a few concurrent callers; every call must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (channel, stop, ok, failed) =
                (channel.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut client = HealthClient::new(channel);
                while !stop.load(Ordering::Relaxed) {
                    match client.check(HealthCheckRequest::default()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("call failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    within(
        Duration::from_secs(10),
        "both first replicas take calls",
        || async { served(&replicas[0]).await > 0 && served(&replicas[1]).await > 0 },
    )
    .await;
    assert_eq!(served(&replicas[2]).await, 0, "the third is not in DNS yet");

    // A replica is added: it takes calls after the next lookup.
    dns.set(Some(vec![a, b, c]));
    let rebalanced = within(
        Duration::from_secs(10),
        "the added replica takes calls",
        || async { served(&replicas[2]).await > 0 },
    )
    .await;

    // Lookups fail for a while: the known replicas keep serving.
    dns.set(None);
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(refresh * 5).await;
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "calls go on while DNS is down"
    );

    // A replica is removed from DNS while it still runs: it stops getting calls.
    dns.set(Some(vec![b, c]));
    tokio::time::sleep(refresh * 5).await;
    let frozen = served(&replicas[0]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served(&replicas[0]).await,
        frozen,
        "the removed replica gets no more calls"
    );
    let (b_before, c_before) = (served(&replicas[1]).await, served(&replicas[2]).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served(&replicas[1]).await > b_before && served(&replicas[2]).await > c_before);

    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    eprintln!(
        "balancing: {} calls, {} failed; the added replica took calls {} ms after it was in DNS \
         (lookups every {} ms); spread {:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        rebalanced.as_millis(),
        refresh.as_millis(),
        [
            served(&replicas[0]).await,
            served(&replicas[1]).await,
            served(&replicas[2]).await
        ],
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");
    for r in replicas {
        r.stop().await;
    }
}
