//! Accepted sockets, set up the one way every ordermesh listener wants them.
//!
//! Requests and answers here are small frames. With Nagle's algorithm on, the kernel holds a
//! small write back until the peer acknowledges the previous one, and the peer delays that
//! acknowledgement by up to 40 ms: the tail latency of every hop. Neither tonic (when handed
//! a listener rather than an address) nor `axum::serve` sets `TCP_NODELAY` by itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::serve::{ListenerExt, TapIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Sender;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::admission::{Admission, Ticket};
use crate::tls::{HANDSHAKE_TIMEOUT, ReloadingCredentials};

/// Handshakes finished but not yet taken by the server.
const HANDSHAKED_BACKLOG: usize = 128;

pin_project_lite::pin_project! {
    /// An accepted connection that holds its place under the listener's caps until it closes.
    pub struct Admitted {
        #[pin]
        stream: TcpStream,
        _ticket: Ticket,
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepts connections under `admission`'s caps (refused ones are closed at once) and hands
/// each to `open` in its own task, so a slow or silent client holds up nobody else; what
/// `open` makes of it within [`HANDSHAKE_TIMEOUT`] goes to the server.
fn accept_into<T, F, Fut>(
    listener: TcpListener,
    admission: Admission,
    within: std::time::Duration,
    open: F,
) -> ReceiverStream<std::io::Result<T>>
where
    T: Send + 'static,
    F: Fn(Admitted) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<T>> + Send + 'static,
{
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
            let ticket = match admission.admit(peer.ip()) {
                Ok(t) => t,
                Err(why) => {
                    tracing::debug!(%peer, ?why, "connection refused");
                    continue;
                }
            };
            set_nodelay(&mut stream);
            let opening = open(Admitted {
                stream,
                _ticket: ticket,
            });
            spawn_opening(opening, within, tx.clone(), peer);
        }
    });
    ReceiverStream::new(rx)
}

fn spawn_opening<T: Send + 'static>(
    opening: impl Future<Output = std::io::Result<T>> + Send + 'static,
    within: std::time::Duration,
    tx: Sender<std::io::Result<T>>,
    peer: std::net::SocketAddr,
) {
    tokio::spawn(async move {
        match tokio::time::timeout(within, opening).await {
            Ok(Ok(conn)) => {
                let _ = tx.send(Ok(conn)).await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "connection failed to open"),
            Err(_) => tracing::debug!(%peer, "connection sent nothing in time; closed"),
        }
    });
}

/// The accepted-connection stream for a plaintext tonic server (Istio mode, where the sidecar
/// does mTLS; the kubelet's health port): a connection that sends nothing within
/// [`HANDSHAKE_TIMEOUT`] is closed.
pub fn grpc_incoming(
    listener: TcpListener,
    admission: Admission,
) -> ReceiverStream<std::io::Result<Admitted>> {
    grpc_incoming_within(listener, admission, HANDSHAKE_TIMEOUT)
}

fn grpc_incoming_within(
    listener: TcpListener,
    admission: Admission,
    within: std::time::Duration,
) -> ReceiverStream<std::io::Result<Admitted>> {
    accept_into(listener, admission, within, |conn: Admitted| async move {
        let mut first = [0u8; 1];
        conn.stream.peek(&mut first).await?;
        Ok(conn)
    })
}

/// `listener` for `axum::serve`, with `TCP_NODELAY` on each accepted connection. The
/// concrete type stays visible so `ConnectInfo<SocketAddr>` still works through it.
pub fn http_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

/// The accepted-connection stream for a tonic server doing mTLS itself: each connection's
/// handshake uses the credentials current when it arrives (so rotated certificates apply to
/// new connections without a restart) and must finish within [`HANDSHAKE_TIMEOUT`]. tonic
/// reads the verified client certificate from the stream (`TlsConnectInfo`) as it does for
/// its own TLS.
pub fn tls_incoming(
    listener: TcpListener,
    credentials: ReloadingCredentials,
    admission: Admission,
) -> ReceiverStream<std::io::Result<TlsStream<Admitted>>> {
    accept_into(
        listener,
        admission,
        HANDSHAKE_TIMEOUT,
        move |conn: Admitted| {
            let acceptor = tokio_rustls::TlsAcceptor::from(credentials.current().server_config());
            async move { acceptor.accept(conn).await }
        },
    )
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

    fn admission(max_per_address: usize) -> Admission {
        Admission::new(crate::admission::AdmissionLimits {
            max_connections: 100,
            max_per_address,
            exempt: Vec::new(),
        })
    }

    #[tokio::test]
    async fn grpc_connections_are_accepted_without_nagle() {
        let (listener, addr) = loopback().await;
        let mut incoming = grpc_incoming(listener, admission(10));
        let mut client = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"P")
            .await
            .unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_one_over_the_cap_refused() {
        let (listener, addr) = loopback().await;
        let admission = admission(1);
        let within = std::time::Duration::from_millis(300);
        let _incoming = grpc_incoming_within(listener, admission.clone(), within);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Over the per-address cap while the first holds its place: closed at once.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut second, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "refused");
        // The silent one is closed once the handshake time is up, and its place is freed.
        let n = tokio::time::timeout(
            within * 10,
            tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
        )
        .await
        .expect("closed in time")
        .unwrap_or(0);
        assert_eq!(n, 0, "closed");
        tokio::time::sleep(within).await;
        assert_eq!(admission.open(), 0, "its place is free again");
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
