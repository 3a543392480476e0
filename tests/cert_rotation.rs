//! Certificates rotate without a restart. A real `ordermesh serve` process watches its PEM
//! files; the test rotates the mesh to a new CA the way cert-manager rolls one out (both CAs
//! trusted, certificates replaced, old CA dropped). A connection opened before the rotation
//! keeps working; new handshakes use the new certificate; a client still on the old CA can no
//! longer connect, and a client certificate from the old CA is refused once the old CA is gone.

use std::time::Duration;

use ordermesh::roles::Role;
use ordermesh_platform::identity::workloads;
use ordermesh_tests::mesh::{TestCerts, no_upstreams};
use ordermesh_tests::process::ServiceProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const RELOAD: Duration = Duration::from_millis(200);

async fn check(certs: &TestCerts, addr: std::net::SocketAddr) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(certs.channel(workloads::GATEWAY, workloads::AUDIT, addr));
    tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("no answer within 10 s"))?
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_a_new_ca_rolls_through_a_running_process() {
    let binary = ordermesh_tests::ordermesh_binary!();
    let certs = TestCerts::new();
    let before = certs.snapshot();
    let data = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let audit = ServiceProcess::start_with_env(
        &binary,
        Role::Audit,
        &certs,
        data.path(),
        addr,
        &no_upstreams(),
        &[("ORDERMESH_TLS_RELOAD_MS", RELOAD.as_millis().to_string())],
    )
    .await;

    // A connection made before the rotation, kept open through it.
    let mut open = HealthClient::new(before.channel(workloads::GATEWAY, workloads::AUDIT, addr));
    open.check(HealthCheckRequest::default())
        .await
        .expect("a call before the rotation");

    let new_ca = certs.rotate_to_new_ca(RELOAD * 5).await;

    open.check(HealthCheckRequest::default())
        .await
        .expect("the connection opened before the rotation keeps working");
    check(&certs, addr)
        .await
        .expect("a client on the new CA and certificate connects: the server reloaded");
    let stale = check(&before, addr).await;
    assert!(
        stale.is_err(),
        "a client that trusts only the old CA (and presents an old certificate) is refused"
    );
    // Trusting the new server is not enough: an old-CA client certificate is refused now.
    let old_cert_new_trust = before.snapshot();
    let old_ca = std::fs::read_to_string(before.certs.ca_cert()).unwrap();
    std::fs::write(
        old_cert_new_trust.certs.ca_cert(),
        format!("{old_ca}{}", new_ca.pem.cert_pem),
    )
    .unwrap();
    let refused = check(&old_cert_new_trust, addr).await;
    assert!(
        refused.is_err(),
        "a client certificate from the dropped CA is refused"
    );
    audit.kill();
}
