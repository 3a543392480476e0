//! Errors as RFC 9457 `application/problem+json`, mapped once from gRPC statuses (the
//! google.rpc mapping) with the request id and any field violations. Internal details
//! (backend addresses, store errors) never reach the client.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use ordermesh_platform::status;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: String,
    pub detail: String,
    pub violations: Vec<(String, String)>,
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// The problem type of a gRPC code: its canonical name in kebab case (`INVALID_ARGUMENT` →
/// `invalid-argument`), the same whether the gateway or a backend found the condition.
pub fn code_kind(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid-argument",
        Code::DeadlineExceeded => "deadline-exceeded",
        Code::NotFound => "not-found",
        Code::AlreadyExists => "already-exists",
        Code::PermissionDenied => "permission-denied",
        Code::ResourceExhausted => "resource-exhausted",
        Code::FailedPrecondition => "failed-precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out-of-range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data-loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_string(),
            detail: detail.into(),
            violations: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_violation(mut self, field: &str, description: impl Into<String>) -> Self {
        self.violations
            .push((field.to_string(), description.into()));
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The HTTP form of a gRPC status.
    pub fn from_status(s: &tonic::Status) -> Self {
        use tonic::Code;
        let details = status::details(s);
        let http = match s.code() {
            Code::Ok => StatusCode::OK,
            Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            // The request conflicts with the resource's current state.
            Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let detail = match s.code() {
            Code::Unknown | Code::Internal | Code::DataLoss => {
                // The client gets no internals; the operator gets them in the log.
                tracing::warn!(code = ?s.code(), backend_message = %s.message(), "backend error");
                "internal error".to_string()
            }
            Code::Unavailable => "a backend service is unavailable; retry later".to_string(),
            Code::DeadlineExceeded => "a backend service did not answer in time".to_string(),
            _ => s.message().to_string(),
        };
        // A backend's reason names its condition (`INSUFFICIENT_FUNDS`); otherwise the code
        // does, spelled as the gateway spells the same condition.
        let kind = match &details.reason {
            Some(reason) => reason.to_lowercase().replace(['_', ' '], "-"),
            None => code_kind(s.code()).to_string(),
        };
        let mut p = Self::new(http, &kind, detail);
        p.violations = details
            .violations
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect();
        if http == StatusCode::UNAUTHORIZED {
            p = p.with_header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        if let Some(after) = details.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            p = p.with_header(http::header::RETRY_AFTER, &secs.max(1).to_string());
        }
        p
    }

    /// The problem for the status that ended a stream. A status the backend sent (it has no
    /// local cause) keeps its message unless it is an internal error: a backend that ends a
    /// stream on purpose says how to resume (`resume with after_sequence=…`).
    pub fn stream_end(s: &tonic::Status) -> Self {
        use std::error::Error;
        let mut p = Self::from_status(s);
        let internal = matches!(
            s.code(),
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::DataLoss
        );
        if s.source().is_none() && !internal && !s.message().is_empty() {
            p.detail = s.message().to_string();
        }
        p
    }

    /// The problem+json document.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut body = json!({
            "type": format!("urn:ordermesh:problem:{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "requestId": request_id,
        });
        if !self.violations.is_empty() {
            body["violations"] = self
                .violations
                .iter()
                .map(|(f, d)| json!({"field": f, "description": d}))
                .collect();
        }
        body
    }

    pub fn into_response_with(self, request_id: &str) -> Response {
        let body = self.body(request_id);
        let mut res = (self.status, axum::Json(body)).into_response();
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_the_google_way_and_hide_internals() {
        let cases = [
            (tonic::Code::InvalidArgument, 400),
            (tonic::Code::Unauthenticated, 401),
            (tonic::Code::PermissionDenied, 403),
            (tonic::Code::NotFound, 404),
            (tonic::Code::AlreadyExists, 409),
            (tonic::Code::Aborted, 409),
            (tonic::Code::FailedPrecondition, 409),
            (tonic::Code::ResourceExhausted, 429),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::DeadlineExceeded, 504),
            (tonic::Code::Internal, 500),
        ];
        for (code, http) in cases {
            let p = Problem::from_status(&tonic::Status::new(code, "at 10.0.0.7:50051"));
            assert_eq!(p.status.as_u16(), http, "{code:?}");
            if http >= 500 {
                assert!(
                    !p.detail.contains("10.0.0.7"),
                    "{code:?} leaked {}",
                    p.detail
                );
            }
        }
        let p = Problem::from_status(&tonic::Status::unauthenticated("x"));
        assert!(
            p.headers
                .iter()
                .any(|(n, _)| n == http::header::WWW_AUTHENTICATE)
        );
        let reasoned =
            status::with_reason(tonic::Code::FailedPrecondition, "INSUFFICIENT_FUNDS", "low");
        assert_eq!(Problem::from_status(&reasoned).kind, "insufficient-funds");
        for (code, kind) in [
            (tonic::Code::InvalidArgument, "invalid-argument"),
            (tonic::Code::NotFound, "not-found"),
            (tonic::Code::PermissionDenied, "permission-denied"),
            (tonic::Code::FailedPrecondition, "failed-precondition"),
        ] {
            let p = Problem::from_status(&tonic::Status::new(code, "x"));
            assert_eq!(p.kind, kind, "spelled as the gateway spells it");
        }
    }
}
