//! The one way ordermesh serves HTTP (the gateway's public and admin listeners, `/metrics`):
//! HTTP/1.1 with a deadline on every request head, so a silent connection, a half-sent head
//! (slowloris) and an idle keep-alive are all closed after [`HttpSettings::header_timeout`];
//! connections admitted against per-process and per-address caps ([`Admission`]), the rest
//! refused at once with a 503; `TCP_NODELAY` on every connection; and graceful shutdown that
//! stops accepting and lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::admission::{Admission, AdmissionLimits, Refusal};
use crate::http_error_heads::{ErrorHeads, problem_response};
use crate::server::DRAIN_TIMEOUT;

/// How an HTTP listener treats its connections.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time allowed for a request head to arrive, counted from when the connection opens or
    /// its previous response was sent: it bounds idle keep-alives too.
    pub header_timeout: Duration,
    pub admission: Admission,
}

impl HttpSettings {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(header_timeout: Duration, limits: AdmissionLimits) -> Self {
        Self {
            header_timeout,
            admission: Admission::new(limits),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_HEADER_TIMEOUT,
            AdmissionLimits::for_this_process(),
        )
    }
}

/// The answer to a connection over the caps.
fn refusal() -> Vec<u8> {
    problem_response(
        503,
        "unavailable",
        "Service Unavailable",
        "too many connections; retry shortly",
    )
}

#[cfg(test)]
#[test]
fn the_refusal_is_well_formed() {
    let bytes = refusal();
    let text = std::str::from_utf8(&bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("content-length: {}", body.len())));
    assert!(head.contains("retry-after: 1") && head.contains("x-request-id: "));
    serde_json::from_str::<serde_json::Value>(body).unwrap();
}

/// Tells a refused client why, if its socket takes the bytes at once, and closes.
fn refuse(stream: TcpStream, peer: SocketAddr, why: Refusal) {
    tracing::debug!(%peer, ?why, "connection refused");
    let _ = stream.try_write(&refusal());
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open requests.
pub async fn serve_http<F>(
    listener: TcpListener,
    app: axum::Router,
    settings: HttpSettings,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors (EMFILE) and the like: pause rather than spin; admitted
                // connections closing will free some.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let ticket = match settings.admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                refuse(stream, peer, why);
                continue;
            }
        };
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(ErrorHeads::new(stream)),
                TowerToHyperService::new(app),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in flight finish; a stream that never ends does not hold the process.
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing remaining HTTP connections");
    }
    Ok(())
}
