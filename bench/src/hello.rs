//! The limit: a minimal HTTP server on the gateway's own stack (tokio, hyper, axum) that
//! answers every request with the same small JSON body.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::get;

const BODY: &str = r#"{"name":"orders/0190a5d0-0000-7000-8000-000000000000","state":"CONFIRMED"}"#;

pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(ordermesh_platform::net::http_listener(listener), app).await?;
    Ok(())
}
