//! A real Prometheus (the distribution's package, installed by the test command) scrapes a
//! running gateway and evaluates the shipped rules (`deploy/prometheus/rules.yaml`, with
//! their `for:` durations shortened so the test need not wait minutes): after traffic, a RED
//! query per route answers from Prometheus's HTTP API, and with payment-service down the
//! circuit-breaker alert fires.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ordermesh::roles::{Role, Upstreams};
use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_tests::gateway::{
    ADMIN_EMAIL, ADMIN_PASSWORD, RunningGateway, user_service_with_admin,
};
use ordermesh_tests::http::{Api, request};
use ordermesh_tests::mesh::{RunningService, TestCerts};
use ordermesh_tests::repo_root;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prometheus: SocketAddr, promql: &str) -> Value {
    let res = request(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", encode(promql)),
        &[],
        b"",
    )
    .await;
    serde_json::from_slice(&res.body).unwrap_or(Value::Null)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_red_per_route_and_fires_the_breaker_alert() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} not found: run `bash tests/support/system-tools.sh` (the README's test command does)"
    );
    let certs = TestCerts::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let audit = RunningService::start(Role::Audit, &certs, dirs[0].path()).await;
    let user = user_service_with_admin(&certs, dirs[1].path(), audit.grpc_addr).await;
    let at = |a: SocketAddr| format!("https://{a}");
    // payment- and order-service are down: nothing listens there.
    let upstreams = Upstreams {
        user: at(user.grpc_addr),
        order: "https://127.0.0.1:1".into(),
        payment: "https://127.0.0.1:1".into(),
        audit: at(audit.grpc_addr),
        notification: "https://127.0.0.1:1".into(),
    };
    let gateway = RunningGateway::start(&certs, &upstreams, GatewayConfig::default()).await;
    let admin = gateway.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    // The shipped rules, alerts due at once.
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/rules.yaml"))
        .expect("the shipped rules");
    let quick = regex_lite::Regex::new(r"(?m)^(\s*for:\s*)\S+")
        .unwrap()
        .replace_all(&rules, "${1}1s");
    let dir = dirs[2].path();
    std::fs::write(dir.join("rules.yaml"), quick.as_bytes()).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: edge-gateway\n    static_configs:\n      - targets: ['{}']\n",
            gateway.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prometheus = tokio::process::Command::new(PROMETHEUS)
        .current_dir(dir)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let prom = SocketAddr::from(([127, 0, 0, 1], port));

    let traffic = |api: Api| async move {
        for _ in 0..5 {
            api.get("/v1/wallet").await;
            api.get("/v1/users/me").await;
        }
    };
    // RED per route, from Prometheus.
    let started = Instant::now();
    let red = loop {
        traffic(admin.clone()).await;
        let v = query(
            prom,
            r#"sum by (route, status) (rate(ordermesh_http_server_requests_total{job="edge-gateway"}[30s]))"#,
        )
        .await;
        let routes: Vec<String> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["route"].as_str().map(String::from))
            .collect();
        if routes.iter().any(|r| r == "/v1/wallet")
            && routes.iter().any(|r| r == "/v1/{name=users/*}")
        {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no RED answer from Prometheus: {v}\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("RED per route from Prometheus: {red}");

    // payment-service is down: the breaker opens and the alert fires.
    let started = Instant::now();
    let alert = loop {
        let res = request(prom, "GET", "/api/v1/alerts", &[], b"").await;
        let v: Value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
        let firing = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["alertname"] == "OrdermeshCircuitBreakerOpen"
                    && a["labels"]["backend"] == "payment-service"
                    && a["state"] == "firing"
            });
        if let Some(a) = firing {
            break a.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the breaker alert never fired: {v}"
        );
        traffic(admin.clone()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("alert firing: {alert}");
    assert_eq!(alert["labels"]["severity"], "warning");
    let _ = prometheus.kill().await;
    gateway.stop().await;
    user.stop().await;
    audit.stop().await;
}
