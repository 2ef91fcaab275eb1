//! `ListSessions`: a user's live sessions, for "where you're signed in" pages and support.

use futures::{StreamExt as _, TryStreamExt as _};

use super::{Lookup, NativeSessions};
use crate::error::Error;
use crate::session::model::Session;

/// The most sessions listed: a user is rarely signed in on more devices, and the answer stays
/// bounded whatever a user (or a script) has accumulated.
pub const MAX_LISTED: usize = 1_000;
/// Sessions looked up at once.
const LOOKUPS_IN_FLIGHT: usize = 16;

impl NativeSessions {
    /// The live sessions of `user_id` (revoked and expired ones are left out), the most
    /// recently started first, at most [`MAX_LISTED`]. `NOT_FOUND USER_NOT_FOUND` for an
    /// unknown user.
    pub async fn list_user(&self, user_id: &str) -> Result<Vec<Session>, Error> {
        let user = self.load_user(user_id).await?;
        let now = self.clock.now_ms();
        let sids = self
            .store
            .set_members(&self.keys.user_sessions(&user.user_id))
            .await?;
        let lookups: Vec<Lookup> = futures::stream::iter(sids)
            .filter_map(|sid| async move { String::from_utf8(sid).ok() })
            .map(|sid| async move { self.lookup_by_id(&sid, now).await })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut live: Vec<Session> = lookups
            .into_iter()
            .filter_map(|l| match l {
                // A session listed under another user would be a corrupt index: never shown.
                Lookup::Active(s, _) if s.user_id == user.user_id => Some(*s),
                _ => None,
            })
            .collect();
        live.sort_by(|a, b| {
            b.started_at_ms
                .cmp(&a.started_at_ms)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        live.truncate(MAX_LISTED);
        Ok(live)
    }
}
