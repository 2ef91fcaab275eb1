//! Dead letters: the events a webhook gave up delivering, kept for redelivery.
//!
//! Each is a record under its own key (expiring with the retention), indexed by an
//! expiry-ordered set of event ids; both share the webhook's hash tag, so burying and
//! removing one is one atomic batch even in a Redis Cluster.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::keys::Keys;
use crate::store::{Store, StoreError, StoreResult, Write};

/// An event whose delivery gave up, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_type: String,
    /// The event as it was appended (ids and facts only).
    pub event: Value,
    pub attempts: u32,
    pub last_error: String,
    /// When it was buried (Unix milliseconds).
    pub dead_at_ms: i64,
}

/// The writes that bury `letter` for `retention` from `now_ms`.
pub fn bury(
    keys: &Keys,
    webhook: &str,
    letter: &DeadLetter,
    retention: Duration,
    now_ms: i64,
) -> StoreResult<Vec<Write>> {
    let value =
        serde_json::to_vec(letter).map_err(|e| StoreError::Corrupt(format!("dead letter: {e}")))?;
    let until = now_ms.div_euclid(1000) + retention.as_secs() as i64;
    Ok(vec![
        Write::Put {
            key: keys.webhook_dead_letter(webhook, &letter.event_id),
            value,
            ttl: Some(retention),
        },
        Write::ExpiringAdd {
            key: keys.webhook_dead_letters(webhook),
            member: letter.event_id.clone().into_bytes(),
            until,
            prune_through: now_ms.div_euclid(1000),
            ttl: Some(retention),
        },
    ])
}

/// The writes that remove the dead letter of `event_id`.
pub fn remove(keys: &Keys, webhook: &str, event_id: &str) -> Vec<Write> {
    vec![
        Write::ExpiringRemove {
            key: keys.webhook_dead_letters(webhook),
            member: event_id.as_bytes().to_vec(),
        },
        Write::Delete {
            key: keys.webhook_dead_letter(webhook, event_id),
        },
    ]
}

/// The dead letter of `event_id`, if there is one.
pub async fn get(
    store: &dyn Store,
    keys: &Keys,
    webhook: &str,
    event_id: &str,
) -> StoreResult<Option<DeadLetter>> {
    match store
        .get(&keys.webhook_dead_letter(webhook, event_id))
        .await?
    {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("dead letter: {e}"))),
    }
}

/// Up to `limit` of a webhook's dead letters, the most recently buried first.
pub async fn list(
    store: &dyn Store,
    keys: &Keys,
    webhook: &str,
    now_ms: i64,
    limit: usize,
) -> StoreResult<Vec<DeadLetter>> {
    let ids = store
        .expiring_members(&keys.webhook_dead_letters(webhook), now_ms.div_euclid(1000))
        .await?;
    let keys_of: Vec<_> = ids
        .iter()
        .filter_map(|(id, _)| std::str::from_utf8(id).ok())
        .map(|id| keys.webhook_dead_letter(webhook, id))
        .collect();
    let mut out = Vec::new();
    // One round trip per hundred: the index may be long.
    for chunk in keys_of.chunks(100) {
        for bytes in store.get_many(chunk).await?.into_iter().flatten() {
            out.push(
                serde_json::from_slice::<DeadLetter>(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("dead letter: {e}")))?,
            );
        }
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.dead_at_ms));
    out.truncate(limit);
    Ok(out)
}
