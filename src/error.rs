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

/// The `google.rpc.ErrorInfo` domain of every error sessiongate returns: a DNS-style name, as
/// `google.rpc.ErrorInfo` asks, so a client that sees errors of several services can tell
/// whose reasons these are. A name, not an address: nothing is served there.
pub const ERROR_DOMAIN: &str = "sessiongate.dev";

/// Why a call failed, machine-readable: the `reason` of `google.rpc.ErrorInfo`, UPPER_SNAKE,
/// part of the contract (clients branch on it). Declared here once; its spelling is in one
/// match, [`ErrorReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorReason {
    /// INVALID_ARGUMENT: the request carries no token.
    TokenRequired,
    /// INVALID_ARGUMENT: a field is over its size limit.
    FieldTooLarge,
    /// INVALID_ARGUMENT: CreateSession names no user.
    WhoRequired,
    /// INVALID_ARGUMENT: RevokeSession names nothing to revoke.
    TargetRequired,
    /// INVALID_ARGUMENT: several legacy providers could be meant; name one.
    ProviderRequired,
    /// INVALID_ARGUMENT: a session length outside the allowed range.
    SessionDurationOutOfRange,
    /// INVALID_ARGUMENT: a custom claim uses a name sessiongate sets itself.
    ReservedClaim,
    /// INVALID_ARGUMENT: a number that JSON cannot carry (NaN, infinity).
    InvalidNumber,
    /// INVALID_ARGUMENT: a factor type only MigrateSession sets (`legacy_migration`).
    ReservedFactor,
    /// INVALID_ARGUMENT: `except_session_id` with a target other than `user_id`, or naming a
    /// session that is not the user's.
    InvalidExcept,
    /// INVALID_ARGUMENT: a back-channel logout token that does not verify or is not one.
    InvalidLogoutToken,
    /// INVALID_ARGUMENT: a ResolveFlow request that cannot be evaluated.
    InvalidFlowRequest,
    /// INVALID_ARGUMENT: a rollout update that would break the flow's rules.
    InvalidRollout,
    /// INVALID_ARGUMENT: a proxy's per-route setting (Envoy's `context_extensions`, the
    /// forward-auth query) that sessiongate does not know or cannot apply.
    InvalidRouteSetting,
    /// INVALID_ARGUMENT: a revocation target that is no session token.
    NotASessionToken,
    /// INVALID_ARGUMENT: a revocation target that is no session_jwt of ours.
    NotASessionJwt,
    /// INVALID_ARGUMENT: a legacy token no configured provider could have issued.
    NotAProviderToken,
    /// INVALID_ARGUMENT: a CreateSession `request_id` that is not a UUID.
    InvalidRequestId,
    /// INVALID_ARGUMENT: a CreateSession `request_id` already used for a different request.
    RequestIdReused,
    /// UNAUTHENTICATED: no valid API key.
    CallerUnauthenticated,
    /// UNAUTHENTICATED: the legacy provider (or its deny-list) refuses the token being migrated.
    LegacyTokenRejected,
    /// PERMISSION_DENIED: the key lacks the RPC's scope.
    ScopeMissing,
    /// FAILED_PRECONDITION: UserInfo names no subject to link.
    UserinfoMissingSubject,
    /// FAILED_PRECONDITION: the email belongs to a user already linked to another account of this provider.
    IdentityConflict,
    /// FAILED_PRECONDITION: the provider's policy is `reject`.
    LegacyRetired,
    /// UNAVAILABLE: another call is migrating this token; retry.
    MigrationInProgress,
    /// UNAVAILABLE: another CreateSession with this request id is running; retry.
    RequestInProgress,
    /// FAILED_PRECONDITION: the flow is written as Unleash strategies, which the admin API does not edit.
    FlowHasStrategies,
    /// NOT_FOUND: no such user.
    UserNotFound,
    /// NOT_FOUND: no such session.
    SessionNotFound,
    /// NOT_FOUND: no such legacy provider is configured.
    ProviderNotFound,
    /// NOT_FOUND: no such flow is configured.
    FlowNotFound,
    /// NOT_FOUND: no such webhook is configured.
    WebhookNotFound,
    /// NOT_FOUND: the webhook has no dead letter of that event.
    DeadLetterNotFound,
    /// RESOURCE_EXHAUSTED: our rate limit, per caller or per identity.
    RateLimited,
    /// RESOURCE_EXHAUSTED: the legacy provider answered 429.
    LegacyRateLimited,
    /// RESOURCE_EXHAUSTED: this replica's UserInfo budget for the provider is spent.
    UpstreamBudgetExhausted,
    /// UNAVAILABLE: another admin update of the flow is in progress; retry.
    RolloutBusy,
    /// UNAVAILABLE: the store cannot be reached; retry.
    StoreUnavailable,
    /// UNAVAILABLE: the legacy provider cannot be reached or answered unusably; retry.
    LegacyProviderUnavailable,
    /// UNAVAILABLE: the issuer's keys cannot be had; retry.
    KeysUnavailable,
    /// UNAVAILABLE: a webhook receiver did not take a redelivered event; retry later.
    WebhookUndelivered,
    /// UNIMPLEMENTED: not served by this build.
    Unimplemented,
    /// INTERNAL: a bug; the details are in the server logs.
    Internal,
}

