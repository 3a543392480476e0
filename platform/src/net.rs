//! Accepted sockets, set up the one way every ordermesh listener wants them.
//!
//! Requests and answers here are small frames. With Nagle's algorithm on, the kernel holds a
//! small write back until the peer acknowledges the previous one, and the peer delays that
//! acknowledgement by up to 40 ms: the tail latency of every hop. Neither tonic (when handed
//! a listener rather than an address) nor `axum::serve` sets `TCP_NODELAY` by itself.

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// The accepted-connection stream for a tonic server, with `TCP_NODELAY` on each connection.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// `listener` for `axum::serve`, with `TCP_NODELAY` on each accepted connection. The
/// concrete type stays visible so `ConnectInfo<SocketAddr>` still works through it.
pub fn http_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
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
