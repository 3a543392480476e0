//! The handler of every route the contracts bind to HTTP: reads the body, transcodes it and
//! the path and query into the request message, calls the backend, and transcodes the
//! answer (or its stream) back to JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, StatusCode, header};

use crate::caller::Caller;
use crate::endpoint::Endpoint;
use crate::problem::Problem;
use crate::request_id::RequestId;
use crate::routes::{Resolved, Route};
use crate::server::Gateway;
use crate::transcode::{self, TranscodeError};

pub async fn handle(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    caller: Caller,
    req: Request<Body>,
) -> Response {
    match proxy(&gw, &request_id, &caller, req).await {
        Ok(res) => res,
        Err(p) => p.into_response_with(request_id.as_str()),
    }
}

async fn proxy(
    gw: &Gateway,
    request_id: &RequestId,
    caller: &Caller,
    req: Request<Body>,
) -> Result<Response, Problem> {
    let (mut parts, body) = req.into_parts();
    let resolved = parts
        .extensions
        .remove::<Endpoint>()
        .map_or(Resolved::NotFound, |e| e.resolved);
    let (route, bindings) = match resolved {
        Resolved::Found(r, b) => (r, b),
        Resolved::WrongMethod(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("allowed: {allow}"),
            )
            .with_header(header::ALLOW, &allow));
        }
        Resolved::EncodedSlash => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-argument",
                "a path parameter contains an encoded '/'",
            ));
        }
        Resolved::NotFound | Resolved::Composite => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such route",
            ));
        }
    };
    let body = json_body(&parts.headers, body, gw.config.body_limit).await?;
    let message = transcode::request(route, &bindings, parts.uri.query(), &body)
        .map_err(transcode_problem)?;
    let metadata = caller.metadata(request_id)?;
    if route.rpc.server_streaming {
        let sse = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
        let stream = gw
            .backends
            .server_streaming(route.rpc, message, &metadata)
            .await
            .map_err(|s| Problem::from_status(&s))?;
        return Ok(stream_response(route, stream, sse, request_id.clone()));
    }
    let bytes = gw
        .backends
        .unary(route.rpc, message, &metadata)
        .await
        .map_err(|s| Problem::from_status(&s))?;
    let json =
        transcode::response_json(&route.rpc.descriptor.output(), &bytes, &route.response_body)
            .map_err(transcode_problem)?;
    let status = StatusCode::from_u16(route.rpc.success_status).unwrap_or(StatusCode::OK);
    Ok((
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

/// The body, at most `limit` bytes, and JSON whenever there is one.
async fn json_body(headers: &http::HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is larger than {limit} bytes"),
        )
    })?;
    if !body.is_empty() {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send application/json",
            ));
        }
    }
    Ok(body)
}

pub fn transcode_problem(e: TranscodeError) -> Problem {
    match &e {
        TranscodeError::BadResponse => Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-gateway",
            "a backend answered with an unreadable message",
        ),
        TranscodeError::UnknownParameter(name) | TranscodeError::BadParameter { name, .. } => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-argument", e.to_string())
                .with_violation(name, e.to_string())
        }
        _ => Problem::new(StatusCode::BAD_REQUEST, "invalid-argument", e.to_string()),
    }
}

/// How often a quiet Server-Sent Events stream gets a comment line, so proxies (Envoy's idle
/// timeout, an ingress's read timeout) do not close a stream that is only waiting.
const SSE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Streams messages as Server-Sent Events or newline-delimited JSON. An error mid-stream
/// ends it with an error event (SSE) or a final problem object (NDJSON), never a silent close.
/// A quiet SSE stream carries a `: keepalive` comment every [`SSE_KEEPALIVE`].
fn stream_response(
    route: &Route,
    stream: tonic::Streaming<Bytes>,
    sse: bool,
    request_id: RequestId,
) -> Response {
    let desc = route.rpc.descriptor.output();
    let body = stream.map(move |item| {
        let (event, json) = match item {
            Ok(bytes) => match transcode::response(&desc, &bytes, "") {
                Ok(v) => ("message", v),
                Err(e) => ("error", transcode_problem(e).body(request_id.as_str())),
            },
            Err(s) => ("error", Problem::stream_end(&s).body(request_id.as_str())),
        };
        let text = if sse {
            format!("event: {event}\ndata: {json}\n\n")
        } else {
            format!("{json}\n")
        };
        Bytes::from(text)
    });
    let body =
        with_keepalive(body, sse.then_some(SSE_KEEPALIVE)).map(Ok::<_, std::convert::Infallible>);
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// `messages`, with a `: keepalive` comment whenever `every` passes without one; ends when
/// `messages` does.
fn with_keepalive(
    messages: impl futures::Stream<Item = Bytes> + Send + 'static,
    every: Option<std::time::Duration>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let messages = Box::pin(messages);
    futures::stream::unfold(messages, move |mut messages| async move {
        let next = match every {
            None => messages.next().await,
            Some(every) => match tokio::time::timeout(every, messages.next()).await {
                Ok(next) => next,
                Err(_) => Some(Bytes::from_static(b": keepalive\n\n")),
            },
        };
        next.map(|item| (item, messages))
    })
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    #[tokio::test]
    async fn a_quiet_stream_gets_comments_and_still_ends_with_its_messages() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = with_keepalive(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(std::time::Duration::from_millis(50)),
        );
        tokio::pin!(stream);
        tx.send(Bytes::from_static(b"event: message\n\n"))
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap(), "event: message\n\n");
        // Nothing for a while: a comment, which SSE clients ignore.
        assert_eq!(stream.next().await.unwrap(), ": keepalive\n\n");
        drop(tx);
        assert!(stream.next().await.is_none(), "ends with its messages");
    }
}
