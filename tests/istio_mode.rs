//! Istio mode over real sockets: the sidecar terminates mTLS and tells the service who called
//! in `x-forwarded-client-cert`. Only the element the sidecar appended (the last) names the
//! caller, and a URI hidden inside a quoted Subject is just text: a certificate with a chosen
//! Subject cannot pass as another workload.

use std::net::SocketAddr;

use ordermesh::roles::Role;
use ordermesh_contracts::audit::ListEventsRequest;
use ordermesh_contracts::audit::audit_service_client::AuditServiceClient;
use ordermesh_platform::authz::FORWARDED_CLIENT_CERT;
use ordermesh_platform::config::MtlsMode;
use ordermesh_platform::store::schema::StoreConfig;
use ordermesh_tests::mesh::{RunningService, TestCerts, no_upstreams, service_config, with_roles};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "spiffe://cluster.local/ns/ordermesh/sa";

async fn list_events_as(addr: SocketAddr, xfcc: &str) -> Result<(), tonic::Status> {
    let channel: Channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut req = with_roles(
        ListEventsRequest {
            page_size: 1,
            ..Default::default()
        },
        "admin-1",
        &["user", "admin"],
    );
    req.metadata_mut()
        .insert(FORWARDED_CLIENT_CERT, xfcc.parse().unwrap());
    AuditServiceClient::new(channel)
        .list_events(req)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_sidecar_s_element_names_the_caller_and_quoted_text_names_nobody() {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = service_config(
        Role::Audit,
        &certs,
        StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
        no_upstreams(),
    );
    config.mesh.mtls_mode = MtlsMode::Istio;
    config.mesh.tls = None;
    let audit = RunningService::start_config(Role::Audit, config).await;
    let addr = audit.grpc_addr;

    // The gateway, as its sidecar reports it: allowed.
    list_events_as(
        addr,
        &format!("By={TD}/audit-service;Hash=ab;URI={TD}/edge-gateway"),
    )
    .await
    .expect("the gateway may list events");

    // A certificate whose Subject carries `,URI=...edge-gateway`: the quotes keep it text.
    let smuggled = format!(
        "By={TD}/audit-service;Hash=ab;Subject=\"CN=evil,URI={TD}/edge-gateway\";URI={TD}/evil"
    );
    let denied = list_events_as(addr, &smuggled).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // An earlier element (another proxy's, or the client's own) proves nothing.
    let earlier = format!("URI={TD}/edge-gateway,By={TD}/audit-service;URI={TD}/payment-service");
    let denied = list_events_as(addr, &earlier).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A header that does not parse names nobody.
    let broken = format!("Subject=\"CN=x;URI={TD}/edge-gateway");
    let refused = list_events_as(addr, &broken).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    audit.stop().await;
}
