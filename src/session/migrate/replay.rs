//! The replay window of `MigrateSession`: one migration per legacy token across replicas
//! (single-flight through a store lock), its outcome sealed under a key derived from the
//! token and replayed to concurrent and repeated calls.

use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, ErrorReason};
use crate::session::model::{Session, User};
use crate::session::native::Created;
use crate::store::keys::{Digest, Keys};
use crate::store::{Key, Store, Write};

/// How long a migration's outcome is replayed.
const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// How long a refusal (401, 429, …) is replayed.
const REPLAY_REFUSAL: Duration = Duration::from_secs(10);
/// A migration's lock outlives its longest allowed work: the provider's UserInfo timeout,
/// plus this for the rest — a JWKS fetch (bounded at 5 s) and the store's round trips. A lock
/// that expired mid-work would let a second migration of the same token start.
pub(super) const REPLAY_LOCK_MARGIN: Duration = Duration::from_secs(10);
/// How long a concurrent call waits for the migration in progress.
pub(super) const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// A migration outcome as stored for replays — encrypted, because it holds a session token.
#[derive(Serialize, Deserialize)]
// Built once per migration and serialised at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Done {
        user: User,
        session: Session,
        session_token: String,
        session_jwt: String,
        user_created: bool,
    },
    Refused {
        code: ErrorCode,
        reason: ErrorReason,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

/// Where and how one legacy token's migration is recorded. The record sits under the
/// token's digest and is sealed with AES-256-GCM under a key derived from the token itself:
/// only a holder of the legacy token can read the session it was exchanged for.
pub(super) struct Replay {
    record: Key,
    pub lock: Key,
    /// This call's lock value: only the owner releases the lock.
    pub owner: [u8; 16],
    key: LessSafeKey,
}

impl Replay {
    pub fn new(keys: &Keys, token: &str) -> Self {
        let digest = Digest::of(token.as_bytes());
        // Domain-separated from the digest that names the record.
        let derived = Digest::of(format!("sessiongate replay key v1\0{token}").as_bytes());
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, derived.as_bytes()).expect("32-byte key"),
        );
        Self {
            record: keys.replay(&digest),
            lock: keys.replay_lock(&digest),
            owner: rand::random(),
            key,
        }
    }

    /// Releases the lock if this call still holds it.
    pub async fn release(&self, store: &dyn Store) -> Result<(), Error> {
        store.delete_if_equals(&self.lock, &self.owner).await?;
        Ok(())
    }

    pub async fn read(&self, store: &dyn Store) -> Result<Option<Result<Created, Error>>, Error> {
        let Some(sealed) = store.get(&self.record).await? else {
            return Ok(None);
        };
        if sealed.len() < 12 {
            return Ok(None);
        }
        let (nonce, body) = sealed.split_at(12);
        let mut body = body.to_vec();
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::internal("replay nonce"))?;
        let Ok(plain) = self.key.open_in_place(nonce, Aad::empty(), &mut body) else {
            // Not sealed with this token's key: ignore it rather than trust it.
            return Ok(None);
        };
        // A fixed message: a parser's error quotes the input, and this one holds a session
        // token.
        let outcome: Outcome = serde_json::from_slice(plain).map_err(|_| {
            tracing::error!("a migration replay record does not parse");
            Error::internal("a migration replay record does not parse")
        })?;
        Ok(Some(match outcome {
            Outcome::Done {
                user,
                session,
                session_token,
                session_jwt,
                user_created,
            } => Ok(Created {
                user,
                session,
                session_token,
                session_jwt,
                user_created,
            }),
            Outcome::Refused {
                code,
                reason,
                message,
                retry_after_ms,
            } => {
                let mut e = Error::new(code, reason, message);
                e.retry_after = retry_after_ms.map(Duration::from_millis);
                Err(e)
            }
        }))
    }

    /// Records the outcome (when it is worth replaying) and releases the lock, atomically.
    pub async fn finish(
        &self,
        store: &dyn Store,
        result: &Result<Created, Error>,
    ) -> Result<(), Error> {
        let (outcome, ttl) = match result {
            Ok(c) => (
                Outcome::Done {
                    user: c.user.clone(),
                    session: c.session.clone(),
                    session_token: c.session_token.clone(),
                    session_jwt: c.session_jwt.clone(),
                    user_created: c.user_created,
                },
                REPLAY_WINDOW,
            ),
            // Our own rate limits are about the caller, not the token: never replayed.
            Err(e)
                if e.reason != ErrorReason::RateLimited
                    && matches!(
                        e.code,
                        ErrorCode::Unauthenticated
                            | ErrorCode::ResourceExhausted
                            | ErrorCode::FailedPrecondition
                    ) =>
            {
                (
                    Outcome::Refused {
                        code: e.code,
                        reason: e.reason,
                        message: e.message.clone(),
                        retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
                    },
                    REPLAY_REFUSAL,
                )
            }
            // Transient failures are not replayed: the next call tries again.
            Err(_) => return self.release(store).await,
        };
        let mut body = serde_json::to_vec(&outcome).map_err(Error::internal)?;
        let nonce_bytes: [u8; 12] = rand::random();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::empty(),
                &mut body,
            )
            .map_err(|_| Error::internal("sealing the replay record"))?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend(body);
        // The record first: a waiter that finds the lock gone finds the outcome.
        store
            .write(vec![Write::Put {
                key: self.record.clone(),
                value: sealed,
                ttl: Some(ttl),
            }])
            .await?;
        self.release(store).await
    }
}
