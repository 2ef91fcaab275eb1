//! OpenID Connect Back-Channel Logout 1.0 from a legacy or external provider: the provider
//! posts a signed logout token when a user (`sub`) or one of its sessions (`sid`) logs out,
//! and every token of that login issued up to the logout is REVOKED on every replica —
//! through the revoked set and channel that deny-listed tokens use, so a replica that missed
//! the message catches it on its next reload, and nothing of the logout is lost while users
//! migrate.
//!
//! The token is checked as §2.6 of the specification says: signed by the issuer's keys with an
//! allowed algorithm; `iss` the provider's; `aud` one of `backchannel_logout_audiences`; `iat`
//! present and not in the future; `exp` present and not past; a `jti`; an `events` claim with
//! the back-channel logout event as an object; a `sub`, a `sid` or both; no `nonce` (so that an
//! ID token can never pass for a logout token). A `typ` header, when present, is `logout+jwt`
//! or `JWT`. A `jti` is taken once: a replay changes nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Provider, ProviderTokens};
use crate::config::LogoutRevokes;
use crate::error::{Error, ErrorReason};
use crate::session::revocation::RevokedSids;
use crate::session::token::{self, Shape, audience_matches, numeric_date};
use crate::store::keys::Digest;

/// The event a logout token carries (§2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The longest `jti` kept.
const MAX_JTI: usize = 256;
/// The longest `sub` or `sid` taken.
const MAX_ID: usize = 512;

/// A logout the provider asked for.
pub(crate) struct Logout {
    pub provider: Arc<Provider>,
    pub sub: Option<String>,
    pub sid: Option<String>,
    /// The logout's time (its `iat`): tokens issued up to it are revoked.
    pub at: i64,
    /// False when this `jti` was taken before (a redelivery or a replay): nothing was done.
    pub fresh: bool,
    pub revokes: LogoutRevokes,
}

impl ProviderTokens {
    /// Takes a logout token `token` posted for the provider named `name`.
    pub(crate) async fn backchannel_logout(
        &self,
        name: &str,
        token: &str,
    ) -> Result<Logout, Error> {
        let (provider, settings) = self
            .providers
            .all()
            .filter(|p| p.name() == name)
            .find_map(|p| Some((p.clone(), p.config.backchannel_logout.clone()?)))
            .ok_or_else(|| {
                Error::new(
                    crate::error::ErrorCode::NotFound,
                    ErrorReason::ProviderNotFound,
                    "no provider of that name takes back-channel logouts",
                )
            })?;
        let now = self.clock.now_secs();
        if token.is_empty() || token.len() > self.max_token_bytes {
            return Err(invalid("empty or too large"));
        }
        let Ok(Shape::Jws(jws)) = token::classify(token) else {
            return Err(invalid("not a signed JWT"));
        };
        let header = token::header_typed(&jws, token::LOGOUT_TYPS).map_err(|r| {
            invalid(&format!(
                "header: {} (typ must be logout+jwt or JWT)",
                r.as_str()
            ))
        })?;
        let claims = token::payload(&jws).map_err(|r| invalid(r.as_str()))?;
        match provider.verify_signature(&jws, &header).await {
            Ok(()) => {}
            Err(Ok(reason)) => return Err(invalid(reason.as_str())),
            Err(Err(e)) => return Err(e),
        }
        let checked = check(
            &claims,
            &provider,
            &settings.audiences,
            now,
            self.leeway_secs,
        )?;

        // A `jti` is taken once, for as long as the token could be presented.
        let ttl = (checked.exp + self.leeway_secs - now).max(1) as u64;
        let jti_key = self.keys.logout_jti(&Digest::of(
            format!("{}\0{}", provider.config.issuer, checked.jti).as_bytes(),
        ));
        let fresh = self
            .store
            .put_if_absent(&jti_key, b"1", Some(Duration::from_secs(ttl)))
            .await?;
        let logout = Logout {
            sub: checked.sub,
            sid: checked.sid,
            at: checked.iat,
            fresh,
            revokes: settings.revokes,
            provider,
        };
        if !fresh {
            return Ok(logout);
        }
        // Revoked until every token issued up to the logout has expired.
        let until = logout.at
            + logout.provider.config.max_token_lifetime.as_secs() as i64
            + self.leeway_secs;
        let iss = logout.provider.config.issuer.clone();
        let ids: Vec<String> = [("sub", &logout.sub), ("sid", &logout.sid)]
            .into_iter()
            .filter_map(|(kind, v)| {
                let key = RevokedSids::login_key(&iss, kind, v.as_deref()?);
                Some(RevokedSids::logout_id(&key, logout.at))
            })
            .collect();
        let now_ms = self.clock.now_ms();
        let writes = ids
            .iter()
            .map(|id| RevokedSids::write(&self.keys, id, until, now))
            .collect();
        self.store.write(writes).await?;
        for id in &ids {
            self.revoked
                .announce(&*self.store, id, until, now_ms)
                .await?;
        }
        metrics::counter!("sessiongate_backchannel_logouts_total", "provider" => logout.provider.name().to_owned())
            .increment(1);
        Ok(logout)
    }
}

/// What a valid logout token says.
struct Checked {
    sub: Option<String>,
    sid: Option<String>,
    iat: i64,
    exp: i64,
    jti: String,
}

fn check(
    claims: &Map<String, Value>,
    provider: &Provider,
    audiences: &[String],
    now: i64,
    leeway: i64,
) -> Result<Checked, Error> {
    if claims.get("iss").and_then(Value::as_str) != Some(provider.config.issuer.as_str()) {
        return Err(invalid("iss is not the provider's issuer"));
    }
    if !audience_matches(claims, audiences) {
        return Err(invalid("aud names none of backchannel_logout_audiences"));
    }
    let date = |name: &str| claims.get(name).and_then(numeric_date);
    let iat = date("iat").ok_or_else(|| invalid("no valid iat"))?;
    if iat > now + leeway {
        return Err(invalid("iat is in the future"));
    }
    let exp = date("exp").ok_or_else(|| invalid("no valid exp"))?;
    if now >= exp + leeway {
        return Err(invalid("expired"));
    }
    if exp - iat > provider.config.max_token_lifetime.as_secs() as i64 {
        return Err(invalid("lives longer than max_token_lifetime_seconds"));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI)
        .ok_or_else(|| invalid("no jti"))?;
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(invalid("events has no back-channel logout event"));
    }
    if claims.contains_key("nonce") {
        return Err(invalid("a nonce: an ID token is no logout token"));
    }
    let id = |name: &str| -> Result<Option<String>, Error> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("{name} is not a usable string"))),
        }
    };
    let (sub, sid) = (id("sub")?, id("sid")?);
    if sub.is_none() && sid.is_none() {
        return Err(invalid("neither sub nor sid"));
    }
    Ok(Checked {
        sub,
        sid,
        iat,
        exp,
        jti: jti.to_owned(),
    })
}

fn invalid(why: &str) -> Error {
    Error::invalid_argument(
        ErrorReason::InvalidLogoutToken,
        format!("not a valid logout token: {why}"),
    )
}
