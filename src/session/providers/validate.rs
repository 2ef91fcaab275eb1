//! The verdict on a provider's JWT: verified against the provider's own keys (once; the
//! verification is cached by token digest), checked against the deny-list on every call, and
//! judged by the provider's policy — a legacy token under `upgrade` is VALID with action
//! MIGRATE, under `reject` it is INVALID (LEGACY_RETIRED).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Provider, ProviderTokens, VerifiedProviderJwt, signed_digest};
use crate::config::Policy;
use crate::error::Error;
use crate::session::claims::Claims;
use crate::session::token::{Header, Jws};
use crate::session::verdict::{Action, Origin, Reason, Source, Verdict};
use crate::store::keys::Digest;

/// A cached verification of a provider's JWT.
pub(super) struct ProviderHit {
    provider: Arc<Provider>,
    jwt: VerifiedProviderJwt,
    /// The digest of the token's signing input: what its deny-list entry is keyed by.
    signed: Digest,
}

impl ProviderTokens {
    /// The verdict on the JWT with digest `digest`, if this process verified it already.
    pub(crate) fn cached(&self, digest: &Digest, now: i64) -> Option<Verdict> {
        let hit = self.cache.get(digest.as_bytes())?;
        let jwt = self.not_denied(&hit.provider, hit.jwt.clone(), &hit.signed);
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
                let signed = signed_digest(jws);
                self.cache.insert(
                    *digest.as_bytes(),
                    Arc::new(ProviderHit {
                        provider: provider.clone(),
                        jwt: jwt.clone(),
                        signed,
                    }),
                );
                let jwt = self.not_denied(provider, jwt, &signed);
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
        jwt: Result<VerifiedProviderJwt, Reason>,
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
                v.subject = jwt.subject.clone();
                v.expires_at_ms = jwt.expires_at.map(|exp| exp * 1000);
                v.claims = Some(Claims::Json(jwt.claims.clone()));
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
