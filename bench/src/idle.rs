//! Idle keep-alive connections: each makes one request, then stays open doing nothing, the
//! way many browsers and mobile clients sit on a gateway.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn probe(stream: &mut TcpStream, path: &str) -> anyhow::Result<()> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // /healthz answers with a short body; the whole response fits in a read or two.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    anyhow::ensure!(got.starts_with(b"HTTP/1.1 200"), "not 200");
    // Drain a body that arrived separately from the head.
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = got.len() - head_end;
    while have < length {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed mid-body");
        have += n;
    }
    Ok(())
}

pub struct IdleConnections {
    streams: Vec<TcpStream>,
    probe: String,
}

impl IdleConnections {
    /// `count` keep-alive connections to the edge gateway, each proven with `/healthz`.
    pub async fn open(addr: SocketAddr, count: usize) -> anyhow::Result<Self> {
        Self::open_probing(addr, count, "/healthz").await
    }

    /// The same, proven with a GET of `probe` (a server's own health path).
    pub async fn open_probing(
        addr: SocketAddr,
        count: usize,
        probe_path: &str,
    ) -> anyhow::Result<Self> {
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let mut s = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connection {i}"))?;
            probe(&mut s, probe_path)
                .await
                .with_context(|| format!("connection {i}"))?;
            streams.push(s);
        }
        Ok(Self {
            streams,
            probe: probe_path.to_string(),
        })
    }

    /// How many of the connections still answer on the same socket.
    pub async fn still_alive(&mut self) -> usize {
        let mut alive = 0;
        for s in &mut self.streams {
            if probe(s, &self.probe).await.is_ok() {
                alive += 1;
            }
        }
        alive
    }

    pub fn count(&self) -> usize {
        self.streams.len()
    }
}
