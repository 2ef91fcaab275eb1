//! The health signals a rollout's guards watch, counted where they happen (validation,
//! migration, UserInfo) and taken by the rollout's ramp, which adds them to the windows the
//! fleet shares. Plain atomic counters: the hot path pays one relaxed increment.

use std::sync::atomic::{AtomicU64, Ordering};

/// One signal: a count of outcomes, some of them bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// MigrateSession calls, and those that failed for a reason that is not the caller's
    /// token (the provider or the store down, a refused link, a bug).
    Migrations,
    MigrationFailures,
    /// Validations of NEW credentials, and those INVALID for a reason other than expiry or
    /// revocation (which healthy traffic has): a broken key rollout, lost sessions.
    NewValidations,
    NewInvalid,
    /// UserInfo calls, and those that failed (unreachable, 5xx, unusable answers) — a token
    /// the provider refuses is not a failure.
    UserinfoCalls,
    UserinfoErrors,
    /// VALID verdicts by side: the migration's progress (the status page's share).
    ValidNew,
    ValidLegacy,
}

impl Signal {
    pub const ALL: [Signal; N] = [
        Signal::Migrations,
        Signal::MigrationFailures,
        Signal::NewValidations,
        Signal::NewInvalid,
        Signal::UserinfoCalls,
        Signal::UserinfoErrors,
        Signal::ValidNew,
        Signal::ValidLegacy,
    ];

    /// Whether the rollout's guards judge it: then it is shared with the fleet each second.
    /// The rest only counts since start (the status page).
    pub const fn guarded(self) -> bool {
        !matches!(self, Signal::ValidNew | Signal::ValidLegacy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Migrations => "migrations",
            Signal::MigrationFailures => "migration_failures",
            Signal::NewValidations => "new_validations",
            Signal::NewInvalid => "new_invalid",
            Signal::UserinfoCalls => "userinfo_calls",
            Signal::UserinfoErrors => "userinfo_errors",
            Signal::ValidNew => "valid_new",
            Signal::ValidLegacy => "valid_legacy",
        }
    }
}

const N: usize = 8;

/// This process' counts: since they were last taken (the guarded ones, for the fleet's
/// windows), and since it started (for its status page).
#[derive(Debug, Default)]
pub struct Signals {
    counts: [AtomicU64; N],
    since_start: [AtomicU64; N],
}

impl Signals {
    pub fn count(&self, s: Signal) {
        if s.guarded() {
            self.counts[s as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.since_start[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every count since the process started.
    pub fn since_start(&self, s: Signal) -> u64 {
        self.since_start[s as usize].load(Ordering::Relaxed)
    }

    /// Counts an outcome: one of `total`, and one of `bad` too when `is_bad`.
    pub fn outcome(&self, total: Signal, bad: Signal, is_bad: bool) {
        self.count(total);
        if is_bad {
            self.count(bad);
        }
    }

    /// The counts since the last call, zeroing them.
    pub fn take(&self) -> [(Signal, u64); N] {
        Signal::ALL.map(|s| (s, self.counts[s as usize].swap(0, Ordering::Relaxed)))
    }

    /// Gives back counts that could not be shared (the store was down): they are not lost.
    pub fn give_back(&self, taken: &[(Signal, u64)]) {
        for (s, n) in taken {
            self.counts[*s as usize].fetch_add(*n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_can_be_given_back() {
        let s = Signals::default();
        s.outcome(Signal::Migrations, Signal::MigrationFailures, true);
        s.outcome(Signal::Migrations, Signal::MigrationFailures, false);
        s.count(Signal::NewValidations);
        let taken = s.take();
        assert_eq!(taken[0], (Signal::Migrations, 2));
        assert_eq!(taken[1], (Signal::MigrationFailures, 1));
        assert_eq!(taken[2], (Signal::NewValidations, 1));
        assert!(s.take().iter().all(|(_, n)| *n == 0));
        s.give_back(&taken);
        assert_eq!(s.take(), taken);
        // What was taken and given back still counts once since the start.
        assert_eq!(s.since_start(Signal::Migrations), 2);
    }
}
