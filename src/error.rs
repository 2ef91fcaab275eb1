//! The call-level error model (docs/design.md, "The contract's rules").
//!
//! A bad *token* is never an error: it is a verdict. Errors are for the *call*: a malformed
//! request, a caller without a key, a dependency that is down. Every domain error becomes an
//! [`Error`]: one deliberately small [`ErrorCode`] (after quickwit's `ServiceErrorCode`), an
//! UPPER_SNAKE reason for `google.rpc.ErrorInfo`, and a message a person can act on. The
//! mapping to `tonic::Status` lives in one match, here.

use std::collections::HashMap;
use std::time::Duration;

use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every error sessiongate returns.
pub const ERROR_DOMAIN: &str = "sessiongate";

/// The gRPC codes sessiongate uses. Voluntarily a restricted subset: introduce new variants
/// thoughtfully, clients in many languages branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// The request is malformed (empty required field, bad oneof, oversized field).
    InvalidArgument,
    /// The caller has no valid API key, or a legacy provider refused a token.
    Unauthenticated,
    /// The caller's key lacks the RPC's scope.
    PermissionDenied,
    /// The operation cannot proceed for this identity.
    FailedPrecondition,
    /// An unknown user or session.
    NotFound,
    /// A rate limit, ours or a legacy provider's.
    ResourceExhausted,
    /// A dependency needed for this answer is down; safe to retry.
    Unavailable,
    /// The RPC exists in the contract but this build does not serve it yet.
    Unimplemented,
    /// A bug. The message is fixed; details go to the logs only.
    Internal,
}

/// A call-level error: code, machine-readable reason and a human message.
///
/// Messages must never contain a token, a key or any other secret: they reach callers and
/// logs. Build them from ids and fingerprints only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}/{reason}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    /// UPPER_SNAKE, e.g. `STORE_UNAVAILABLE`; stable, part of the contract.
    pub reason: &'static str,
    pub message: String,
    /// For `RESOURCE_EXHAUSTED`: when the caller may try again.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, reason, message)
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, reason, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unimplemented, "UNIMPLEMENTED", message)
    }

    /// An internal error. `detail` is logged here and never sent to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "INTERNAL",
            "internal error; see the server logs",
        )
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let code = match err.code {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Unimplemented => tonic::Code::Unimplemented,
            ErrorCode::Internal => tonic::Code::Internal,
        };
        let mut details = ErrorDetails::with_error_info(
            err.reason,
            ERROR_DOMAIN,
            HashMap::<String, String>::new(),
        );
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(after) = err.retry_after {
            details.set_retry_info(Some(after));
            // Plain `retry-after` metadata (whole seconds, rounded up) for clients that do not
            // decode google.rpc details.
            let secs = after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = secs.to_string().parse() {
                metadata.insert("retry-after", v);
            }
        }
        tonic::Status::with_error_details_and_metadata(code, err.message, details, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info_and_retry_after() {
        let status: tonic::Status = Error::new(
            ErrorCode::ResourceExhausted,
            "RATE_LIMITED",
            "too many calls; retry later",
        )
        .with_retry_after(Duration::from_millis(1500))
        .into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "too many calls; retry later");
        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
    }

    #[test]
    fn internal_hides_detail() {
        let status: tonic::Status = Error::internal("db row 42 had secret xyz").into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("xyz"));
    }
}
