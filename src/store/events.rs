//! The change events sessiongate appends to the store's event stream with the write they
//! describe (`session.created`, `user.created`, `session.revoked`, `legacy_token.revoked`,
//! `user.migrated`, `rollout.updated`): one envelope for every domain that writes them.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Write;
use crate::config::Env;

/// The write that appends event `kind` with `fields`, stamped with a fresh id, the time and
/// the env.
pub(crate) fn event(env: Env, now_ms: i64, kind: &str, fields: Value) -> Write {
    let mut e = json!({
        "type": kind,
        "id": uuid::Uuid::new_v4().to_string(),
        "at": humantime::format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64)
        ).to_string(),
        "env": env.as_str(),
    });
    if let (Value::Object(e), Value::Object(f)) = (&mut e, fields) {
        e.extend(f);
    }
    Write::Event(e)
}
