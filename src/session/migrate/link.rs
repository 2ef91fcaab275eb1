//! Identity links: which sessiongate user a provider's subject is. A link is claimed
//! atomically across replicas (whoever sets the index first owns the identity), made by a
//! verified email when the provider allows it (`IDENTITY_CONFLICT` when that user already is
//! another subject of the provider), and added to the user record by compare-and-swap.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::config::Env;
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::ids::{self, IdKind};
use crate::session::model::{LegacyIdentity, User, decode, encode};
use crate::session::providers::Provider;
use crate::store::event;
use crate::store::keys::{Digest, Key, Keys};
use crate::store::{Store, Write};

/// Reads and makes identity links.
pub(crate) struct Links {
    env: Env,
    store: Arc<dyn Store>,
    keys: Keys,
}

impl Links {
    pub fn new(env: Env, store: Arc<dyn Store>) -> Self {
        Self {
            env,
            keys: Keys::new(env),
            store,
        }
    }

    /// The user `(provider, sub)` is linked to, if any. Links are keyed by the provider's
    /// issuer. A link written before that is keyed by the provider's name, and it is trusted
    /// only while that name stands for the issuer it stood for when such a link was first read
    /// (the first read records it): a provider re-pointed at another issuer must not inherit
    /// the old issuer's users. A trusted one is re-written under the issuer.
    pub async fn linked_user(
        &self,
        provider: &Provider,
        sub: &str,
    ) -> Result<Option<String>, Error> {
        let utf8 = |id: Vec<u8>| String::from_utf8(id).map_err(Error::internal);
        let index = identity_index(&self.keys, provider, sub);
        let by_name = self.keys.identity_by_name(&Digest::of(
            format!("{}\0{sub}", provider.name()).as_bytes(),
        ));
        // Both indexes in one round trip: this runs on every validation of a legacy subject
        // that has not migrated.
        let mut found = self.store.get_many(&[index.clone(), by_name]).await?;
        let (old, new) = (found.pop().flatten(), found.pop().flatten());
        if let Some(id) = new {
            return utf8(id).map(Some);
        }
        let Some(id) = old else {
            return Ok(None);
        };
        if !self.old_links_trusted(provider).await? {
            return Ok(None);
        }
        let id = utf8(id)?;
        if self
            .store
            .put_if_absent(&index, id.as_bytes(), None)
            .await?
        {
            return Ok(Some(id));
        }
        // Re-indexed (or newly linked) by another call meanwhile: that entry decides.
        self.store.get(&index).await?.map(utf8).transpose()
    }

    /// The user `(provider, sub)` has migrated to: linked, and listed in the user record (an
    /// index claimed by a migration that then failed, or is still running, is no link yet).
    pub async fn migrated_user(
        &self,
        provider: &Provider,
        sub: &str,
    ) -> Result<Option<String>, Error> {
        let Some(user_id) = self.linked_user(provider, sub).await? else {
            return Ok(None);
        };
        let Some(record) = self.store.get(&self.keys.user(&user_id)).await? else {
            return Ok(None);
        };
        let user: User = decode(&record)?;
        let identity = provider.identity(sub);
        let listed = user
            .legacy_identities
            .iter()
            .any(|li| li.same_account(&identity));
        Ok(listed.then_some(user_id))
    }

    /// Whether links made under this provider's name (before links were keyed by issuer) are
    /// its own: the name still stands for the issuer it stood for when such a link was first
    /// read. Asked of the store once per provider and process — the answer cannot change
    /// while this process's configuration does not.
    async fn old_links_trusted(&self, provider: &Provider) -> Result<bool, Error> {
        let decided = provider.old_links_trusted.get_or_try_init(|| async {
            let bound = self
                .keys
                .provider_issuer(&Digest::of(provider.name().as_bytes()));
            let issuer = provider.config.issuer.as_bytes();
            let trusted = self.store.put_if_absent(&bound, issuer, None).await?
                || self.store.get(&bound).await?.as_deref() == Some(issuer);
            if !trusted {
                tracing::warn!(
                    provider = provider.name(),
                    "a link made when this provider name stood for another issuer is ignored"
                );
            }
            Ok::<_, Error>(trusted)
        });
        decided.await.copied()
    }

