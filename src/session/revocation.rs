//! The in-process set of revoked native session ids (and deny-listed provider tokens).
//!
//! A revoked session's JWTs must fail on every replica within a second, without a Redis
//! round trip per validation (JWT validation keeps working while Redis is down). So each
//! replica keeps the revoked `sid`s in memory, fed three ways: its own revocations at once,
//! other replicas' through the invalidation channel, and a reload from the store's revoked
//! set at start, on a timer and after every re-subscription (messages published during an
//! outage are lost; the reload catches them).
//!
//! An entry lives until every JWT of that session has expired (`revoked at + JWT TTL +
//! leeway`). In the store the set is ordered by that time: every revocation prunes what has
//! expired, and a reload reads only what still matters — the set never grows without bound.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::Clock;
use crate::store::keys::Keys;
use crate::store::{Invalidation, Notice, ResyncSchedule, Store, StoreError, Write};
use tokio::sync::broadcast::error::RecvError;

/// The prefix of a provider logout's entry: `lo:<login key>:<cutoff>` revokes the provider's
/// tokens of that login (a user, or an OP session) issued at or before the cutoff.
const LOGOUT_PREFIX: &str = "lo:";

/// Revoked session ids with the time (Unix seconds) after which they no longer matter, and
/// provider logouts — one set in the store, one channel, one reload.
#[derive(Default)]
pub struct RevokedSids {
    sids: RwLock<HashMap<String, i64>>,
    /// Login key → (cutoff, until): tokens of that login issued at or before the cutoff are
    /// revoked.
    logouts: RwLock<HashMap<String, (i64, i64)>>,
}

impl RevokedSids {
    pub fn contains(&self, sid: &str) -> bool {
        self.sids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(sid)
    }

    /// Whether the login `key` (see [`RevokedSids::login_key`]) was logged out at or after
    /// `issued_at`: a token of it issued then is revoked.
    pub fn logged_out(&self, key: &str, issued_at: i64) -> bool {
        self.logouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|(cutoff, _)| issued_at <= *cutoff)
    }

    /// [`RevokedSids::logged_out`] for the login `kind`/`value` at `issuer`, hashing its key
    /// only when some logout is known (the common case on a hot path is none).
    pub fn login_logged_out(&self, issuer: &str, kind: &str, value: &str, issued_at: i64) -> bool {
        let any = !self
            .logouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        any && self.logged_out(&Self::login_key(issuer, kind, value), issued_at)
    }

    /// The key of a provider's login: a user (`kind` "sub") or an OP session ("sid") at the
    /// issuer. A digest, so that no id is kept or sent in the clear.
    pub fn login_key(issuer: &str, kind: &str, value: &str) -> String {
        crate::store::keys::Digest::of(format!("{issuer}\0{kind}\0{value}").as_bytes()).to_hex()
    }

    /// The entry that revokes the tokens of login `key` issued at or before `cutoff`.
    pub fn logout_id(key: &str, cutoff: i64) -> String {
        format!("{LOGOUT_PREFIX}{key}:{cutoff}")
    }

    pub fn insert(&self, sid: &str, until: i64, now: i64) {
        if until <= now {
            return;
        }
        if let Some((key, cutoff)) = parse_logout(sid) {
            let mut m = self.logouts.write().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(key.to_owned()).or_insert((cutoff, until));
            *e = (e.0.max(cutoff), e.1.max(until));
            if m.len().is_multiple_of(1024) {
                m.retain(|_, (_, u)| *u > now);
            }
            return;
        }
        let mut m = self.sids.write().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(sid.to_owned()).or_insert(until);
        *e = (*e).max(until);
        // Keep the map bounded by what still matters.
        if m.len().is_multiple_of(1024) {
            m.retain(|_, u| *u > now);
        }
    }

    pub fn len(&self) -> usize {
        self.sids.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The write that stores a revocation of `sid` until `until` (Unix seconds), pruning
    /// what expired by `now`.
    pub fn write(keys: &Keys, sid: &str, until: i64, now: i64) -> Write {
        Write::ExpiringAdd {
            key: keys.revoked(),
            member: sid.as_bytes().to_vec(),
            until,
            prune_through: now,
            // The set outlives its longest-lived member by nothing.
            ttl: Some(std::time::Duration::from_secs((until - now).max(1) as u64)),
        }
    }

    /// Revokes `id` (a native sid, or a provider token's deny-list id) in this replica at
    /// once and tells the others through the invalidation channel.
    pub async fn announce(
        &self,
        store: &dyn Store,
        id: &str,
        until: i64,
        now_ms: i64,
    ) -> Result<(), crate::error::Error> {
        self.insert(id, until, now_ms.div_euclid(1000));
        let msg = serde_json::to_vec(&Invalidation::Revoke {
            sid: id.to_owned(),
            until,
        })
        .map_err(crate::error::Error::internal)?;
        store.publish(&msg).await?;
        Ok(())
    }

    /// Reloads from the store's set what other replicas revoked while we were not listening,
    /// and forgets what expired.
    pub async fn reload(
        &self,
        store: &dyn Store,
        keys: &Keys,
        clock: &dyn Clock,
    ) -> Result<usize, StoreError> {
        let now = clock.now_secs();
        let fresh = store.expiring_members(&keys.revoked(), now).await?;
        self.sids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, u| *u > now);
        self.logouts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, u)| *u > now);
        for (sid, until) in &fresh {
            if let Ok(sid) = std::str::from_utf8(sid) {
                self.insert(sid, *until, now);
            }
        }
        Ok(fresh.len())
    }
}

