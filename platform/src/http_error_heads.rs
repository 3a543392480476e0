//! The headers every HTTP response of ordermesh carries, and the responses hyper writes on its
//! own. hyper answers a request head it cannot parse (400), one too large (431), a URI too
//! long (414) and an unknown HTTP version (505) before any service runs, and offers no hook
//! to shape those answers. [`ErrorHeads`] wraps the connection's writer and replaces exactly
//! those automatic answers (recognised by their status and by lacking the `x-request-id`
//! every application response carries) with problem+json bodies carrying the security
//! headers and a request id, like every other error.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const REQUEST_ID: &str = "x-request-id";

/// Sent on every response: no sniffing, framing, referrers or caching of API answers, and
/// HTTPS only once a browser has seen it.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("strict-transport-security", "max-age=31536000"),
];

/// The problem type, title and detail of each response hyper writes by itself.
fn automatic(status: &[u8]) -> Option<(u16, &'static str, &'static str, &'static str)> {
    Some(match status {
        b"400" => (
            400,
            "malformed-request",
            "Bad Request",
            "the request head is not valid HTTP/1.1",
        ),
        b"414" => (
            414,
            "uri-too-long",
            "URI Too Long",
            "the request target is too long",
        ),
        b"431" => (
            431,
            "headers-too-large",
            "Request Header Fields Too Large",
            "the request head is too large",
        ),
        b"505" => (
            505,
            "http-version-not-supported",
            "HTTP Version Not Supported",
            "use HTTP/1.1",
        ),
        _ => return None,
    })
}

/// A complete response, problem+json, with the security headers and a fresh request id;
/// the connection closes after it.
pub fn problem_response(status: u16, kind: &str, title: &str, detail: &str) -> Vec<u8> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "type": format!("urn:ordermesh:problem:{kind}"),
        "title": title,
        "status": status,
        "detail": detail,
        "requestId": request_id,
    })
    .to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n\
         connection: close\r\ncache-control: no-store\r\n{REQUEST_ID}: {request_id}\r\n"
    );
    if status == 503 {
        head.push_str("retry-after: 1\r\n");
    }
    for (name, value) in SECURITY_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The replacement for `buf` if it is one of hyper's automatic error responses.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let status = buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (code, kind, title, detail) = automatic(status)?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains(&format!("\r\n{REQUEST_ID}:")) {
        return None;
    }
    Some(problem_response(code, kind, title, detail))
}

pin_project_lite::pin_project! {
    /// A connection whose writes pass through unchanged, except hyper's automatic error
    /// responses, which are replaced (see the module docs).
    pub struct ErrorHeads<T> {
        #[pin]
        inner: T,
        pending: Vec<u8>,
        written: usize,
    }
}

impl<T> ErrorHeads<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite> ErrorHeads<T> {
    /// Writes what is left of a replacement; ready when nothing is.
    fn drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        while *this.written < this.pending.len() {
            let n = std::task::ready!(
                this.inner
                    .as_mut()
                    .poll_write(cx, &this.pending[*this.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *this.written += n;
        }
        this.pending.clear();
        *this.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead> AsyncRead for ErrorHeads<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for ErrorHeads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.as_mut().drain(cx))?;
        if let Some(replaced) = replacement(buf) {
            let this = self.as_mut().project();
            *this.pending = replaced;
            *this.written = 0;
            // hyper's bytes count as written; ours go out now or on the next poll.
            return match self.drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.as_mut().drain(cx))?;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.as_mut().drain(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn hypers_own_error_heads_become_problems_and_the_rest_pass_through() {
        let (client, server) = tokio::io::duplex(64);
        let mut wrapped = ErrorHeads::new(server);
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            String::from_utf8(all).unwrap()
        });
        let app = b"HTTP/1.1 400 Bad Request\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\nno";
        wrapped.write_all(app).await.unwrap();
        let hypers = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 17:19:27 GMT\r\n\r\n";
        wrapped.write_all(hypers).await.unwrap();
        wrapped.shutdown().await.unwrap();
        drop(wrapped);
        let text = reader.await.unwrap();
        let (first, second) = text.split_at(app.len());
        assert_eq!(
            first.as_bytes(),
            app,
            "an application response is untouched"
        );
        assert!(second.starts_with("HTTP/1.1 431 "), "{second}");
        let (head, body) = second.split_once("\r\n\r\n").unwrap();
        for (name, value) in SECURITY_HEADERS {
            assert!(head.contains(&format!("{name}: {value}")), "{head}");
        }
        assert!(head.contains("x-request-id: "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["type"], "urn:ordermesh:problem:headers-too-large");
        assert_eq!(problem["status"], 431);
    }
}
