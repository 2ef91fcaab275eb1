//! `[migration]`: MigrateSession's rate limits.

use serde::{Deserialize, Serialize};

use super::Check;

/// MigrateSession's rate limits (fixed one-minute windows, shared by replicas through the
/// store). The per-identity limit protects the legacy provider's own UserInfo limit (Auth0:
/// 5 per minute per user).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationConfig {
    pub per_caller_per_minute: u32,
    pub per_identity_per_minute: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigration {
    per_caller_per_minute: Option<u32>,
    per_identity_per_minute: Option<u32>,
}

pub(super) fn build(c: &mut Check, raw: RawMigration) -> MigrationConfig {
    let per_caller = raw.per_caller_per_minute.unwrap_or(600);
    let per_identity = raw.per_identity_per_minute.unwrap_or(5);
    for (key, v) in [
        ("migration.per_caller_per_minute", per_caller),
        ("migration.per_identity_per_minute", per_identity),
    ] {
        if v == 0 {
            c.fail(key, "0 would refuse every migration: set at least 1");
        }
    }

    MigrationConfig {
        per_caller_per_minute: per_caller,
        per_identity_per_minute: per_identity,
    }
}
