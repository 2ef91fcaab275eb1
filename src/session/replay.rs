//! Calls that mint a session, made safe to repeat: one run per idempotency key across
//! replicas (single-flight through a store lock), its outcome sealed under a key derived from
//! a secret only the caller holds, and replayed to concurrent and repeated calls.
//!
//! Two calls use it: `MigrateSession`, keyed by the legacy token itself, and `CreateSession`
//! with a `request_id`, keyed by the calling client and the request id (AIP-155). The record
//! holds a session token, so it is sealed (AES-256-GCM) and named by a digest: the store
//! holds neither the secret nor anything a reader of the store could open.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, ErrorReason};
use crate::store::keys::{Digest, Keys};
use crate::store::{Key, Store, Write};

/// How long a migration's outcome is replayed.
const MIGRATION_WINDOW: Duration = Duration::from_secs(60);
/// How long a `CreateSession`'s outcome is replayed: longer than any client's retries of one
/// login (a deadline of seconds, a user pressing the button again), short enough that the
/// sealed records of a busy login page stay small.
const CREATION_WINDOW: Duration = Duration::from_secs(600);
/// How long a refusal (401, 429, …) is replayed.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// A lock outlives its holder's longest allowed work by this margin, for the store's round
/// trips (and, for a migration, a JWKS fetch bounded at 5 s). A lock that expired mid-work
/// would let a second run of the same call start.
const LOCK_MARGIN: Duration = Duration::from_secs(10);
/// How long a concurrent call waits for the run in progress.
const WAIT: Duration = Duration::from_secs(10);

/// An outcome as stored for replays.
#[derive(Serialize, Deserialize)]
enum Outcome<T> {
    Done(T),
    Refused {
        code: ErrorCode,
        reason: ErrorReason,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

/// The sealed record: the outcome, and the fingerprint of the request it answers (absent for
/// a migration, whose key is the whole request that matters: the token).
#[derive(Serialize, Deserialize)]
struct Record<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    #[serde(flatten)]
    outcome: Outcome<T>,
}

/// Where and how one call's outcome is recorded, and who may wait for it.
pub(crate) struct Replay {
    record: Key,
    lock: Key,
    /// This call's lock value: only the owner releases the lock.
    owner: [u8; 16],
    key: LessSafeKey,
    request: Option<Digest>,
    window: Duration,
    /// What a caller gets when the run in progress elsewhere outlasts its wait.
    busy: fn() -> Error,
}

impl Replay {
    /// A legacy token's migration. The record sits under the token's digest and is sealed
    /// under a key derived from the token itself: only a holder of the legacy token can read
    /// the session it was exchanged for.
    pub fn migration(keys: &Keys, token: &str) -> Self {
        let digest = Digest::of(token.as_bytes());
        Self::new(
            keys.replay(&digest),
            keys.replay_lock(&digest),
            // Domain-separated from the digest that names the record.
            &Digest::of(format!("sessiongate replay key v1\0{token}").as_bytes()),
            None,
            MIGRATION_WINDOW,
            || {
                Error::unavailable(
                    ErrorReason::MigrationInProgress,
                    "a migration of this legacy token is still running elsewhere; retry shortly",
                )
            },
        )
    }

    /// A `CreateSession` with a request id. Keyed by the client and the id, so that another
    /// client's id never finds this one's session, and sealed under a key derived from the
    /// id, which the caller generated at random: the store's record and its name reveal
    /// neither. `request` is the request's fingerprint.
    pub fn creation(keys: &Keys, caller: &str, request_id: &str, request: Digest) -> Self {
        let digest =
            Digest::of(format!("sessiongate create v1\0{caller}\0{request_id}").as_bytes());
        Self::new(
            keys.creation(&digest),
            keys.creation_lock(&digest),
            &Digest::of(format!("sessiongate create key v1\0{caller}\0{request_id}").as_bytes()),
            Some(request),
            CREATION_WINDOW,
            || {
                Error::unavailable(
                    ErrorReason::RequestInProgress,
                    "a CreateSession with this request_id is still running; retry shortly",
                )
            },
        )
    }

