//! The mesh as it runs on Kubernetes, on loopback: two gateways behind a real L7 proxy (nginx,
//! adding `X-Forwarded-For`, as an ingress does), two replicas of every service as
//! `ordermesh serve` processes, one DynamoDB-compatible server (moto) as the shared store.
//!
//! Under steady shopper traffic (place, read, cancel) it rolls every role one replica at a time
//! (SIGTERM, drain, start), SIGKILLs one replica of order- and of payment-service, and rotates
//! every certificate to a new CA (old and new CA trusted side by side first). Clients follow
//! the documented retry policy: idempotent reads, and writes carrying an idempotency key (or
//! whose effect can be read back), are retried on 502/503/504 or a refused connection.
//!
//! At the end: no request failed that the policy did not recover; every order is terminal;
//! nothing was charged twice; every ledger transaction balances and every wallet equals its
//! deposits − charges + refunds; each order's audit events are stored exactly once; every
//! replica (as restarted) served traffic; and per-client rate limits follow the address nginx
//! saw, not the one a client claims.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use ordermesh::roles::{Role, Upstreams};
use ordermesh_contracts::audit::ListEventsRequest;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_contracts::order::catalog_service_client::CatalogServiceClient;
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::order::{CreateProductRequest, OrderState, Product};
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_platform::client::{ChannelFactory, MeshChannel};
use ordermesh_platform::identity::workloads;
use ordermesh_platform::metrics::Metrics;
use ordermesh_platform::money::money;
use ordermesh_tests::http::{HttpResponse, try_request_from};
use ordermesh_tests::ledger::{assert_books_balance, settled};
use ordermesh_tests::mesh::{NAMESPACE, TRUST_DOMAIN, TestCerts, with_roles};
use ordermesh_tests::process::{OrdermeshBinary, RoleCommand, terminate};
use serde_json::json;

