//! Accepted sockets, set up the one way every ordermesh listener wants them.
//!
//! Requests and answers here are small frames. With Nagle's algorithm on, the kernel holds a
//! small write back until the peer acknowledges the previous one, and the peer delays that
//! acknowledgement by up to 40 ms: the tail latency of every hop. Neither tonic (when handed
//! a listener rather than an address) nor `axum::serve` sets `TCP_NODELAY` by itself.

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::tls::{HANDSHAKE_TIMEOUT, ReloadingCredentials};

/// Handshakes finished but not yet taken by the server.
const HANDSHAKED_BACKLOG: usize = 128;

/// The accepted-connection stream for a tonic server, with `TCP_NODELAY` on each connection.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// `listener` for `axum::serve`, with `TCP_NODELAY` on each accepted connection. The
/// concrete type stays visible so `ConnectInfo<SocketAddr>` still works through it.
pub fn http_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

/// The accepted-connection stream for a tonic server doing mTLS itself: each connection's
/// handshake uses the credentials current when it arrives (so rotated certificates apply to
/// new connections without a restart), runs in its own task under [`HANDSHAKE_TIMEOUT`] so a
/// slow or silent client holds up nobody else, and is dropped if it fails. tonic reads the
/// verified client certificate from the stream (`TlsConnectInfo`) as it does for its own TLS.
pub fn tls_incoming(
    listener: TcpListener,
    credentials: ReloadingCredentials,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (mut stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            set_nodelay(&mut stream);
            let acceptor = tokio_rustls::TlsAcceptor::from(credentials.current().server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn set_nodelay(stream: &mut TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use std::net::SocketAddr;
    use tokio_stream::StreamExt;

    async fn loopback() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn grpc_connections_are_accepted_without_nagle() {
        let (listener, addr) = loopback().await;
        let mut incoming = grpc_incoming(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn http_connections_are_accepted_without_nagle() {
        let (listener, addr) = loopback().await;
        let mut listener = http_listener(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
        assert!(peer.ip().is_loopback());
    }

    #[tokio::test]
    async fn a_plain_listener_would_leave_nagle_on() {
        // Guards the premise: if tokio ever turns Nagle off by default, this module can go.
        let (listener, addr) = loopback().await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
    }
}