/// A logout entry's login key and cutoff.
fn parse_logout(id: &str) -> Option<(&str, i64)> {
    let rest = id.strip_prefix(LOGOUT_PREFIX)?;
    let (key, cutoff) = rest.rsplit_once(':')?;
    Some((key, cutoff.parse().ok()?))
}

/// Feeds `revoked` from the invalidation channel until the process ends, reloading the whole
/// set on a timer, after every re-subscription, and — until it succeeds — after a reload
/// that failed.
pub fn spawn_listener(
    revoked: Arc<RevokedSids>,
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    resync_every: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut rx = store.subscribe();
    tokio::spawn(async move {
        let mut schedule = ResyncSchedule::new(resync_every);
        loop {
            tokio::select! {
                notice = rx.recv() => match notice {
                    Ok(Notice::Message(payload)) => {
                        match serde_json::from_slice::<Invalidation>(&payload) {
                            Ok(Invalidation::Revoke { sid, until }) => {
                                revoked.insert(&sid, until, clock.now_secs())
                            }
                            Ok(Invalidation::Rollout { .. }) => {}
                            Err(_) => tracing::debug!("ignoring an unknown invalidation message"),
                        }
                    }
                    // Messages may have been lost: reload everything.
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => schedule.now(),
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(schedule.due()) => {
                    match revoked.reload(&*store, &keys, &*clock).await {
                        Ok(n) => {
                            schedule.succeeded();
                            tracing::debug!(revoked_sids = n, "revocations resynchronised");
                        }
                        Err(e) => {
                            schedule.failed();
                            tracing::warn!(error = %e, "cannot resynchronise revocations yet; retrying");
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logout_revokes_what_was_issued_up_to_its_cutoff_and_only_grows() {
        let r = RevokedSids::default();
        let key = RevokedSids::login_key("https://idp.example/", "sub", "alice");
        assert!(!r.logged_out(&key, 100));
        r.insert(&RevokedSids::logout_id(&key, 1_000), 5_000, 900);
        assert!(r.logged_out(&key, 999));
        assert!(r.logged_out(&key, 1_000));
        assert!(!r.logged_out(&key, 1_001), "a login after the logout");
        // An older logout replayed does not move the cutoff back.
        r.insert(&RevokedSids::logout_id(&key, 500), 5_000, 900);
        assert!(r.logged_out(&key, 999));
        assert!(
            !r.contains(&RevokedSids::logout_id(&key, 1_000)),
            "not a sid"
        );
        let other = RevokedSids::login_key("https://idp.example/", "sid", "alice");
        assert!(!r.logged_out(&other, 0), "a sid is not a sub");
        // Malformed entries are plain ids, never a logout.
        r.insert("lo:abc:notanumber", 5_000, 900);
        assert!(!r.logged_out("abc", 0));
    }

    #[test]
    fn entries_expire_and_only_grow() {
        let r = RevokedSids::default();
        r.insert("a", 100, 50);
        r.insert("a", 90, 50);
        assert!(r.contains("a"));
        r.insert("old", 10, 50);
        assert!(!r.contains("old"));
        assert_eq!(
            serde_json::to_string(&Invalidation::Revoke {
                sid: "s".into(),
                until: 5
            })
            .unwrap(),
            r#"{"t":"revoke","sid":"s","until":5}"#
        );
    }
}
