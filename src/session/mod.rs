//! Sessions, all sides of the migration: sessiongate's own (`native`: token shapes, minting,
//! verifying), the configured providers' (`providers`: their JWTs, their UserInfo),
//! migration from one to the other (`migrate`: replay, identity linking), and the service
//! behind the session RPCs — `ValidateSession` (`validate`: one match on the token's shape),
//! `CreateSession` and `RevokeSession` (`service`).

pub mod inspect;
mod migrate;
pub mod model;
pub mod native;
pub mod providers;
pub mod revocation;
mod service;
mod singleflight;
pub mod token;
mod validate;

pub use migrate::MigrateRequest;
pub use service::{CreateRequest, Created, RevokeTarget, SessionService, Who};
pub use validate::{ValidateRequest, Verdict};

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
