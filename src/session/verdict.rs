//! The question `ValidateSession` asks and its answer on one credential — VALID or INVALID
//! and why, which side of the migration it belongs to, where the answer came from — and the
//! small enums it is made of. Every side (native, providers) answers in these terms.

use super::claims::Claims;
use super::model::Redacted;
use super::model::{ClientInfo, Session};

/// Why a credential is INVALID (mirrors the contract's `Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    TooLarge,
    UnsupportedAlgorithm,
    BadSignature,
    UnknownIssuer,
    UnknownKey,
    Expired,
    NotYetValid,
    WrongAudience,
    Revoked,
    NotFound,
    LegacyRetired,
    WrongEnv,
    InvalidClaims,
}

impl Reason {
    /// A stable label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "MALFORMED",
            Reason::TooLarge => "TOO_LARGE",
            Reason::UnsupportedAlgorithm => "UNSUPPORTED_ALGORITHM",
            Reason::BadSignature => "BAD_SIGNATURE",
            Reason::UnknownIssuer => "UNKNOWN_ISSUER",
            Reason::UnknownKey => "UNKNOWN_KEY",
            Reason::Expired => "EXPIRED",
            Reason::NotYetValid => "NOT_YET_VALID",
            Reason::WrongAudience => "WRONG_AUDIENCE",
            Reason::Revoked => "REVOKED",
            Reason::NotFound => "NOT_FOUND",
            Reason::LegacyRetired => "LEGACY_RETIRED",
            Reason::WrongEnv => "WRONG_ENV",
            Reason::InvalidClaims => "INVALID_CLAIMS",
        }
    }
}

/// Which side of the migration a credential belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Unknown,
    New,
    Legacy,
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    LocalVerify,
    Cache,
    Store,
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::LocalVerify => "LOCAL_VERIFY",
            Source::Cache => "CACHE",
            Source::Store => "STORE",
            Source::Upstream => "UPSTREAM",
        }
    }
}

/// What the caller should do next with a VALID credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Migrate,
}

/// The provider name of native sessions.
pub const NATIVE_PROVIDER: &str = "native";

/// The answer on one credential.
#[derive(Clone)]
pub struct Verdict {
    /// `None`: VALID.
    pub invalid: Option<Reason>,
    pub origin: Origin,
    pub provider: String,
    pub user_id: String,
    pub subject: String,
    /// The native session's id; empty for provider tokens.
    pub session_id: String,
    /// The native session (FULL view only).
    pub session: Option<Session>,
    /// Shared with the verdict cache: converting is the only copy.
    pub claims: Option<Claims>,
    pub expires_at_ms: Option<i64>,
    pub session_jwt: Option<String>,
    pub action: Action,
    pub source: Source,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdict")
            .field("invalid", &self.invalid)
            .field("origin", &self.origin)
            .field("provider", &self.provider)
            .field("user_id", &self.user_id)
            .field("subject", &self.subject)
            .field("session_id", &self.session_id)
            .field("session", &self.session)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("session_jwt", &self.session_jwt.as_deref().map(Redacted))
            .field("action", &self.action)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Verdict {
    pub(crate) fn invalid(reason: Reason, origin: Origin, source: Source) -> Self {
        Self {
            invalid: Some(reason),
            origin,
            provider: String::new(),
            user_id: String::new(),
            subject: String::new(),
            session_id: String::new(),
            session: None,
            claims: None,
            expires_at_ms: None,
            session_jwt: None,
            action: Action::None,
            source,
        }
    }

    /// A VALID native session, without the session itself (the BASIC view).
    pub(crate) fn native_basic(
        user_id: &str,
        session_id: &str,
        expires_at_ms: i64,
        source: Source,
    ) -> Self {
        Self {
            invalid: None,
            origin: Origin::New,
            provider: NATIVE_PROVIDER.into(),
            user_id: user_id.to_owned(),
            subject: user_id.to_owned(),
            session_id: session_id.to_owned(),
            expires_at_ms: Some(expires_at_ms),
            session: None,
            claims: None,
            session_jwt: None,
            action: Action::None,
            source,
        }
    }

    /// A VALID native session, in the view asked for.
    pub(crate) fn native(session: Session, view: View, source: Source) -> Self {
        let mut v = Self::native_basic(
            &session.user_id,
            &session.session_id,
            session.expires_at_ms,
            source,
        );
        if view == View::Full {
            v.session = Some(session);
        }
        v
    }

    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }
}

/// A `ValidateSession` call, decoded.
#[derive(Clone, Default)]
pub struct ValidateRequest {
    /// The calling client's configured name (for the migration-progress metric).
    pub caller: std::sync::Arc<str>,
    pub token: String,
    pub max_token_age_seconds: u32,
    pub session_duration_minutes: u32,
    pub client: ClientInfo,
    /// The caller may extend a session by its session_jwt alone (it holds `issue`). Anyone
    /// may extend with the opaque session_token: only its holder has it, while a short JWT
    /// travels through every service of the fleet.
    pub may_extend_by_jwt: bool,
    pub view: View,
}

/// How much of a verdict the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// The verdict and who it is about: no claims, no session, no fresh JWT.
    Basic,
    /// Everything; the default, so that callers written before views get what they read.
    #[default]
    Full,
}

impl std::fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateRequest")
            .field("caller", &self.caller)
            .field("token", &Redacted(&self.token))
            .field("max_token_age_seconds", &self.max_token_age_seconds)
            .field("session_duration_minutes", &self.session_duration_minutes)
            .field("may_extend_by_jwt", &self.may_extend_by_jwt)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}
