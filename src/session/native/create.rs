//! `CreateSession`: a session for an existing user or a new one, and the writes that make a
//! session — shared with migration, which mints its sessions the same way.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::NativeSessions;
use crate::config::{SESSION_MINUTES_MAX, SESSION_MINUTES_MIN};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::ids::{self, IdKind};
use crate::session::claims::RESERVED_CLAIMS;
use crate::session::model::{
    AuthFactor, ClientInfo, MIGRATION_FACTOR, Redacted, Session, User, decode, encode,
};
use crate::session::replay::Replay;
use crate::session::{record, token};
use crate::store::Write;
use crate::store::event;
use crate::store::keys::Digest;

/// A request id, as AIP-155 asks for one: a UUID, compared in its lower-case form (a
/// client that upper-cases it on a retry means the same request).
fn request_id(id: &str) -> Result<String, Error> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if id.len() == 36 => Ok(u.hyphenated().to_string()),
        _ => Err(Error::invalid_argument(
            ErrorReason::InvalidRequestId,
            "request_id must be a UUID (8-4-4-4-12 hex digits), generated at random once per login",
        )),
    }
}

/// Custom claims, serialised, at most.
const MAX_CUSTOM_CLAIMS_BYTES: usize = 4096;

/// Whose session to create.
#[derive(Debug, Clone, Serialize)]
pub enum Who {
    UserId(String),
    NewUser {
        email: String,
        email_verified: bool,
        name: String,
    },
}

/// A `CreateSession` call, decoded.
#[derive(Debug, Clone, Serialize)]
pub struct CreateRequest {
    pub who: Option<Who>,
    pub factors: Vec<AuthFactor>,
    pub duration_minutes: u32,
    pub custom_claims: Map<String, Value>,
    pub client: ClientInfo,
    /// The caller's idempotency key (AIP-155), when it sent one; not part of what it asks.
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// How long a `CreateSession`'s work may take (its writes, each bounded by the store's own
/// timeout): its single-flight lock outlives this.
const CREATE_WORK_LIMIT: Duration = Duration::from_secs(5);

/// A minted session and everything the caller gets once (stored only sealed, for replays).
#[derive(Clone, Serialize, Deserialize)]
pub struct Created {
    pub user: User,
    pub session: Session,
    pub session_token: String,
    pub session_jwt: String,
    pub user_created: bool,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("user", &self.user)
            .field("session", &self.session)
            .field("session_token", &Redacted(&self.session_token))
            .field("session_jwt", &Redacted(&self.session_jwt))
            .field("user_created", &self.user_created)
            .finish_non_exhaustive()
    }
}

impl NativeSessions {
    /// `CreateSession`: with a request id, at most one session per client and id within the
    /// replay window (`true` when this is a repeat's answer); without, a session every call.
    pub async fn create_once(
        self: &Arc<Self>,
        caller: &str,
        req: CreateRequest,
    ) -> Result<(Created, bool), Error> {
        let Some(id) = &req.request_id else {
            return Ok((self.create(req).await?, false));
        };
        let id = request_id(id)?;
        // What was asked, so that the id cannot stand for another request. JSON maps are
        // ordered by key here, so the same request always has the same fingerprint.
        let asked = serde_json::to_vec(&req).map_err(Error::internal)?;
        let replay = Replay::creation(&self.keys, caller, &id, Digest::of(&asked));
        let this = self.clone();
        replay
            .run(self.store.clone(), CREATE_WORK_LIMIT, async move {
                this.create(req).await
            })
            .await
    }

    /// Mints a session for an existing user or a new one.
    pub async fn create(&self, req: CreateRequest) -> Result<Created, Error> {
        let minutes = session_minutes(req.duration_minutes, self.default_minutes)?;
        check_custom_claims(&req.custom_claims)?;
        check_factors(&req.factors)?;
        check_client(&req.client)?;
        let now = self.clock.now_ms();
        let mut writes = Vec::new();
        let (user, user_created) = match req.who {
            None => {
                return Err(Error::invalid_argument(
                    ErrorReason::WhoRequired,
                    "set either user_id (an existing user) or new_user",
                ));
            }
            Some(Who::UserId(id)) => (self.load_user(&id).await?, false),
            Some(Who::NewUser {
                email,
                email_verified,
                name,
            }) => {
                check_len("new_user.email", &email, 320)?;
                check_len("new_user.name", &name, 256)?;
                let user = User {
                    user_id: ids::new(IdKind::User, self.env),
                    email,
                    email_verified,
                    name,
                    legacy_identities: Vec::new(),
                    created_at_ms: now,
                };
                writes.push(Write::Put {
                    key: self.keys.user(&user.user_id),
                    value: encode(&user)?,
                    ttl: None,
                });
                // A verified email is what a later migration may link by (first owner wins).
                let email = user.email.trim().to_ascii_lowercase();
                if user.email_verified && !email.is_empty() {
                    self.store
                        .put_if_absent(
                            &self.keys.email(&Digest::of(email.as_bytes())),
                            user.user_id.as_bytes(),
                            None,
                        )
                        .await?;
                }
                writes.push(event(
                    self.env,
                    now,
                    "user.created",
                    json!({"user_id": user.user_id, "created_via": "create_session"}),
                ));
                (user, true)
            }
        };
        let (session, session_token) = self.mint_session(
            &user.user_id,
            req.factors,
            minutes,
            req.custom_claims,
            req.client,
            "create_session",
            now,
            &mut writes,
        )?;
        self.store.write(writes).await?;
        metrics::counter!("sessiongate_sessions_created_total", "via" => "create_session")
            .increment(1);
        self.hand_out(user, session, session_token, user_created, now)
    }