    /// The user linked to `(provider, sub)`, created (and linked) if there is none yet.
    /// Returns the writes still to make with the session.
    pub async fn user_for_identity(
        &self,
        provider: &Provider,
        sub: &str,
        info: &Map<String, Value>,
        now: i64,
    ) -> Result<(User, bool, Vec<Write>), Error> {
        let index = identity_index(&self.keys, provider, sub);
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let email = text("email").trim().to_ascii_lowercase();
        let verified =
            info.get("email_verified").and_then(Value::as_bool) == Some(true) && !email.is_empty();
        // An existing link decides; else, when allowed, a user who owns the same *verified*
        // email; else a new user.
        let linked = self.linked_user(provider, sub).await?;
        let by_email = match (&linked, provider.config.link_verified_email && verified) {
            (None, true) => match self
                .store
                .get(&self.keys.email(&Digest::of(email.as_bytes())))
                .await?
            {
                Some(id) => Some(String::from_utf8(id).map_err(Error::internal)?),
                None => None,
            },
            _ => None,
        };
        let identity = provider.identity(sub);
        // The conflict is checked before the identity is claimed: a user found by email who
        // already is another subject of this provider refuses the link, and the index must
        // never point at a user that refuses it.
        if let Some(uid) = &by_email
            && let Some(bytes) = self.store.get(&self.keys.user(uid)).await?
        {
            let user: User = decode(&bytes)?;
            if conflicts(&user, &identity) {
                return Err(identity_conflict(provider));
            }
        }
        let candidate = by_email
            .clone()
            .unwrap_or_else(|| ids::new(IdKind::User, self.env));
        // The identity index decides: whoever sets it first owns the identity.
        let (user_id, won) = match linked {
            Some(id) => (id, false),
            None => {
                if self
                    .store
                    .put_if_absent(&index, candidate.as_bytes(), None)
                    .await?
                {
                    (candidate, true)
                } else {
                    let id = self.store.get(&index).await?.ok_or_else(|| {
                        Error::unavailable(
                            ErrorReason::StoreUnavailable,
                            "identity index vanished; retry",
                        )
                    })?;
                    (String::from_utf8(id).map_err(Error::internal)?, false)
                }
            }
        };
        if let Some(mut bytes) = self.store.get(&self.keys.user(&user_id)).await? {
            // Linked to an existing user: add the identity to the record by compare-and-swap,
            // so that two identities linked at once (two providers, one email) both stay.
            for _ in 0..8 {
                let mut user: User = decode(&bytes)?;
                if user
                    .legacy_identities
                    .iter()
                    .any(|li| li.same_account(&identity))
                {
                    return Ok((user, false, Vec::new()));
                }
                if conflicts(&user, &identity) {
                    if won {
                        // Lost a race to another subject of the same provider: undo our
                        // claim (only if it is still ours).
                        let _ = self
                            .store
                            .delete_if_equals(&index, user_id.as_bytes())
                            .await;
                    }
                    return Err(identity_conflict(provider));
                }
                user.legacy_identities.push(identity.clone());
                if self
                    .store
                    .compare_and_swap(&self.keys.user(&user_id), &bytes, &encode(&user)?)
                    .await?
                {
                    let migrated = migrated_event(self.env, now, &user_id, provider, sub, false);
                    return Ok((user, false, vec![migrated]));
                }
                bytes = self
                    .store
                    .get(&self.keys.user(&user_id))
                    .await?
                    .ok_or_else(|| {
                        Error::unavailable(
                            ErrorReason::StoreUnavailable,
                            "user record vanished; retry",
                        )
                    })?;
            }
            return Err(Error::unavailable(
                ErrorReason::StoreUnavailable,
                "the user record is changing too fast to link this identity; retry",
            ));
        }
        if won && verified {
            // A new user owns their verified email for later links (first owner wins).
            let _ = self
                .store
                .put_if_absent(
                    &self.keys.email(&Digest::of(email.as_bytes())),
                    user_id.as_bytes(),
                    None,
                )
                .await?;
        }
        // New — or the record is not written yet (the winner of a concurrent migration is
        // about to, or crashed in between): write it; only the winner reports a creation.
        let user = User {
            user_id: user_id.clone(),
            email: text("email"),
            email_verified: info
                .get("email_verified")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: text("name"),
            legacy_identities: vec![identity],
            created_at_ms: now,
        };
        let mut writes = vec![Write::Put {
            key: self.keys.user(&user_id),
            value: encode(&user)?,
            ttl: None,
        }];
        if won {
            writes.push(event(
                self.env,
                now,
                "user.created",
                json!({"user_id": user_id, "created_via": "migration", "provider": provider.name()}),
            ));
            writes.push(migrated_event(self.env, now, &user_id, provider, sub, true));
        }
        Ok((user, won, writes))
    }
}

/// `user.migrated`: a legacy identity now belongs to `user_id` (a new user, or one who had
/// signed in another way), for receivers that mark the legacy account as moved.
fn migrated_event(
    env: crate::config::Env,
    now: i64,
    user_id: &str,
    provider: &Provider,
    sub: &str,
    new_user: bool,
) -> Write {
    event(
        env,
        now,
        "user.migrated",
        json!({
            "user_id": user_id,
            "provider": provider.name(),
            "legacy_subject": sub,
            "new_user": new_user,
        }),
    )
}

/// Whether linking `identity` to `user` would make one person two subjects of one provider.
fn conflicts(user: &User, identity: &LegacyIdentity) -> bool {
    user.legacy_identities
        .iter()
        .any(|li| li.same_provider(identity) && li.subject != identity.subject)
}

/// Where the user a provider's subject is linked to is found.
fn identity_index(keys: &Keys, provider: &Provider, sub: &str) -> Key {
    keys.identity(&Digest::of(
        format!("{}\0{sub}", provider.config.issuer).as_bytes(),
    ))
}

fn identity_conflict(provider: &Provider) -> Error {
    Error::new(
        ErrorCode::FailedPrecondition,
        ErrorReason::IdentityConflict,
        format!(
            "the verified email belongs to a user already linked to another `{}` account",
            provider.name()
        ),
    )
}
