use tonic::{Code, Status};

/// What can go wrong in a store. A failed condition is its own variant so services can map
/// it to `ABORTED`, `FAILED_PRECONDITION` or `ALREADY_EXISTS` as their domain says.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write at `index` of the batch found its condition false; nothing was written.
    #[error("condition failed for {pk}/{sk} (write {index} of the batch)")]
    ConditionFailed {
        index: usize,
        pk: String,
        sk: String,
    },
    /// Another transaction touched the same items at the same time; retry.
    #[error("conflicting concurrent transaction, retry")]
    Conflict,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid page token")]
    InvalidCursor,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// A short name of the kind of failure (`error.type` on spans).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConditionFailed { .. } => "condition_failed",
            Self::Conflict => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidBatch(_) => "invalid_batch",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidCursor => "invalid_cursor",
            Self::Corrupt(_) => "corrupt",
            Self::Backend(_) => "backend",
        }
    }

    pub fn is_condition_failed(&self) -> bool {
        matches!(self, Self::ConditionFailed { .. })
    }
    /// Whether the same request may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Conflict | Self::Unavailable(_))
    }
}

/// The default mapping; services override it for conditions whose meaning they know.
impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::ConditionFailed { .. } | StoreError::Conflict => Code::Aborted,
            StoreError::Unavailable(_) => Code::Unavailable,
            StoreError::InvalidCursor | StoreError::InvalidKey(_) => Code::InvalidArgument,
            // A batch or query the store refuses is this code's mistake, not the caller's.
            StoreError::InvalidBatch(_) | StoreError::InvalidQuery(_) | StoreError::Backend(_) => {
                Code::Internal
            }
            StoreError::Corrupt(_) => Code::DataLoss,
        };
        match &e {
            // Do not leak store details to callers; they are in the logs.
            StoreError::InvalidKey(_) => {
                tracing::debug!(error = %e, "refused a key");
                Status::new(code, "a name or identifier in the request is not valid")
            }
            _ if matches!(code, Code::Internal | Code::DataLoss) => {
                tracing::error!(error = %e, "store error");
                Status::new(code, "storage error")
            }
            _ => Status::new(code, e.to_string()),
        }
    }
}