const SHOPPERS: u8 = 6;
const DEPOSIT: i64 = 10_000_000;
const RELOAD_MS: u64 = 300;
const SKUS: [(&str, i64); 3] = [("CL-A", 300), ("CL-B", 700), ("CL-C", 1100)];

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// One replica: how to start it, where it answers, and the running process.
struct Replica {
    name: String,
    command: RoleCommand,
    /// gRPC address (services) or HTTP address (gateways).
    serve_addr: SocketAddr,
    /// `/metrics`: the metrics port (services) or the admin port (gateways).
    metrics_addr: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    async fn start(&mut self, binary: &OrdermeshBinary) {
        let mut child = self.command.spawn(binary);
        let started = Instant::now();
        loop {
            let ready = if self.command.role == Role::Gateway {
                ordermesh_tests::http::try_request(self.serve_addr, "GET", "/readyz", &[], b"")
                    .await
                    .is_ok_and(|r| r.status == 200)
            } else {
                tokio::net::TcpStream::connect(self.serve_addr)
                    .await
                    .is_ok()
            };
            if ready {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&self.command.log).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(15).collect();
                panic!(
                    "{} exited at start: {status}; its log ends:\n{}",
                    self.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} not ready within 30 s (see {})",
                self.name,
                self.command.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// SIGTERM, drain, exit, start again (a rolling update's step).
    async fn roll(&mut self, binary: &OrdermeshBinary) {
        if let Some(mut child) = self.child.take() {
            let clean = terminate(&mut child, Duration::from_secs(20)).await;
            assert!(clean, "{} did not drain and exit within 20 s", self.name);
        }
        self.start(binary).await;
    }

    /// SIGKILL (a node failure), then start again.
    async fn crash(&mut self, binary: &OrdermeshBinary) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.start(binary).await;
    }

    /// Requests this process has served since it (last) started.
    async fn served(&self) -> u64 {
        let metrics =
            ordermesh_tests::http::try_request(self.metrics_addr, "GET", "/metrics", &[], b"")
                .await
                .map(|r| r.text())
                .unwrap_or_default();
        let family = if self.command.role == Role::Gateway {
            "ordermesh_http_server_requests_total{"
        } else {
            "ordermesh_rpc_server_requests_total{"
        };
        metrics
            .lines()
            .filter(|l| l.starts_with(family) && !l.contains("rpc_service=\"grpc."))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// nginx as the ingress: round robin over the gateways, `X-Forwarded-For` appended, the next
/// gateway tried when one refuses the connection.
struct Ingress {
    addr: SocketAddr,
    child: Child,
}

impl Ingress {
    async fn start(dir: &Path, gateways: &[SocketAddr]) -> Self {
        let addr = free_addr();
        let servers: String = gateways
            .iter()
            .map(|g| format!("    server {g} max_fails=0;\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream gateways {{\n{servers}  }}\n\
               server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://gateways;\n\
                 proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_next_upstream error timeout;\n      proxy_connect_timeout 2s;\n      proxy_read_timeout 30s;\n\
               }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (tests/support/system-tools.sh installs it)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { addr, child }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// A shopper: its own client address (a loopback address of its own), token and user id.
#[derive(Clone)]
struct Shopper {
    from: IpAddr,
    front: SocketAddr,
    token: String,
    user_id: String,
    tally: Arc<Tally>,
}

fn retryable(r: &std::io::Result<HttpResponse>) -> bool {
    match r {
        Err(_) => true,
        Ok(r) => matches!(r.status, 502..=504),
    }
}

impl Shopper {
    /// One request under the retry policy; `None` when it still failed after ~20 s.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Option<HttpResponse> {
        let auth = format!("Bearer {}", self.token);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut headers = vec![("authorization", auth.as_str())];
        if !bytes.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let mut pause = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            self.tally.requests.fetch_add(1, Ordering::Relaxed);
            let r =
                try_request_from(Some(self.from), self.front, method, path, &headers, &bytes).await;
            if !retryable(&r) {
                return r.ok();
            }
            if started.elapsed() > Duration::from_secs(20) {
                eprintln!(
                    "{method} {path} failed for good: {:?}",
                    r.map(|r| (r.status, r.text()))
                );
                return None;
            }
            self.tally.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Places, reads and (every third) cancels orders until `stop`; returns the order names.
    async fn shop(self, stop: Arc<AtomicBool>) -> Vec<String> {
        let mut placed = Vec::new();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let (sku, _) = SKUS[n as usize % SKUS.len()];
            let body = json!({
                "items": [{"sku": sku, "quantity": 1}],
                "currency": "EUR",
                "idempotencyKey": format!("{}-{n}", self.user_id),
            });
            let Some(r) = self.call("POST", "/v1/orders", Some(body)).await else {
                self.tally.failures.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if r.status != 200 {
                eprintln!("place: {} {}", r.status, r.text());
                self.tally.failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let name = r.json()["name"].as_str().unwrap_or_default().to_string();
            placed.push(name.clone());
            let confirmed = match self.call("GET", &format!("/v1/{name}"), None).await {
                Some(r) if r.status == 200 => r.json()["state"] == "ORDER_STATE_CONFIRMED",
                other => {
                    eprintln!("read {name}: {:?}", other.map(|r| (r.status, r.text())));
                    self.tally.failures.fetch_add(1, Ordering::Relaxed);
                    false
                }
            };
            if n.is_multiple_of(2) {
                match self.call("GET", "/v1/users/me", None).await {
                    Some(r) if r.status == 200 => {}
                    other => {
                        eprintln!("profile: {:?}", other.map(|r| (r.status, r.text())));
                        self.tally.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // An order whose payment is still being settled cannot be cancelled yet (409).
            if n.is_multiple_of(3) && confirmed {
                let path = format!("/v1/{name}:cancel");
                let answer = self
                    .call("POST", &path, Some(json!({"reason": "changed my mind"})))
                    .await;
                let done = match &answer {
                    Some(r) if r.status == 200 => true,
                    // A retried cancel whose first attempt went through: read it back.
                    Some(r) if r.status == 409 || r.status == 400 => self
                        .call("GET", &format!("/v1/{name}"), None)
                        .await
                        .is_some_and(|o| o.json()["state"] == "ORDER_STATE_CANCELLED"),
                    _ => false,
                };
                if !done {
                    eprintln!("cancel {name}: {:?}", answer.map(|r| (r.status, r.text())));
                    self.tally.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        placed
    }
}

/// Prints the warnings and errors the processes logged, for a failed run.
fn dump_problems(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .take(20)
            {
                eprintln!("{}: {line}", path.display());
            }
        }
    }
}

fn jwt_subject(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64 claims"),
    )
    .expect("JSON claims");
    claims["sub"].as_str().expect("sub").to_string()
}

fn channel(certs: &TestCerts, target: &str, endpoints: &str) -> MeshChannel {
    ChannelFactory::new(
        &certs.mesh_config(workloads::GATEWAY),
        Arc::new(Metrics::new()),
    )
    .expect("channel factory")
    .channel(target, endpoints)
    .expect("channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_behind_a_proxy_survive_rolls_crashes_and_certificate_rotation() {
    let binary = ordermesh_tests::ordermesh_binary!();
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = &ordermesh_tests::moto::moto().endpoint;
    let prefix = format!("cl{}-", std::process::id());
    let store_env = [
        ("ORDERMESH_STORE", "dynamodb".to_string()),
        ("ORDERMESH_DYNAMODB_TABLE_PREFIX", prefix.clone()),
        ("ORDERMESH_DYNAMODB_ENDPOINT", moto.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ];

    // The tables, as the chart's hook Job makes them.
    let mut tables = Command::new(binary.path());
    tables
        .args(["tables", "create"])
        .envs(store_env.iter().map(|(k, v)| (*k, v)));
    let out = tables.output().expect("ordermesh tables create");
    assert!(
        out.status.success(),
        "tables create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One signing key for both user-service replicas, as the chart mounts one Secret.
    let signing_key = dir.path().join("jwt-signing-key.pem");
    std::fs::write(
        &signing_key,
        ordermesh_user_service::keys::SigningKeys::generate_pem().expect("signing key"),
    )
    .expect("write signing key");

    let roles = [Role::Audit, Role::Payment, Role::User, Role::Order];
    let grpc: HashMap<Role, [SocketAddr; 2]> = roles
        .iter()
        .map(|r| (*r, [free_addr(), free_addr()]))
        .collect();
    let endpoints = |role: Role| {
        grpc[&role]
            .iter()
            .map(|a| format!("https://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let upstreams = Upstreams {
        user: endpoints(Role::User),
        order: endpoints(Role::Order),
        payment: endpoints(Role::Payment),
        audit: endpoints(Role::Audit),
        notification: String::new(),
    };
    let mut replicas: Vec<Replica> = Vec::new();
    for role in roles {
        for (i, addr) in grpc[&role].iter().enumerate() {
            let name = format!("{}-{i}", role.workload());
            let data = dir.path().join(&name);
            std::fs::create_dir_all(&data).expect("data dir");
            let metrics_addr = free_addr();
            let mut command = RoleCommand::new(role, dir.path().join(format!("{name}.log")))
                .tls(&certs)
                .upstreams(&upstreams)
                .env("ORDERMESH_TRUST_DOMAIN", TRUST_DOMAIN)
                .env("ORDERMESH_NAMESPACE", NAMESPACE)
                .env("ORDERMESH_GRPC_ADDR", addr)
                .env("ORDERMESH_HEALTH_ADDR", free_addr())
                .env("ORDERMESH_METRICS_ADDR", metrics_addr)
                .env("ORDERMESH_DATA_DIR", data.display())
                .env("ORDERMESH_TLS_RELOAD_MS", RELOAD_MS)
                .env("HOSTNAME", &name);
            for (k, v) in &store_env {
                command = command.env(k, v);
            }
            if role == Role::User {
                command = command.env("ORDERMESH_JWT_SIGNING_KEY_FILE", signing_key.display());
            }
            replicas.push(Replica {
                name,
                command,
                serve_addr: *addr,
                metrics_addr,
                child: None,
            });
        }
    }
    let gateway_addrs = [free_addr(), free_addr()];
    for (i, addr) in gateway_addrs.iter().enumerate() {
        let name = format!("edge-gateway-{i}");
        let admin = free_addr();
        let command = RoleCommand::new(Role::Gateway, dir.path().join(format!("{name}.log")))
            .tls(&certs)
            .upstreams(&upstreams)
            .env("ORDERMESH_TRUST_DOMAIN", TRUST_DOMAIN)
            .env("ORDERMESH_NAMESPACE", NAMESPACE)
            .env("ORDERMESH_HTTP_ADDR", addr)
            .env("ORDERMESH_ADMIN_ADDR", admin)
            .env("ORDERMESH_TRUSTED_PROXIES", "127.0.0.1/32")
            .env("ORDERMESH_TLS_RELOAD_MS", RELOAD_MS)
            // This test is about replicas, not the per-user limit.
            .env("ORDERMESH_RATE_LIMIT_PER_MINUTE", 60_000);
        replicas.push(Replica {
            name,
            command,
            serve_addr: *addr,
            metrics_addr: admin,
            child: None,
        });
    }
    for r in &mut replicas {
        r.start(&binary).await;
    }
    let ingress = Ingress::start(dir.path(), &gateway_addrs).await;
    let front = ingress.addr;

    // The catalog, as an admin sets it up.
    let catalog = CatalogServiceClient::new(channel(&certs, workloads::ORDER, &upstreams.order));
    for (sku, price) in SKUS {
        catalog
            .clone()
            .create_product(with_roles(
                CreateProductRequest {
                    product: Some(Product {
                        sku: sku.into(),
                        display_name: sku.into(),
                        unit_price: Some(money("EUR", price)),
                        stock: 1_000_000,
                        ..Default::default()
                    }),
                },
                "admin-1",
                &["user", "admin"],
            ))
            .await
            .expect("create product");
    }

    // Shoppers sign up through the ingress, each from an address of its own.
    let tally = Arc::new(Tally::default());
    let mut shoppers = Vec::new();
    for i in 0..SHOPPERS {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i));
        let email = format!("shopper{i}-{}@example.com", std::process::id());
        let password = "correct horse battery";
        let json_headers = [("content-type", "application/json")];
        let register =
            json!({"email": email, "password": password, "displayName": "Shopper"}).to_string();
        let r = try_request_from(
            Some(from),
            front,
            "POST",
            "/v1/users",
            &json_headers,
            register.as_bytes(),
        )
        .await
        .expect("register");
        assert_eq!(r.status, 200, "register: {}", r.text());
        let login = json!({"email": email, "password": password}).to_string();
        let r = try_request_from(
            Some(from),
            front,
            "POST",
            "/v1/auth/login",
            &json_headers,
            login.as_bytes(),
        )
        .await
        .expect("login");
        assert_eq!(r.status, 200, "login: {}", r.text());
        let token = r.json()["accessToken"].as_str().expect("token").to_string();
        let shopper = Shopper {
            from,
            front,
            user_id: jwt_subject(&token),
            token,
            tally: tally.clone(),
        };
        let deposit = shopper
            .call(
                "POST",
                "/v1/wallet/deposits",
                Some(json!({"amount": {"currency": "EUR", "amountMinor": DEPOSIT.to_string()}, "idempotencyKey": "funds"})),
            )
            .await
            .expect("deposit");
        assert_eq!(deposit.status, 200, "deposit: {}", deposit.text());
        shoppers.push(shopper);
    }

    // Rate limits follow the client address nginx saw: one address spends its login budget
    // (claiming to be someone else changes nothing), another is untouched.
    // A different account each time, so what stops them is the address's budget, not the
    // per-account sign-in throttle.
    let bad_login = |n: usize| {
        json!({"email": format!("nobody{n}@example.com"), "password": "wrong password"}).to_string()
    };
    let spender = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99));
    let mut limited = 0;
    for n in 0..40 {
        let r = try_request_from(
            Some(spender),
            front,
            "POST",
            "/v1/auth/login",
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "198.51.100.1"),
            ],
            bad_login(n).as_bytes(),
        )
        .await
        .expect("login attempt");
        if r.status == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "40 logins from one address were never limited");
    let other = try_request_from(
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 98))),
        front,
        "POST",
        "/v1/auth/login",
        &[("content-type", "application/json")],
        bad_login(1000).as_bytes(),
    )
    .await
    .expect("login from another address");
    assert_eq!(
        other.status,
        401,
        "another client keeps its own budget: {}",
        other.text()
    );

    // Steady traffic while everything happens.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = shoppers
        .iter()
        .map(|s| tokio::spawn(s.clone().shop(stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    // 1. A rolling update of every role, one replica at a time.
    for r in replicas.iter_mut() {
        r.roll(&binary).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rolled_in = started.elapsed();
    // 2. Node failures: one order and one payment replica SIGKILLed.
    for victim in ["order-service-0", "payment-service-1"] {
        let r = replicas
            .iter_mut()
            .find(|r| r.name == victim)
            .expect("replica");
        r.crash(&binary).await;
    }
    // 3. Every certificate rotated to a new CA, without a restart.
    let new_ca = certs
        .rotate_to_new_ca(Duration::from_millis(RELOAD_MS * 5))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (shopper, t) in shoppers.iter().zip(traffic) {
        by_user.insert(shopper.user_id.clone(), t.await.expect("shopper"));
    }
    let requests = tally.requests.load(Ordering::Relaxed);
    let retries = tally.retries.load(Ordering::Relaxed);
    let failures = tally.failures.load(Ordering::Relaxed);
    let placed: usize = by_user.values().map(Vec::len).sum();

    // Every replica, as it runs now, has served traffic.
    let mut spread = Vec::new();
    for r in &replicas {
        spread.push((r.name.clone(), r.served().await));
    }
    eprintln!(
        "cluster: {requests} requests ({retries} retried, {failures} failed), {placed} orders, \
         rolling update {:.1} s; served since (re)start: {spread:?}",
        rolled_in.as_secs_f64()
    );
    if failures > 0 {
        dump_problems(dir.path());
        let kept = dir.keep();
        panic!(
            "{failures} requests failed that the retry policy did not recover (logs in {})",
            kept.display()
        );
    }
    assert!(placed > 0, "orders were placed");
    for (name, served) in &spread {
        assert!(
            *served > 0,
            "{name} served nothing since it (re)started: {spread:?}"
        );
    }

    // The rotated certificates are the ones served: a client trusting only the new CA gets
    // through to every service replica.
    assert_eq!(
        std::fs::read_to_string(certs.certs.ca_cert()).expect("CA bundle"),
        new_ca.pem.cert_pem,
        "the test's own clients now trust only the new CA"
    );
    for role in roles {
        for addr in grpc[&role] {
            let mut channel = tonic_health::pb::health_client::HealthClient::new(channel(
                &certs,
                role.workload(),
                &format!("https://{addr}"),
            ));
            channel
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap_or_else(|e| panic!("{} at {addr} after rotation: {e}", role.workload()));
        }
    }

    // The books and the audit trail.
    let orders = OrderServiceClient::new(channel(&certs, workloads::ORDER, &upstreams.order));
    let wallets =
        PaymentServiceClient::new(channel(&certs, workloads::PAYMENT, &upstreams.payment));
    let audit = AuditServiceClient::new(channel(&certs, workloads::AUDIT, &upstreams.audit));
    for (user, names) in &by_user {
        let mut finals = Vec::new();
        for name in names {
            let o = settled(&orders, user, name).await;
            let state = OrderState::try_from(o.state).unwrap_or_default();
            assert!(
                matches!(state, OrderState::Confirmed | OrderState::Cancelled),
                "{name} ended {state:?}"
            );
            finals.push(o);
        }
        assert_books_balance(&wallets, user, DEPOSIT, &finals).await;
        for o in &finals {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..300 {
                let records = audit
                    .clone()
                    .list_events(with_roles(
                        ListEventsRequest {
                            resource: o.name.clone(),
                            page_size: 100,
                            ..Default::default()
                        },
                        "admin-1",
                        &["user", "admin"],
                    ))
                    .await
                    .expect("list events")
                    .into_inner()
                    .records;
                seen = records.iter().fold(HashMap::new(), |mut m, r| {
                    *m.entry(
                        r.event
                            .as_ref()
                            .map(|e| e.action.clone())
                            .unwrap_or_default(),
                    )
                    .or_insert(0) += 1;
                    m
                });
                let outcome = if o.state == OrderState::Cancelled as i32 {
                    "order.cancelled"
                } else {
                    "order.confirmed"
                };
                if seen.contains_key("order.created") && seen.contains_key(outcome) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(seen.get("order.created"), Some(&1), "{}: {seen:?}", o.name);
            assert!(
                seen.values().all(|n| *n == 1),
                "{} events twice: {seen:?}",
                o.name
            );
        }
    }
    drop(ingress);
}
