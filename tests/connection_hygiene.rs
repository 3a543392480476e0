//! What a client without credentials can do to the gateway's listener with sockets alone:
//! silent connections, half-sent request heads (slowloris) and idle keep-alives are closed
//! after the head deadline; connections over the per-address cap are refused at once; and a
//! fresh client from another address still gets its answer while all of that goes on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ordermesh_edge_gateway::GatewayConfig;
use ordermesh_platform::admission::AdmissionLimits;
use ordermesh_platform::http_server::HttpSettings;
use ordermesh_tests::gateway::RunningGateway;
use ordermesh_tests::http::try_request_from;
use ordermesh_tests::mesh::{TestCerts, all_at};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
const PER_ADDRESS: usize = 40;

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Whether the server closed `stream` (EOF or reset) within `limit`; bytes it sends first
/// (a 408 or 503) are read past.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_and_greedy_clients_capped() {
    let certs = TestCerts::new();
    // No backend is needed: /healthz and /openapi.json are the gateway's own.
    let gateway = RunningGateway::start(
        &certs,
        &all_at("127.0.0.1:1".parse().unwrap()),
        GatewayConfig {
            http: HttpSettings::new(
                HEAD_TIMEOUT,
                AdmissionLimits {
                    max_connections: 1_000,
                    max_per_address: PER_ADDRESS,
                    exempt: Vec::new(),
                },
            ),
            ..Default::default()
        },
    )
    .await;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 66));
    let bystander = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));
    let addr = gateway.addr;

    // 10 silent, 10 half-sent heads, 10 idle keep-alives after one full request.
    let mut silent = Vec::new();
    let mut half = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..10 {
        silent.push(connect_from(attacker, addr).await.unwrap());
        let mut h = connect_from(attacker, addr).await.unwrap();
        h.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        half.push(h);
        let mut k = connect_from(attacker, addr).await.unwrap();
        k.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = k.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        idle.push(k);
    }
    // The attacker's address is now 10 connections short of its cap: fill it and go over.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..(PER_ADDRESS - 30 + 10) {
        let mut s = connect_from(attacker, addr).await.unwrap();
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && String::from_utf8_lossy(&buf[..n]).contains(" 503 ") => {
                refused += 1;
            }
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            _ => extra.push(s),
        }
    }
    assert_eq!(
        refused, 10,
        "connections over the per-address cap are refused at once"
    );

    // Meanwhile a client from another address is served at once.
    let started = Instant::now();
    let fresh = try_request_from(Some(bystander), addr, "GET", "/healthz", &[], b"")
        .await
        .expect("a fresh client is served");
    assert_eq!(fresh.status, 200);
    let waited = started.elapsed();

    // Every silent, half-sent and idle connection is closed after the head deadline.
    for (kind, conns) in [
        ("silent", &mut silent),
        ("half-sent", &mut half),
        ("idle keep-alive", &mut idle),
    ] {
        for c in conns.iter_mut() {
            assert!(
                closed_within(c, HEAD_TIMEOUT * 4).await,
                "a {kind} connection is still open after {:?}",
                HEAD_TIMEOUT * 4
            );
        }
    }
    // Their places are free again: the attacker's address may connect and be served.
    drop((silent, half, idle, extra));
    tokio::time::sleep(HEAD_TIMEOUT * 2).await;
    let again = try_request_from(Some(attacker), addr, "GET", "/healthz", &[], b"")
        .await
        .expect("served again once its connections closed");
    assert_eq!(again.status, 200);
    eprintln!("connection hygiene: the bystander was answered in {waited:?} during the attack");
    gateway.stop().await;
}

/// The whole answer to `request` on a fresh connection (the server closes after these).
async fn raw_answer(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before taking all of an oversized head.
    let _ = s.write_all(request).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hyper_writes_itself_are_problems_with_the_security_headers_and_a_request_id() {
    let certs = TestCerts::new();
    let gateway = RunningGateway::start(
        &certs,
        &all_at("127.0.0.1:1".parse().unwrap()),
        GatewayConfig::default(),
    )
    .await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600_000)
    );
    let cases: [(&str, &[u8], &str, &str); 3] = [
        (
            "a header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            "400",
            "malformed-request",
        ),
        (
            "a head larger than the server's buffer",
            huge_header.as_bytes(),
            "431",
            "headers-too-large",
        ),
        (
            "an unknown HTTP version",
            b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n",
            "",
            "",
        ),
    ];
    for (what, request, status, kind) in cases {
        let answer = raw_answer(gateway.addr, request).await;
        let Some((head, body)) = answer.split_once("\r\n\r\n") else {
            panic!("{what}: no answer: {answer:?}");
        };
        let head = head.to_ascii_lowercase();
        if !status.is_empty() {
            assert!(
                head.starts_with(&format!("http/1.1 {status} ")),
                "{what}: {head}"
            );
        }
        assert!(
            head.contains("\r\nx-request-id: "),
            "{what}: no request id: {head}"
        );
        for (name, value) in ordermesh_platform::http_error_heads::SECURITY_HEADERS {
            assert!(
                head.contains(&format!("\r\n{name}: {}", value.to_ascii_lowercase())),
                "{what}: no {name}: {head}"
            );
        }
        assert!(
            head.contains("content-type: application/problem+json"),
            "{what}: {head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: body {body:?} is not JSON: {e}"));
        if !kind.is_empty() {
            assert_eq!(
                problem["type"],
                format!("urn:ordermesh:problem:{kind}"),
                "{what}"
            );
        }
    }
    gateway.stop().await;
}
