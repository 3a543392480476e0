//! An open-loop HTTP/1.1 load: requests are due at a fixed rate whether or not earlier ones
//! were answered, and each latency is counted from when its request was due, not from when a
//! connection got round to sending it. A closed-loop client (wrk) waits for an answer before
//! asking again, so a stalled server also stalls the load and the stall is never measured
//! (coordinated omission); here it is.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::measure::Measured;

/// `rate` GETs of `path` a second for `duration`, spread over `connections` keep-alive
/// connections (a request due while its connection is busy waits, and that wait counts).
pub async fn run(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    connections: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let connections = connections.max(1);
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request = std::sync::Arc::new(request.into_bytes());
    let mut queues = Vec::with_capacity(connections);
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        queues.push(tx);
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        workers.push(tokio::spawn(connection(stream, request.clone(), rx)));
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        // Round-robin, as a load balancer in front would spread them.
        let _ = queues[(i as usize) % connections].send(due);
    }
    drop(queues);
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await?;
        histogram.add(h)?;
        errors += e;
    }
    Ok(Measured::from_histogram(
        &histogram,
        errors,
        started.elapsed(),
    ))
}

/// Sends each request as it falls due and records its latency from that moment.
async fn connection(
    stream: TcpStream,
    request: std::sync::Arc<Vec<u8>>,
    mut due: mpsc::UnboundedReceiver<Instant>,
) -> (hdrhistogram::Histogram<u64>, u64) {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)
        .unwrap_or_else(|_| unreachable!("3 digits is valid"));
    let mut errors = 0;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut broken = false;
    while let Some(at) = due.recv().await {
        if broken {
            errors += 1;
            continue;
        }
        let answered = async {
            write.write_all(&request).await?;
            read_response(&mut read).await
        }
        .await;
        match answered {
            Ok(status) => {
                let _ = histogram.record(at.elapsed().as_micros() as u64);
                if !(200..300).contains(&status) {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                broken = true;
            }
        }
    }
    (histogram, errors)
}

/// Reads one response (status line, headers, a `Content-Length` body); returns its status.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if read.read_line(&mut line).await? == 0 {
        return Err(bad("closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Err(bad("closed in the head"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(|_| bad("content-length"))?;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("transfer-encoding")
        {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    if !chunked {
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        return Ok(status);
    }
    loop {
        line.clear();
        read.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad("chunk size"))?;
        // The chunk and its CRLF (the last chunk has none, only the final CRLF).
        let mut chunk = vec![0u8; size + 2];
        read.read_exact(&mut chunk).await?;
        if size == 0 {
            return Ok(status);
        }
    }
}
