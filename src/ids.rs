//! The ids sessiongate mints: `<kind>-<env>-<uuid>` (`user-test-…`, `session-live-…`). An id
//! says what it names and which env minted it, so a test id can never pass for a live one,
//! and a string that cannot be one of ours costs no store lookup.

use crate::config::Env;

/// Ids are never longer than this (a prefix and a UUID are far shorter): a longer string is
/// refused before it reaches a store key.
const MAX_ID_BYTES: usize = 128;

/// What an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Session,
}

impl IdKind {
    fn as_str(self) -> &'static str {
        match self {
            IdKind::User => "user",
            IdKind::Session => "session",
        }
    }
}

/// `user-<env>-` or `session-<env>-`.
pub fn prefix(kind: IdKind, env: Env) -> String {
    format!("{}-{}-", kind.as_str(), env.as_str())
}

/// A new id of `kind`, minted in `env`.
pub fn new(kind: IdKind, env: Env) -> String {
    format!("{}{}", prefix(kind, env), uuid::Uuid::new_v4())
}

/// Whether `id` may be an id of `kind` minted in `env`: its prefix, and a bounded length.
pub fn may_be(kind: IdKind, env: Env, id: &str) -> bool {
    // Without building the prefix: this runs for every native JWT verified.
    id.len() <= MAX_ID_BYTES
        && id
            .strip_prefix(kind.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_prefix(env.as_str()))
            .is_some_and(|r| r.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_kind_and_env() {
        let id = new(IdKind::User, Env::Test);
        assert!(id.starts_with("user-test-") && may_be(IdKind::User, Env::Test, &id));
        assert!(!may_be(IdKind::User, Env::Live, &id));
        assert!(!may_be(IdKind::Session, Env::Test, &id));
        assert!(!may_be(
            IdKind::Session,
            Env::Test,
            &format!("session-test-{}", "x".repeat(200))
        ));
    }
}