    /// What the caller of a session just written gets, once: the records, the opaque token
    /// and a JWT minted now.
    pub(crate) fn hand_out(
        &self,
        user: User,
        session: Session,
        session_token: String,
        user_created: bool,
        now: i64,
    ) -> Result<Created, Error> {
        Ok(Created {
            session_jwt: self.issuer.mint(&session, now)?,
            user,
            session,
            session_token,
            user_created,
        })
    }

    pub(super) async fn load_user(&self, user_id: &str) -> Result<User, Error> {
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                ErrorReason::UserNotFound,
                format!(
                    "no user `{}` in env {}",
                    truncate(user_id),
                    self.env.as_str()
                ),
            )
        };
        if !ids::may_be(IdKind::User, self.env, user_id) {
            return Err(not_found());
        }
        match self.store.get(&self.keys.user(user_id)).await? {
            Some(bytes) => decode(&bytes),
            None => Err(not_found()),
        }
    }

    /// Adds the writes that create a session for `user_id` to `writes`; returns the session
    /// and its opaque token (which exists only in the caller's hands from now on: the store
    /// keeps its digest).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mint_session(
        &self,
        user_id: &str,
        factors: Vec<AuthFactor>,
        minutes: u32,
        custom_claims: Map<String, Value>,
        client: ClientInfo,
        created_via: &str,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<(Session, String), Error> {
        let session = Session {
            session_id: ids::new(IdKind::Session, self.env),
            user_id: user_id.to_owned(),
            started_at_ms: now,
            last_accessed_at_ms: now,
            expires_at_ms: (now + i64::from(minutes) * 60_000).min(now + self.absolute_lifetime_ms),
            factors,
            attributes: client,
            custom_claims,
        };
        let token = token::new_native_token();
        let digest = Digest::of(token.as_bytes());
        let ttl = self.record_ttl(session.expires_at_ms, now);
        // The indexes before the record that makes the token valid: in a Redis Cluster the
        // batch is applied per hash tag, and a batch cut short must not leave a valid session
        // that revocation by id or by user cannot find.
        writes.push(Write::Put {
            key: self.keys.session_token(&session.session_id),
            value: digest.to_hex().into_bytes(),
            ttl: Some(ttl),
        });
        writes.push(Write::SetAdd {
            key: self.keys.user_sessions(user_id),
            member: session.session_id.clone().into_bytes(),
            ttl: Some(ttl),
        });
        writes.push(Write::Put {
            key: self.keys.session(&digest),
            value: record::encode(&session, self.env, self.format)?,
            ttl: Some(ttl),
        });
        writes.push(event(
            self.env,
            now,
            "session.created",
            json!({
                "session_id": session.session_id,
                "user_id": user_id,
                "created_via": created_via,
                "expires_at": session.expires_at_ms.div_euclid(1000),
            }),
        ));
        Ok((session, token))
    }
}

// === Input checks ===

fn field_too_large(field: &str, max: usize) -> Error {
    Error::invalid_argument(
        ErrorReason::FieldTooLarge,
        format!("{field} is longer than {max} bytes"),
    )
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.len() > max {
        Err(field_too_large(field, max))
    } else {
        Ok(())
    }
}

/// The requested session length, or the default; out-of-range values are refused, not
/// clamped (a caller asking for 10 years should hear no).
pub(crate) fn session_minutes(requested: u32, default: u32) -> Result<u32, Error> {
    match requested {
        0 => Ok(default),
        m if (SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX).contains(&m) => Ok(m),
        m => Err(Error::invalid_argument(
            ErrorReason::SessionDurationOutOfRange,
            format!(
                "session_duration_minutes {m} is outside {SESSION_MINUTES_MIN}..={SESSION_MINUTES_MAX}"
            ),
        )),
    }
}

pub(crate) fn check_custom_claims(claims: &Map<String, Value>) -> Result<(), Error> {
    if let Some(k) = claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(Error::invalid_argument(
            ErrorReason::ReservedClaim,
            format!(
                "custom claim `{k}` is reserved; reserved names: {}",
                RESERVED_CLAIMS.join(", ")
            ),
        ));
    }
    let size = serde_json::to_vec(claims)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(field_too_large(
            "session_custom_claims (as JSON)",
            MAX_CUSTOM_CLAIMS_BYTES,
        ));
    }
    Ok(())
}

pub(crate) fn check_factors(factors: &[AuthFactor]) -> Result<(), Error> {
    if factors.len() > 16 {
        return Err(Error::invalid_argument(
            ErrorReason::FieldTooLarge,
            "at most 16 authentication_factors",
        ));
    }
    for f in factors {
        check_len("authentication_factors.type", &f.kind, 64)?;
        check_len("authentication_factors.delivery", &f.delivery, 128)?;
        check_len("authentication_factors.acr", &f.acr, 128)?;
        if f.kind == MIGRATION_FACTOR {
            return Err(Error::invalid_argument(
                ErrorReason::ReservedFactor,
                format!("factor type `{MIGRATION_FACTOR}` is MigrateSession's own"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_client(c: &ClientInfo) -> Result<(), Error> {
    check_len("client.ip_address", &c.ip_address, 64)?;
    check_len("client.user_agent", &c.user_agent, 512)
}

/// At most 64 characters of caller input in a message.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
