//! Legacy opaque tokens carry nothing to verify: the legacy provider's UserInfo says whether
//! it knows one. Its answer is cached in the store by the token's digest (a UserInfo call
//! costs ~100 ms and counts against the provider's rate limit; a store round trip ~25 µs),
//! concurrent validations of one token share one look-up (single-flight), refusals are
//! cached too, and a token that cannot be one of the provider's is refused without a call.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::validate::Verified;
use super::{LegacyIds, Provider, ProviderTokens};
use crate::error::Error;
use crate::session::verdict::{Origin, Reason, Source, Verdict};
use crate::store::keys::Digest;
use crate::upstream::userinfo::UserInfoOutcome;

/// How long a UserInfo answer is reused: accepted tokens a minute; refusals, and answers that
/// say nothing usable, 10 s — so that the same junk string repeated costs one call per 10 s,
/// not one per request.
const USERINFO_OK_TTL: Duration = Duration::from_secs(60);
const USERINFO_REFUSED_TTL: Duration = Duration::from_secs(10);

/// A UserInfo answer as cached in the store (and shared by concurrent validations).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct CachedUserInfo {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<Map<String, Value>>,
    /// An answer that said nothing usable (no subject, not JSON, an unexpected status): the
    /// provider's fault, replayed as UNAVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unusable: Option<String>,
    /// When the provider answered (Unix seconds; 0 in answers cached by earlier versions): a
    /// back-channel logout of the user after it revokes the cached answer.
    #[serde(default)]
    at: i64,
}

impl CachedUserInfo {
    fn into_result(self, provider: &Provider) -> Result<Result<Map<String, Value>, Reason>, Error> {
        match (self.ok, self.claims, self.unusable) {
            (_, _, Some(why)) => Err(provider.unusable_answer(&why)),
            (true, Some(c), None) => Ok(Ok(c)),
            // The provider refused the token: it does not know it as a live session.
            _ => Ok(Err(Reason::NotFound)),
        }
    }

    /// What to remember of an answer, and for how long; `None` for a transient one (a rate
    /// limit, an unreachable provider), which is never remembered.
    fn of(outcome: UserInfoOutcome, now: i64) -> Option<(Self, Duration)> {
        let refused = |unusable: Option<String>| Self {
            ok: false,
            claims: None,
            unusable,
            at: 0,
        };
        Some(match outcome {
            UserInfoOutcome::Ok(claims) => (
                Self {
                    ok: true,
                    claims: Some(claims),
                    unusable: None,
                    at: now,
                },
                USERINFO_OK_TTL,
            ),
            UserInfoOutcome::Rejected(_) => (refused(None), USERINFO_REFUSED_TTL),
            UserInfoOutcome::MissingSubject => (
                refused(Some("the answer names no subject".into())),
                USERINFO_REFUSED_TTL,
            ),
            UserInfoOutcome::Invalid(why) => (refused(Some(why)), USERINFO_REFUSED_TTL),
            UserInfoOutcome::RateLimited(_) | UserInfoOutcome::Unavailable(_) => return None,
        })
    }
}

impl ProviderTokens {
    /// The verdict on an opaque token of `provider` (the one that takes them). The cache
    /// fails open: with the store down the provider is asked directly (within its budget).
    pub(crate) async fn validate_opaque(
        &self,
        token: &str,
        provider: &Provider,
    ) -> Result<Verdict, Error> {
        let now = self.clock.now_secs();
        if !provider.opaque_token_plausible(token) {
            let mut v = Verdict::invalid(Reason::Malformed, Origin::Unknown, Source::LocalVerify);
            v.provider = provider.name().to_owned();
            return Ok(v);
        }
        let digest = Digest::of(token.as_bytes());
        if self.denied(&LegacyIds::new("", None, digest)) {
            let mut v = Verdict::invalid(Reason::Revoked, Origin::Legacy, Source::Cache);
            v.provider = provider.name().to_owned();
            return Ok(v);
        }
        let (cached, source) = self
            .userinfo_flight
            .run(*digest.as_bytes(), || {
                self.userinfo_answer(token, &digest, provider)
            })
            .await?;
        let answered_at = cached.at;
        let mut answer = cached.into_result(provider)?;
        // The user logged out at the provider (back-channel) after it vouched for the token.
        if let Ok(claims) = &answer
            && let Some(sub) = claims.get("sub").and_then(Value::as_str)
            && self
                .revoked
                .login_logged_out(&provider.config.issuer, "sub", sub, answered_at)
        {
            answer = Err(Reason::Revoked);
        }
        Ok(self.userinfo_verdict(provider, answer, source, now))
    }

    /// The provider's answer about `token`: from the store's cache, else from UserInfo
    /// (then cached).
    async fn userinfo_answer(
        &self,
        token: &str,
        digest: &Digest,
        provider: &Provider,
    ) -> Result<(CachedUserInfo, Source), Error> {
        let key = self.keys.userinfo(digest);
        match self.store.get(&key).await {
            Ok(Some(bytes)) => {
                if let Ok(cached) = serde_json::from_slice::<CachedUserInfo>(&bytes) {
                    return Ok((cached, Source::Cache));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "UserInfo cache unavailable; asking the provider")
            }
        }
        // `Provider::userinfo` returns transient outcomes as errors already.
        let (cached, ttl) =
            CachedUserInfo::of(provider.userinfo(token).await?, self.clock.now_secs())
                .ok_or_else(|| provider.unusable_answer("unavailable"))?;
        if let Ok(bytes) = serde_json::to_vec(&cached) {
            let write = crate::store::Write::Put {
                key,
                value: bytes,
                ttl: Some(ttl),
            };
            if let Err(e) = self.store.write(vec![write]).await {
                tracing::debug!(error = %e, "could not cache the UserInfo answer");
            }
        }
        Ok((cached, Source::Upstream))
    }

    fn userinfo_verdict(
        &self,
        provider: &Provider,
        answer: Result<Map<String, Value>, Reason>,
        source: Source,
        now: i64,
    ) -> Verdict {
        let claims = answer.map(Arc::new);
        let verified = claims.as_ref().map(|claims| Verified {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            expires_at: None,
            claims: Some(claims.clone()),
        });
        self.verdict(provider, verified.map_err(|r| *r), source, now)
    }
}
