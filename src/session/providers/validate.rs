//! The verdict on a provider's JWT: verified against the provider's own keys (once; the
//! verification is cached by token digest), checked against the deny-list on every call, and
//! judged by the provider's policy — a legacy token under `upgrade` is VALID with action
//! MIGRATE, under `reject` it is INVALID (LEGACY_RETIRED).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::denylist::LegacyIds;
use super::{Provider, ProviderTokens, signed_digest};
use crate::config::Policy;
use crate::error::Error;
use crate::session::claims::Claims;
use crate::session::token::{self, Header, Jws};
use crate::session::verdict::{Action, Origin, Reason, Source, Verdict};
use crate::store::keys::Digest;

/// How long a verification is reused: a key the provider withdraws from its key set stops
/// validating tokens this process verified before within this (plus the key set's refresh).
const REVERIFY_AFTER_SECS: i64 = 300;

/// A cached verification of a provider's JWT: what a BASIC verdict needs and the token's
/// deny-list ids, no claims (~300 bytes an entry, against ~1.6 KB with the parsed claims in
/// moka). A FULL hit reads the claims again from the token in hand — the same bytes that
/// verified, since the cache is keyed by the token's digest.
pub(super) struct ProviderHit {
    provider: Arc<Provider>,
    subject: Box<str>,
    expires_at: Option<i64>,
    verified_at: i64,
    ids: LegacyIds,
}

impl ProviderTokens {
    /// The verdict on the JWT `jws` with digest `digest`, if this process verified it
    /// already; `claims`: whether the caller wants them (the FULL view).
    pub(crate) fn cached(
        &self,
        digest: &Digest,
        jws: &Jws<'_>,
        claims: bool,
        now: i64,
    ) -> Option<Verdict> {
        let hit = self.cache.get(digest.as_bytes())?;
        if now >= hit.verified_at + REVERIFY_AFTER_SECS {
            return None;
        }
        let jwt = if self.denied(&hit.ids) {
            Err(Reason::Revoked)
        } else {
            Ok(Verified {
                subject: &hit.subject,
                expires_at: hit.expires_at,
                claims: claims
                    .then(|| token::payload(jws).ok().map(Arc::new))
                    .flatten(),
            })
        };
        Some(self.verdict(&hit.provider, jwt, Source::Cache, now))
    }

    /// The verdict on a JWT routed to `provider` by its `iss`.
    pub(crate) async fn validate_jwt(
        &self,
        provider: &Arc<Provider>,
        digest: &Digest,
        jws: &Jws<'_>,
        header: &Header,
        claims: Map<String, Value>,
        now: i64,
    ) -> Result<Verdict, Error> {
        match provider.verify(jws, header, claims, now).await {
            Ok(jwt) => {
                let ids = LegacyIds::of_claims(
                    &provider.config.issuer,
                    &jwt.claims,
                    signed_digest(jws),
                    now,
                );
                let denied = self.denied(&ids);
                self.cache.insert(
                    *digest.as_bytes(),
                    Arc::new(ProviderHit {
                        provider: provider.clone(),
                        subject: jwt.subject.as_str().into(),
                        expires_at: jwt.expires_at,
                        verified_at: now,
                        ids,
                    }),
                );
                let jwt = if denied {
                    Err(Reason::Revoked)
                } else {
                    Ok(Verified {
                        subject: &jwt.subject,
                        expires_at: jwt.expires_at,
                        claims: Some(jwt.claims.clone()),
                    })
                };
                Ok(self.verdict(provider, jwt, Source::LocalVerify, now))
            }
            Err(Ok(reason)) => Ok(self.verdict(provider, Err(reason), Source::LocalVerify, now)),
            Err(Err(e)) => Err(e),
        }
    }

    /// The verdict on a provider's JWT: its policy applied to a verified token, or the
    /// reason it failed, attributed to the provider.
    pub(super) fn verdict(
        &self,
        provider: &Provider,
        jwt: Result<Verified<'_>, Reason>,
        source: Source,
        now: i64,
    ) -> Verdict {
        let origin = if provider.is_legacy() {
            Origin::Legacy
        } else {
            Origin::New
        };
        let mut v = Verdict::invalid(Reason::Malformed, origin, source);
        v.provider = provider.name().to_owned();
        let jwt = match jwt {
            // A cache hit must still be inside its lifetime.
            Ok(jwt)
                if jwt
                    .expires_at
                    .is_some_and(|exp| now >= exp + self.leeway_secs) =>
            {
                Err(Reason::Expired)
            }
            other => other,
        };
        match jwt {
            Err(reason) => v.invalid = Some(reason),
            Ok(jwt) => {
                v.subject = jwt.subject.to_owned();
                v.expires_at_ms = jwt.expires_at.map(|exp| exp * 1000);
                v.claims = jwt.claims.map(Claims::Json);
                match (provider.is_legacy(), provider.policy()) {
                    // The all-at-once cutover: legacy tokens, however good, are retired.
                    (true, Policy::Reject) => v.invalid = Some(Reason::LegacyRetired),
                    (true, Policy::Upgrade) => {
                        v.invalid = None;
                        v.action = Action::Migrate;
                    }
                    _ => v.invalid = None,
                }
            }
        }
        v
    }
}

/// A verified provider token, as a verdict is made from it.
pub(super) struct Verified<'a> {
    pub subject: &'a str,
    /// `exp`, Unix seconds; `None` for opaque tokens.
    pub expires_at: Option<i64>,
    /// `None` when the caller does not want them.
    pub claims: Option<Arc<Map<String, Value>>>,
}