impl ErrorReason {
    /// Every reason, for documentation and tests.
    pub const ALL: &[ErrorReason] = &[
        ErrorReason::TokenRequired,
        ErrorReason::FieldTooLarge,
        ErrorReason::WhoRequired,
        ErrorReason::TargetRequired,
        ErrorReason::ProviderRequired,
        ErrorReason::SessionDurationOutOfRange,
        ErrorReason::ReservedClaim,
        ErrorReason::InvalidNumber,
        ErrorReason::ReservedFactor,
        ErrorReason::InvalidExcept,
        ErrorReason::InvalidLogoutToken,
        ErrorReason::InvalidFlowRequest,
        ErrorReason::InvalidRollout,
        ErrorReason::InvalidRouteSetting,
        ErrorReason::NotASessionToken,
        ErrorReason::NotASessionJwt,
        ErrorReason::NotAProviderToken,
        ErrorReason::InvalidRequestId,
        ErrorReason::RequestIdReused,
        ErrorReason::CallerUnauthenticated,
        ErrorReason::LegacyTokenRejected,
        ErrorReason::ScopeMissing,
        ErrorReason::UserinfoMissingSubject,
        ErrorReason::IdentityConflict,
        ErrorReason::LegacyRetired,
        ErrorReason::MigrationInProgress,
        ErrorReason::RequestInProgress,
        ErrorReason::FlowHasStrategies,
        ErrorReason::UserNotFound,
        ErrorReason::SessionNotFound,
        ErrorReason::ProviderNotFound,
        ErrorReason::FlowNotFound,
        ErrorReason::WebhookNotFound,
        ErrorReason::DeadLetterNotFound,
        ErrorReason::RateLimited,
        ErrorReason::LegacyRateLimited,
        ErrorReason::UpstreamBudgetExhausted,
        ErrorReason::RolloutBusy,
        ErrorReason::StoreUnavailable,
        ErrorReason::LegacyProviderUnavailable,
        ErrorReason::KeysUnavailable,
        ErrorReason::WebhookUndelivered,
        ErrorReason::Unimplemented,
        ErrorReason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::TokenRequired => "TOKEN_REQUIRED",
            ErrorReason::FieldTooLarge => "FIELD_TOO_LARGE",
            ErrorReason::WhoRequired => "WHO_REQUIRED",
            ErrorReason::TargetRequired => "TARGET_REQUIRED",
            ErrorReason::ProviderRequired => "PROVIDER_REQUIRED",
            ErrorReason::SessionDurationOutOfRange => "SESSION_DURATION_OUT_OF_RANGE",
            ErrorReason::ReservedClaim => "RESERVED_CLAIM",
            ErrorReason::InvalidNumber => "INVALID_NUMBER",
            ErrorReason::ReservedFactor => "RESERVED_FACTOR",
            ErrorReason::InvalidExcept => "INVALID_EXCEPT",
            ErrorReason::InvalidLogoutToken => "INVALID_LOGOUT_TOKEN",
            ErrorReason::InvalidFlowRequest => "INVALID_FLOW_REQUEST",
            ErrorReason::InvalidRollout => "INVALID_ROLLOUT",
            ErrorReason::InvalidRouteSetting => "INVALID_ROUTE_SETTING",
            ErrorReason::NotASessionToken => "NOT_A_SESSION_TOKEN",
            ErrorReason::NotASessionJwt => "NOT_A_SESSION_JWT",
            ErrorReason::NotAProviderToken => "NOT_A_PROVIDER_TOKEN",
            ErrorReason::InvalidRequestId => "INVALID_REQUEST_ID",
            ErrorReason::RequestIdReused => "REQUEST_ID_REUSED",
            ErrorReason::CallerUnauthenticated => "CALLER_UNAUTHENTICATED",
            ErrorReason::LegacyTokenRejected => "LEGACY_TOKEN_REJECTED",
            ErrorReason::ScopeMissing => "SCOPE_MISSING",
            ErrorReason::UserinfoMissingSubject => "USERINFO_MISSING_SUBJECT",
            ErrorReason::IdentityConflict => "IDENTITY_CONFLICT",
            ErrorReason::LegacyRetired => "LEGACY_RETIRED",
            ErrorReason::MigrationInProgress => "MIGRATION_IN_PROGRESS",
            ErrorReason::RequestInProgress => "REQUEST_IN_PROGRESS",
            ErrorReason::FlowHasStrategies => "FLOW_HAS_STRATEGIES",
            ErrorReason::UserNotFound => "USER_NOT_FOUND",
            ErrorReason::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorReason::ProviderNotFound => "PROVIDER_NOT_FOUND",
            ErrorReason::FlowNotFound => "FLOW_NOT_FOUND",
            ErrorReason::WebhookNotFound => "WEBHOOK_NOT_FOUND",
            ErrorReason::DeadLetterNotFound => "DEAD_LETTER_NOT_FOUND",
            ErrorReason::RateLimited => "RATE_LIMITED",
            ErrorReason::LegacyRateLimited => "LEGACY_RATE_LIMITED",
            ErrorReason::UpstreamBudgetExhausted => "UPSTREAM_BUDGET_EXHAUSTED",
            ErrorReason::RolloutBusy => "ROLLOUT_BUSY",
            ErrorReason::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorReason::LegacyProviderUnavailable => "LEGACY_PROVIDER_UNAVAILABLE",
            ErrorReason::KeysUnavailable => "KEYS_UNAVAILABLE",
            ErrorReason::WebhookUndelivered => "WEBHOOK_UNDELIVERED",
            ErrorReason::Unimplemented => "UNIMPLEMENTED",
            ErrorReason::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub reason: ErrorReason,
    pub message: String,
    /// For `RESOURCE_EXHAUSTED`: when the caller may try again.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub fn new(code: ErrorCode, reason: ErrorReason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_argument(reason: ErrorReason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, reason, message)
    }

