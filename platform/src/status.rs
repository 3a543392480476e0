//! gRPC statuses with `google.rpc` details: field violations (`BadRequest`) that the
//! gateway turns into problem+json `violations`, and reasons (`ErrorInfo`).

use ordermesh_contracts::google::rpc::{
    self, BadRequest, ErrorInfo, RetryInfo, bad_request::FieldViolation,
};
use prost::Message;
use tonic::{Code, Status};

const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
pub const ERROR_DOMAIN: &str = "ordermesh";

/// Collects what is wrong with a request, field by field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_string(),
            description: description.into(),
            reason: String::new(),
        });
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

fn with_details(code: Code, message: String, details: Vec<prost_types::Any>) -> Status {
    let status = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming each bad field.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = prost_types::Any {
        type_url: BAD_REQUEST_TYPE.into(),
        value: BadRequest {
            field_violations: violations,
        }
        .encode_to_vec(),
    };
    with_details(Code::InvalidArgument, message, vec![detail])
}

/// `INVALID_ARGUMENT` for one field.
pub fn invalid(field: &str, description: &str) -> Status {
    invalid_argument(vec![FieldViolation {
        field: field.to_string(),
        description: description.to_string(),
        reason: String::new(),
    }])
}

fn error_info(reason: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: ERROR_INFO_TYPE.into(),
        value: ErrorInfo {
            reason: reason.into(),
            domain: ERROR_DOMAIN.into(),
            metadata: Default::default(),
        }
        .encode_to_vec(),
    }
}

/// A status with a machine-readable reason (`google.rpc.ErrorInfo`), e.g.
/// `FAILED_PRECONDITION` / `INSUFFICIENT_FUNDS`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_details(code, message.into(), vec![error_info(reason)])
}

/// A status with a reason and when to try again (`google.rpc.RetryInfo`), which the gateway
/// turns into `Retry-After`.
pub fn retry_later(
    code: Code,
    reason: &str,
    after: std::time::Duration,
    message: impl Into<String>,
) -> Status {
    let retry = prost_types::Any {
        type_url: RETRY_INFO_TYPE.into(),
        value: RetryInfo {
            retry_delay: Some(prost_types::Duration {
                seconds: after.as_secs() as i64,
                nanos: after.subsec_nanos() as i32,
            }),
        }
        .encode_to_vec(),
    };
    with_details(code, message.into(), vec![error_info(reason), retry])
}

/// The details a status carries, decoded.
#[derive(Debug, Default, PartialEq)]
pub struct Details {
    pub violations: Vec<FieldViolation>,
    pub reason: Option<String>,
    /// When the caller may try again.
    pub retry_after: Option<std::time::Duration>,
}

pub fn details(status: &Status) -> Details {
    let mut out = Details::default();
    let Ok(decoded) = rpc::Status::decode(status.details()) else {
        return out;
    };
    for any in decoded.details {
        match any.type_url.as_str() {
            BAD_REQUEST_TYPE => {
                if let Ok(br) = BadRequest::decode(any.value.as_slice()) {
                    out.violations.extend(br.field_violations);
                }
            }
            ERROR_INFO_TYPE => {
                if let Ok(info) = ErrorInfo::decode(any.value.as_slice()) {
                    out.reason = Some(info.reason);
                }
            }
            RETRY_INFO_TYPE => {
                if let Some(d) = RetryInfo::decode(any.value.as_slice())
                    .ok()
                    .and_then(|r| r.retry_delay)
                    .filter(|d| d.seconds >= 0 && d.nanos >= 0)
                {
                    out.retry_after =
                        Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32));
                }
            }
            _ => {}
        }
    }
    out
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