    fn new(
        record: Key,
        lock: Key,
        secret: &Digest,
        request: Option<Digest>,
        window: Duration,
        busy: fn() -> Error,
    ) -> Self {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, secret.as_bytes()).expect("32-byte key"),
        );
        Self {
            record,
            lock,
            owner: rand::random(),
            key,
            request,
            window,
            busy,
        }
    }

    /// Runs `work` at most once per key within the window, across replicas: the first call
    /// (anywhere) runs it; concurrent and repeated calls get its outcome, `true` for
    /// replayed. The work runs in its own task, so a caller giving up mid-way never leaves a
    /// half-done run that a retry cannot find. `work_limit` bounds the work (the lock lasts
    /// that plus [`LOCK_MARGIN`]).
    pub async fn run<T, F>(
        self,
        store: Arc<dyn Store>,
        work_limit: Duration,
        work: F,
    ) -> Result<(T, bool), Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        if let Some(done) = self.read(&*store).await? {
            return done.map(|c| (c, true));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            if store
                .put_if_absent(&self.lock, &self.owner, Some(work_limit + LOCK_MARGIN))
                .await?
            {
                // The run we waited for may have finished between our last look and taking
                // the lock: its outcome stands, not a second run.
                match self.read(&*store).await {
                    Ok(Some(done)) => {
                        self.release(&*store).await?;
                        return done.map(|c| (c, true));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.release(&*store).await;
                        return Err(e);
                    }
                }
            }
            // Another call (on any replica) is running: wait for its outcome.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            if let Some(done) = self.read(&*store).await? {
                return done.map(|c| (c, true));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err((self.busy)());
            }
        }
        let task = tokio::spawn(async move {
            let result = work.await;
            // Remember the outcome for the window (errors that a retry could change — an
            // unavailable dependency — are not remembered), then release the lock.
            if let Err(e) = self.finish(&*store, &result).await {
                tracing::warn!(error = %e, "could not record an outcome for replays");
                // Still release the lock, so that a retry need not wait for its TTL.
                let _ = self.release(&*store).await;
            }
            result
        });
        task.await
            .map_err(|e| Error::internal(format!("replayable task: {e}")))?
            .map(|c| (c, false))
    }

    /// Releases the lock if this call still holds it.
    async fn release(&self, store: &dyn Store) -> Result<(), Error> {
        store.delete_if_equals(&self.lock, &self.owner).await?;
        Ok(())
    }

    async fn read<T: DeserializeOwned>(
        &self,
        store: &dyn Store,
    ) -> Result<Option<Result<T, Error>>, Error> {
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
            // Not sealed with this call's key: ignore it rather than trust it.
            return Ok(None);
        };
        // A fixed message: a parser's error quotes the input, and this one holds a session
        // token.
        let record: Record<T> = serde_json::from_slice(plain).map_err(|_| {
            tracing::error!("a replay record does not parse");
            Error::internal("a replay record does not parse")
        })?;
        if let Some(request) = &self.request
            && record.request.as_deref() != Some(request.to_hex().as_str())
        {
            return Err(Error::invalid_argument(
                ErrorReason::RequestIdReused,
                "this request_id was used for a different request: generate a new one per login",
            ));
        }
        Ok(Some(match record.outcome {
            Outcome::Done(done) => Ok(done),
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

    /// Records the outcome (when it is worth replaying) and releases the lock.
    async fn finish<T: Serialize>(
        &self,
        store: &dyn Store,
        result: &Result<T, Error>,
    ) -> Result<(), Error> {
        let (outcome, ttl) = match result {
            Ok(done) => (Outcome::Done(done), self.window),
            // Our own rate limits are about the caller, not the request: never replayed.
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
                    REFUSAL_WINDOW,
                )
            }
            // Transient failures, and requests that were wrong, are not replayed: the next
            // call tries again.
            Err(_) => return self.release(store).await,
        };
        let record = Record {
            request: self.request.map(|d| d.to_hex()),
            outcome,
        };
        let mut body = serde_json::to_vec(&record).map_err(Error::internal)?;
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