    pub fn unavailable(reason: ErrorReason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, reason, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::Unimplemented,
            ErrorReason::Unimplemented,
            message,
        )
    }

    /// An internal error. `detail` is logged here and never sent to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            ErrorReason::Internal,
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
            err.reason.as_str(),
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
        let message = bounded(err.message);
        tonic::Status::with_error_details_and_metadata(code, message, details, metadata)
    }
}

/// The longest error message sent, in bytes. A message may quote what the caller sent (a flow
/// or provider name); unbounded, an 8 KiB name came back as a 37 KB `grpc-message` plus the
/// same in `grpc-status-details-bin` — past any client's header limit, so the client reset the
/// call (`PROTOCOL_ERROR`) instead of reading the error.
const MAX_MESSAGE_BYTES: usize = 256;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_whatever_they_quote() {
        let long = format!("no flow named `{}` is configured", "é".repeat(5_000));
        let status = tonic::Status::from(Error::new(
            ErrorCode::NotFound,
            ErrorReason::FlowNotFound,
            long,
        ));
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("no flow named `é"));
        assert!(status.message().ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn every_reason_is_documented_and_stored_by_its_name() {
        let design = include_str!("../docs/design.md");
        let mut seen = std::collections::HashSet::new();
        for r in ErrorReason::ALL {
            assert!(seen.insert(r.as_str()), "{r} listed twice");
            assert!(
                design.contains(&format!("`{r}`")),
                "docs/design.md does not list {r}"
            );
            let stored = serde_json::to_string(r).unwrap();
            assert_eq!(stored, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<ErrorReason>(&stored).unwrap(), *r);
        }
    }

    #[test]
    fn status_carries_error_info_and_retry_after() {
        let status: tonic::Status = Error::new(
            ErrorCode::ResourceExhausted,
            ErrorReason::RateLimited,
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
