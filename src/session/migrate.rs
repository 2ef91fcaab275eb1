//! `MigrateSession`: a still-valid legacy access token becomes a native session, without the
//! user logging in again (DESIGN.md §3.2).
//!
//! This slice: provider choice, local verification of JWT legacy tokens first (signature,
//! issuer, audience, allowed client ids — so tokens issued to other clients never reach the
//! provider), the UserInfo call with its status mapping, `sub` agreement, identity linking by
//! `(provider, sub)` claimed atomically across replicas, and the new session. Still to come
//! (issue #5): the replay window with single-flight across replicas, linking by verified
//! email, rate limits.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{AuthFactor, ClientInfo, LegacyIdentity, User};
use super::providers::Provider;
use super::service::{Created, SessionService, check_client, check_custom_claims, session_minutes};
use super::token::{self, Shape};
use crate::error::{Error, ErrorCode};
use crate::store::Write;
use crate::store::keys::Digest;
use crate::upstream::UserInfoOutcome;

/// A `MigrateSession` call, decoded.
#[derive(Debug, Clone, Default)]
pub struct MigrateRequest {
    pub legacy_token: String,
    pub provider: String,
    pub duration_minutes: u32,
    pub custom_claims: Map<String, Value>,
    pub client: ClientInfo,
}

fn rejected(why: &str) -> Error {
    Error::new(
        ErrorCode::Unauthenticated,
        "LEGACY_TOKEN_REJECTED",
        format!("the legacy token was refused: {why}"),
    )
}

