//! A minimal HTTP/1.1 client for tests (one request per connection, chunked bodies decoded),
//! with a streaming read for long-lived responses such as Server-Sent Events.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 9457 problem with `status` (its content type, status, request id and
    /// one of our problem types) and returns its body.
    pub fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["requestId"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(
            p["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:ordermesh:problem:"))
        );
        p
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

async fn send(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<tokio::net::TcpStream> {
    let mut stream = match from {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A server may answer (413, 400) and close before the whole body is written; its answer
    // is then already on the way, so a refused write is not yet a failed request.
    if let Err(e) = stream.write_all(body).await
        && !refused(&e)
    {
        return Err(e);
    }
    Ok(stream)
}

fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

/// Sends one request and reads the whole response (bounded to 30 s).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Like [`request`], with failures returned rather than panicking.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    try_request_from(None, addr, method, path, headers, body).await
}

/// Like [`try_request`], from the local address `from` (another loopback address stands for
/// another client machine).
pub async fn try_request_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = send(from, addr, method, path, headers, body).await?;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no response within 30 s")
        })?;
    match read {
        Ok(_) => {}
        // Closing with our unread body still queued makes the server's kernel reset the
        // connection; what it answered before that has been read.
        Err(e) if refused(&e) && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response head",
        ));
    }
    Ok(parse(&raw))
}

/// Parses a response read so far: a partial chunked body decodes up to its last whole chunk.
fn parse(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A response read as it arrives.
pub struct StreamingResponse {
    stream: tokio::net::TcpStream,
    raw: Vec<u8>,
    closed: bool,
}

impl StreamingResponse {
    /// Sends a GET and returns once the request is written.
    pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        Self {
            stream: send(None, addr, "GET", path, headers, b"")
                .await
                .expect("send request"),
            raw: Vec::new(),
            closed: false,
        }
    }

    /// Reads until `done` holds for what has arrived, the server closes, or `within` passes;
    /// returns the response as read so far.
    pub async fn read_until(
        &mut self,
        within: Duration,
        done: impl Fn(&HttpResponse) -> bool,
    ) -> HttpResponse {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let so_far = parse(&self.raw);
                if done(&so_far) || self.closed {
                    return so_far;
                }
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "stream condition not met within {within:?}; got: {}",
                    String::from_utf8_lossy(&self.raw)
                ),
            }
            if self.closed && !self.raw.windows(4).any(|w| w == b"\r\n\r\n") {
                panic!("closed before a response head");
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A gateway client with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> HttpResponse {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if !bytes.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        request(self.addr, method, path, &headers, &bytes).await
    }
    pub async fn get(&self, path: &str) -> HttpResponse {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: serde_json::Value) -> HttpResponse {
        self.call("POST", path, Some(body)).await
    }
    /// Logs in and returns a client carrying the access token.
    pub async fn login(&self, email: &str, password: &str) -> Self {
        let res = self
            .post(
                "/v1/auth/login",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(res.status, 200, "login: {}", res.text());
        self.with_token(res.json()["accessToken"].as_str().expect("accessToken"))
    }

    /// Registers an account (password "correct horse battery") and logs it in.
    pub async fn new_user(&self, email: &str) -> Self {
        let password = "correct horse battery";
        let res = self
            .post(
                "/v1/users",
                serde_json::json!({"email": email, "password": password, "displayName": "Test"}),
            )
            .await;
        assert_eq!(res.status, 200, "register: {}", res.text());
        self.login(email, password).await
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            addr: self.addr,
            token: Some(token.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// A server that answers 413 from the head alone and closes with the body unread, as the
    /// gateway does for an oversized upload; the kernel then resets the connection.
    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_is_still_returned() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap() > 2 {
                line.clear();
            }
            let mut stream = reader.into_inner();
            stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
        });
        let response = try_request(addr, "POST", "/v1/orders", &[], &vec![b' '; 8 << 20])
            .await
            .unwrap();
        assert_eq!(response.status, 413);
        server.await.unwrap();
    }
}
