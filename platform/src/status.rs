//! gRPC statuses with `google.rpc` details (encoded by `tonic-types`): field violations
//! (`BadRequest`) that the gateway turns into problem+json `violations`, reasons
//! (`ErrorInfo`) and when to try again (`RetryInfo`).

use std::collections::HashMap;

use tonic::{Code, Status};
pub use tonic_types::FieldViolation;
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "ordermesh";

/// Collects what is wrong with a request, field by field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Adds a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was wrong, else `INVALID_ARGUMENT` listing every violation.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(invalid_argument(self.0))
        }
    }
}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming each bad field.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

/// `INVALID_ARGUMENT` for one field.
pub fn invalid(field: &str, description: &str) -> Status {
    invalid_argument(vec![FieldViolation::new(field, description)])
}

/// A status with a machine-readable reason (`google.rpc.ErrorInfo`), e.g.
/// `FAILED_PRECONDITION` / `INSUFFICIENT_FUNDS`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// A status with a reason and when to try again (`google.rpc.RetryInfo`), which the gateway
/// turns into `Retry-After`.
pub fn retry_later(
    code: Code,
    reason: &str,
    after: std::time::Duration,
    message: impl Into<String>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(after));
    Status::with_error_details(code, message, details)
}

/// The details a status carries, decoded.
#[derive(Debug, Default)]
pub struct Details {
    pub violations: Vec<FieldViolation>,
    pub reason: Option<String>,
    /// When the caller may try again.
    pub retry_after: Option<std::time::Duration>,
}

pub fn details(status: &Status) -> Details {
    let Ok(decoded) = status.check_error_details() else {
        return Details::default();
    };
    Details {
        violations: decoded
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default(),
        reason: decoded.error_info().map(|i| i.reason.clone()),
        retry_after: decoded.retry_info().and_then(|r| r.retry_delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_round_trip_through_status_details() {
        let mut v = Violations::new();
        v.check(true, "ok", "never");
        v.add("amount.amount_minor", "must be positive");
        v.add("currency", "unknown ISO 4217 code");
        let status = v.into_result().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let d = details(&status);
        let fields: Vec<_> = d.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["amount.amount_minor", "currency"]);
        let s = with_reason(
            Code::FailedPrecondition,
            "INSUFFICIENT_FUNDS",
            "balance too low",
        );
        assert_eq!(details(&s).reason.as_deref(), Some("INSUFFICIENT_FUNDS"));
        let later = retry_later(
            Code::ResourceExhausted,
            "TOO_MANY_FAILED_SIGN_INS",
            std::time::Duration::from_millis(29_500),
            "wait",
        );
        let d = details(&later);
        assert_eq!(d.reason.as_deref(), Some("TOO_MANY_FAILED_SIGN_INS"));
        assert_eq!(
            d.retry_after,
            Some(std::time::Duration::from_millis(29_500))
        );
    }
}