impl SessionService {
    pub async fn migrate(&self, req: MigrateRequest) -> Result<Created, Error> {
        if req.legacy_token.is_empty() {
            return Err(Error::invalid_argument(
                "TOKEN_REQUIRED",
                "legacy_token is empty",
            ));
        }
        if req.legacy_token.len() > self.max_token_bytes {
            return Err(Error::invalid_argument(
                "FIELD_TOO_LARGE",
                "legacy_token is larger than the token size cap",
            ));
        }
        let minutes = session_minutes(req.duration_minutes, self.default_minutes)?;
        check_custom_claims(&req.custom_claims)?;
        check_client(&req.client)?;
        let provider = self.migration_provider(&req.provider)?;
        let now = self.clock.now_ms();

        // 1. A JWT is verified locally first: a token of another client or issuer never
        //    reaches the provider (and does not spend its rate limit).
        let jwt_sub = match token::classify(&req.legacy_token) {
            Ok(Shape::Jws(jws)) if provider.accepts_jwt() => {
                let header = token::header(&jws).map_err(|r| rejected(r.as_str()))?;
                let claims = token::payload(&jws).map_err(|r| rejected(r.as_str()))?;
                if claims.get("iss").and_then(Value::as_str)
                    != Some(provider.config.issuer.as_str())
                {
                    return Err(rejected("issued by another issuer"));
                }
                match provider
                    .verify(&jws, &header, claims, now.div_euclid(1000))
                    .await
                {
                    Ok(jwt) => Some(jwt.subject),
                    Err(Ok(reason)) => return Err(rejected(reason.as_str())),
                    Err(Err(e)) => return Err(e),
                }
            }
            Ok(Shape::Jws(_)) => return Err(rejected("this provider does not issue JWTs")),
            Ok(Shape::Other) if provider.accepts_opaque() => None,
            _ => return Err(rejected("not a token of this provider")),
        };

        // 2. The store must be up before the provider is asked: a UserInfo call whose result
        //    cannot be stored is wasted (and rate-limited).
        self.store.ping().await?;

        // 3. UserInfo.
        let url = provider.userinfo_endpoint().ok_or_else(|| {
            Error::unavailable(
                "LEGACY_PROVIDER_UNAVAILABLE",
                format!(
                    "the UserInfo endpoint of provider `{}` is not known yet; retry shortly",
                    provider.name()
                ),
            )
        })?;
        let info = match provider.userinfo.fetch(&url, &req.legacy_token).await {
            UserInfoOutcome::Ok(info) => info,
            UserInfoOutcome::Rejected(status) => {
                return Err(rejected(&format!("UserInfo answered {status}")));
            }
            UserInfoOutcome::RateLimited(after) => {
                return Err(Error::new(
                    ErrorCode::ResourceExhausted,
                    "LEGACY_RATE_LIMITED",
                    format!(
                        "provider `{}` is rate-limiting UserInfo calls; retry later",
                        provider.name()
                    ),
                )
                .with_retry_after(after.unwrap_or(std::time::Duration::from_secs(1))));
            }
            UserInfoOutcome::Unavailable(why) => {
                return Err(Error::unavailable(
                    "LEGACY_PROVIDER_UNAVAILABLE",
                    format!(
                        "the UserInfo endpoint of provider `{}` is unavailable ({why}); retry shortly",
                        provider.name()
                    ),
                ));
            }
            UserInfoOutcome::Invalid(why) if why.contains("`sub`") => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "USERINFO_MISSING_SUBJECT",
                    "the legacy provider's UserInfo answer has no `sub`: the identity cannot be linked",
                ));
            }
            UserInfoOutcome::Invalid(why) => {
                return Err(Error::unavailable(
                    "LEGACY_PROVIDER_UNAVAILABLE",
                    format!(
                        "the UserInfo answer of provider `{}` was not usable ({why})",
                        provider.name()
                    ),
                ));
            }
        };
        let sub = info
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // OIDC Core §5.3.2: UserInfo's `sub` must be the token's.
        if jwt_sub.is_some_and(|s| s != sub) {
            return Err(rejected("UserInfo names another subject than the token"));
        }

        // 4. The user: by (provider, sub), claimed atomically so that concurrent migrations of
        //    one identity on any replica end with one user.
        let (user, user_created, mut writes) =
            self.user_for_identity(&provider, &sub, &info, now).await?;

        // 5. The session.
        let factors = vec![AuthFactor {
            kind: "legacy_migration".into(),
            delivery: provider.name().to_owned(),
            last_authenticated_at_ms: Some(now),
        }];
        let (session, session_token) = self.mint_session(
            &user.user_id,
            factors,
            minutes,
            req.custom_claims,
            req.client,
            "migration",
            now,
            &mut writes,
        )?;
        self.store.write(writes).await?;
        let session_jwt = self.issuer.mint(&session, now)?;
        metrics::counter!("sessiongate_migrations_total", "provider" => provider.name().to_owned(), "outcome" => if user_created { "user_created" } else { "user_found" })
            .increment(1);
        Ok(Created {
            user,
            session,
            session_token,
            session_jwt,
            user_created,
        })
    }

    fn migration_provider(&self, name: &str) -> Result<Arc<Provider>, Error> {
        let legacy: Vec<&Arc<Provider>> = self.providers.all().filter(|p| p.is_legacy()).collect();
        let found = if name.is_empty() {
            match legacy.as_slice() {
                [one] => Some(*one),
                [] => None,
                _ => {
                    return Err(Error::invalid_argument(
                        "PROVIDER_REQUIRED",
                        "several legacy providers are configured: name one in `provider`",
                    ));
                }
            }
        } else {
            legacy.iter().find(|p| p.name() == name).copied()
        };
        found.cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::FailedPrecondition,
                "PROVIDER_NOT_FOUND",
                "no such legacy provider is configured",
            )
        })
    }

    /// The user linked to `(provider, sub)`, created (and linked) if there is none yet.
    /// Returns the writes still to make with the session.
    async fn user_for_identity(
        &self,
        provider: &Provider,
        sub: &str,
        info: &Map<String, Value>,
        now: i64,
    ) -> Result<(User, bool, Vec<Write>), Error> {
        let index = self.keys.identity(&Digest::of(
            format!("{}\0{sub}", provider.name()).as_bytes(),
        ));
        let candidate = format!("{}{}", self.env_prefix("user"), uuid::Uuid::new_v4());
        // The index decides: whoever sets it first owns the identity.
        let won = self
            .store
            .put_if_absent(&index, candidate.as_bytes(), None)
            .await?;
        let user_id = if won {
            candidate
        } else {
            let id = self.store.get(&index).await?.ok_or_else(|| {
                Error::unavailable("STORE_UNAVAILABLE", "identity index vanished; retry")
            })?;
            String::from_utf8(id).map_err(Error::internal)?
        };
        if let Some(bytes) = self.store.get(&self.keys.user(&user_id)).await? {
            return Ok((Self::decode(&bytes)?, false, Vec::new()));
        }
        // New — or the record is not written yet (the winner of a concurrent migration is
        // about to, or crashed in between): write it; only the winner reports a creation.
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let user = User {
            user_id: user_id.clone(),
            email: text("email"),
            email_verified: info
                .get("email_verified")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: text("name"),
            legacy_identities: vec![LegacyIdentity {
                provider: provider.name().to_owned(),
                subject: sub.to_owned(),
            }],
            created_at_ms: now,
        };
        let mut writes = vec![Write::Put {
            key: self.keys.user(&user_id),
            value: Self::encode(&user)?,
            ttl: None,
        }];
        if won {
            writes.push(Write::Event(self.event(
                "user.created",
                json!({"user_id": user_id, "created_via": "migration", "provider": provider.name()}),
            )));
        }
        Ok((user, won, writes))
    }
}
