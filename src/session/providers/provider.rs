//! One configured provider at run time: its keys, its UserInfo, and how its JWTs are verified
//! (docs/design.md, "How a verdict is decided", steps 3 and 6).
//!
//! A token is routed by its unverified `iss` to exactly one provider; the key is looked up by
//! `(that provider, kid)` only, so a token signed by issuer B's key but claiming issuer A
//! never verifies. After the signature, the claims: exact `iss`, `aud` among the provider's
//! audiences, `exp`/`nbf`/`iat` with leeway on the injectable clock, `sub`, a maximum
//! lifetime, and the allowed client ids (`azp`/`client_id`) when configured.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::config::{Config, Policy, ProviderConfig, ProviderKind, TokenFormat};
use crate::error::{Error, ErrorReason};
use crate::keys::issuer::{IssuerKeys, KeyLookup, KeysAt};
use crate::keys::jwks::{Alg, kid_ok};
use crate::session::model::LegacyIdentity;
use crate::session::token::{Header, Jws, audience_matches, numeric_date};
use crate::session::verdict::Reason;
use crate::signals::{Signal, Signals};
use crate::upstream::budget::TokenBucket;
use crate::upstream::http::http_client;
use crate::upstream::userinfo::{UserInfoClient, UserInfoOutcome};

/// A provider's token that checked out: a verified JWT, or an opaque token UserInfo vouched
/// for.
#[derive(Debug, Clone)]
pub struct VerifiedProviderJwt {
    pub subject: String,
    /// The JWT's `exp` (Unix seconds); `None` for opaque tokens.
    pub expires_at: Option<i64>,
    /// Verified claims, or the UserInfo answer.
    pub claims: Arc<Map<String, Value>>,
}

/// One configured provider at run time.
pub struct Provider {
    pub config: ProviderConfig,
    algs: Vec<Alg>,
    keys: Option<Arc<IssuerKeys>>,
    /// For legacy opaque tokens (and, later, migrations).
    pub userinfo: UserInfoClient,
    userinfo_url: Option<url::Url>,
    leeway_secs: i64,
    max_lifetime_secs: i64,
    /// UserInfo calls this replica may still make now.
    budget: TokenBucket,
    /// Whether identity links made under this provider's name, before links were keyed by
    /// issuer, belong to it (decided once, on first need: see `linked_user`).
    pub(crate) old_links_trusted: tokio::sync::OnceCell<bool>,
    /// Where UserInfo's failures are counted for the rollout's guards.
    signals: Arc<Signals>,
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How old its key set is and whether the last refresh failed; `None` without keys
    /// (opaque tokens only).
    pub fn key_health(&self) -> Option<(Option<std::time::Duration>, bool)> {
        self.keys.as_ref().map(|k| (k.age(), k.refresh_failing()))
    }

    /// `sub` as one of this provider's accounts, as user records list them.
    pub fn identity(&self, sub: &str) -> LegacyIdentity {
        LegacyIdentity {
            provider: self.name().to_owned(),
            subject: sub.to_owned(),
            issuer: self.config.issuer.clone(),
        }
    }

    pub fn is_legacy(&self) -> bool {
        self.config.kind == ProviderKind::Legacy
    }

    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    pub fn accepts_jwt(&self) -> bool {
        matches!(
            self.config.token_format,
            TokenFormat::Jwt | TokenFormat::Both
        )
    }

    /// Calls this provider's UserInfo with `token` (latency recorded). Answers come back
    /// `Ok` — those about the token, and unusable ones ([`UserInfoOutcome::Invalid`]), which
    /// callers remember briefly like refusals; a spent budget, a rate limit or an unreachable
    /// provider is the call's error.
    pub async fn userinfo(&self, token: &str) -> Result<UserInfoOutcome, Error> {
        let unavailable = |why: &str| {
            Error::unavailable(
                ErrorReason::LegacyProviderUnavailable,
                format!(
                    "the UserInfo endpoint of provider `{}` is unavailable ({why}); retry shortly",
                    self.name()
                ),
            )
        };
        let url = self
            .userinfo_endpoint()
            .ok_or_else(|| unavailable("not discovered yet"))?;
        // The provider's budget, whatever asks: validations of junk, migrations, any caller.
        // Past it the provider is not asked at all (its own rate limit is shared with every
        // other client of the tenant, and its 429s would hurt real users).
        self.budget.take().map_err(|wait| {
            metrics::counter!("sessiongate_upstream_budget_exhausted_total", "provider" => self.name().to_owned())
                .increment(1);
            Error::new(
                crate::error::ErrorCode::ResourceExhausted,
                ErrorReason::UpstreamBudgetExhausted,
                format!(
                    "this replica's budget of UserInfo calls to provider `{}` is spent; retry later",
                    self.name()
                ),
            )
            .with_retry_after(wait.max(std::time::Duration::from_millis(1)))
        })?;
        let started = std::time::Instant::now();
        let outcome = tracing::Instrument::instrument(
            self.userinfo.fetch(&url, token),
            tracing::debug_span!(
                "userinfo",
                otel.kind = "client",
                provider = self.name(),
                http.request.method = "GET"
            ),
        )
        .await;
        metrics::histogram!("sessiongate_upstream_duration_seconds", "provider" => self.name().to_owned(), "call" => "userinfo")
            .record(started.elapsed().as_secs_f64());
        // The provider failing, not a token it refuses.
        let failed = matches!(
            outcome,
            UserInfoOutcome::RateLimited(_)
                | UserInfoOutcome::Unavailable(_)
                | UserInfoOutcome::Invalid(_)
        );
        self.signals
            .outcome(Signal::UserinfoCalls, Signal::UserinfoErrors, failed);
        match outcome {
            UserInfoOutcome::RateLimited(after) => Err(Error::new(
                crate::error::ErrorCode::ResourceExhausted,
                ErrorReason::LegacyRateLimited,
                format!(
                    "provider `{}` is rate-limiting UserInfo calls; retry later",
                    self.name()
                ),
            )
            .with_retry_after(after.unwrap_or(std::time::Duration::from_secs(1)))),
            UserInfoOutcome::Unavailable(why) => Err(unavailable(&why)),
            UserInfoOutcome::Invalid(why) => {
                tracing::warn!(provider = self.name(), why, "unusable UserInfo answer");
                Ok(UserInfoOutcome::Invalid(why))
            }
            answer => Ok(answer),
        }
    }

    /// The error for an answer that says nothing usable about the token (no subject, not
    /// JSON, an unexpected status): the provider's fault, retryable, never INVALID.
    pub fn unusable_answer(&self, why: &str) -> Error {
        Error::unavailable(
            ErrorReason::LegacyProviderUnavailable,
            format!(
                "the UserInfo answer of provider `{}` is unusable ({why})",
                self.name()
            ),
        )
    }

    /// The UserInfo endpoint: configured, or discovered (`None` until discovery succeeded).
    pub fn userinfo_endpoint(&self) -> Option<url::Url> {
        self.userinfo_url
            .clone()
            .or_else(|| self.keys.as_ref().and_then(|k| k.discovered_userinfo()))
    }

    /// Whether `token` may be one of this provider's opaque tokens: safe to send upstream,
    /// and of the configured shape. Anything else is refused without a call.
    pub fn opaque_token_plausible(&self, token: &str) -> bool {
        crate::session::token::upstream_safe(token) && self.config.opaque_shape.accepts(token)
    }

    pub fn accepts_opaque(&self) -> bool {
        self.is_legacy()
            && matches!(
                self.config.token_format,
                TokenFormat::Opaque | TokenFormat::Both
            )
    }

    /// Verifies a JWT routed to this provider. `Err(Ok(reason))` is an INVALID verdict;
    /// `Err(Err(error))` a failed call (keys never loaded: `UNAVAILABLE`).
    pub async fn verify(
        &self,
        jws: &Jws<'_>,
        header: &Header,
        claims: Map<String, Value>,
        now: i64,
    ) -> Result<VerifiedProviderJwt, Result<Reason, Error>> {
        self.verify_signature(jws, header).await?;
        self.check_claims(claims, now).map_err(Ok)
    }

    /// Checks that `jws` is signed by one of the provider's keys with an allowed algorithm
    /// (a refresh of the key set for an unknown `kid`, once); its claims are the caller's.
    pub async fn verify_signature(
        &self,
        jws: &Jws<'_>,
        header: &Header,
    ) -> Result<(), Result<Reason, Error>> {
        let invalid = |r| Err(Ok(r));
        let Some(alg) = Alg::parse(&header.alg).filter(|a| self.algs.contains(a)) else {
            return invalid(Reason::UnsupportedAlgorithm);
        };
        let kid = header.kid.as_deref().unwrap_or("");
        if !kid_ok(kid) {
            // Never looked up, never a reason to refetch.
            return invalid(Reason::Malformed);
        }
        let Some(keys) = &self.keys else {
            return invalid(Reason::UnknownKey);
        };
        let key = match keys.get(kid) {
            KeyLookup::Found(k) => k,
            lookup => {
                match lookup {
                    // A token without a kid cannot be explained by a rotation: no fetch.
                    KeyLookup::Unknown if kid.is_empty() => return invalid(Reason::UnknownKey),
                    // A rotation: one refresh (single-flight, cooled down), then look again.
                    KeyLookup::Unknown => keys.refresh_on_demand().await,
                    // Not fetched yet: the background fetch is on it; wait if it is running.
                    _ => keys.wait_for_fetch().await,
                }
                match keys.get(kid) {
                    KeyLookup::Found(k) => k,
                    // The issuer could not be asked: the kid may be a rotation we cannot see
                    // yet. Retryable, not INVALID — a current token must not be refused
                    // because its issuer is down (reliability.md J1).
                    KeyLookup::Unknown if keys.refresh_failing() => {
                        return Err(Err(Error::unavailable(
                            ErrorReason::KeysUnavailable,
                            format!(
                                "the keys of provider `{}` could not be refreshed to find this token's key; retry shortly",
                                self.name()
                            ),
                        )));
                    }
                    KeyLookup::Unknown => return invalid(Reason::UnknownKey),
                    KeyLookup::NotLoaded => {
                        return Err(Err(Error::unavailable(
                            ErrorReason::KeysUnavailable,
                            format!(
                                "the keys of provider `{}` could not be fetched yet; retry shortly",
                                self.name()
                            ),
                        )));
                    }
                }
            }
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(jws.signature) else {
            return invalid(Reason::BadSignature);
        };
        if !key.verify(alg, jws.signing_input.as_bytes(), &sig) {
            return invalid(Reason::BadSignature);
        }
        Ok(())
    }

    fn check_claims(
        &self,
        claims: Map<String, Value>,
        now: i64,
    ) -> Result<VerifiedProviderJwt, Reason> {
        // Exact, string-typed `iss` (an array or a prefix never matches).
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(Reason::UnknownIssuer);
        }
        if !audience_matches(&claims, &self.config.audiences) {
            return Err(Reason::WrongAudience);
        }
        let date = |name: &str| -> Result<Option<i64>, Reason> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => numeric_date(v).map(Some).ok_or(Reason::InvalidClaims),
            }
        };
        let exp = date("exp")?.ok_or(Reason::InvalidClaims)?;
        let iat = date("iat")?;
        let nbf = date("nbf")?;
        let leeway = self.leeway_secs;
        // Dates are bounded by `numeric_date`, so none of these sums can overflow; checked
        // arithmetic all the same, so that a wrap can never turn into VALID.
        let later = |t: i64| t.checked_sub(leeway).is_none_or(|t| t > now);
        if nbf.is_some_and(later) || iat.is_some_and(later) {
            return Err(Reason::NotYetValid);
        }
        if exp.checked_add(leeway).is_none_or(|end| now >= end) {
            return Err(Reason::Expired);
        }
        // Maximum lifetime: measured from `iat` when present, else from now. This also
        // refuses `exp` written in milliseconds.
        if exp
            .checked_sub(iat.unwrap_or(now))
            .is_none_or(|life| life > self.max_lifetime_secs)
        {
            return Err(Reason::InvalidClaims);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Reason::InvalidClaims)?
            .to_owned();
        let allowed = &self.config.allowed_client_ids;
        if !allowed.is_empty() {
            let client = claims
                .get("azp")
                .or_else(|| claims.get("client_id"))
                .and_then(Value::as_str);
            if !client.is_some_and(|c| allowed.iter().any(|a| a == c)) {
                // Issued to another client of the same tenant (docs/security.md).
                return Err(Reason::WrongAudience);
            }
        }
        Ok(VerifiedProviderJwt {
            subject,
            expires_at: Some(exp),
            claims: Arc::new(claims),
        })
    }
}

/// Every configured provider, by exact issuer string.
#[derive(Default)]
pub struct Providers {
    by_issuer: HashMap<String, Arc<Provider>>,
    /// The legacy provider that opaque tokens go to (configuration allows at most one: an
    /// opaque token carries no issuer to route by).
    opaque: Option<Arc<Provider>>,
}

impl Providers {
    /// Builds the providers and starts fetching their keys in the background (start-up never
    /// waits for an issuer).
    pub fn start(cfg: &Config, store: Arc<dyn crate::store::Store>, signals: Arc<Signals>) -> Self {
        let store_keys = crate::store::keys::Keys::new(cfg.env);
        let proxy = cfg.server.upstream_proxy.as_ref();
        let http = http_client(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
            proxy,
        );
        let by_issuer = cfg
            .providers
            .iter()
            .map(|p| {
                let algs: Vec<Alg> = p.algorithms.iter().filter_map(|a| Alg::parse(a)).collect();
                let takes_jwt = matches!(p.token_format, TokenFormat::Jwt | TokenFormat::Both);
                let takes_opaque =
                    matches!(p.token_format, TokenFormat::Opaque | TokenFormat::Both);
                let source = match &p.jwks_url {
                    Some(url) => Some(KeysAt::Url(url.clone())),
                    // Endpoints left out of the configuration come from OIDC discovery.
                    None if takes_jwt
                        || p.backchannel_logout.is_some()
                        || (takes_opaque && p.userinfo_url.is_none()) =>
                    {
                        Some(KeysAt::Discover {
                            issuer: p.issuer.clone(),
                            allow_http: cfg.env == crate::config::Env::Test,
                        })
                    }
                    None => None,
                };
                let keys = source.map(|source| {
                    let k = Arc::new(
                        IssuerKeys::new(&p.name, source, algs.clone(), http.clone())
                            // Shared under the issuer and where its keys come from, never
                            // under the provider's name: a provider renamed or re-pointed
                            // must not pick up another issuer's keys from the store.
                            .with_shared_store(
                                store.clone(),
                                store_keys.jwks(&format!(
                                    "{}\0{}",
                                    p.issuer,
                                    p.jwks_url.as_ref().map_or("discovered", |u| u.as_str())
                                )),
                            ),
                    );
                    k.spawn_refresher();
                    k
                });
                let provider = Provider {
                    config: p.clone(),
                    algs,
                    keys,
                    userinfo: UserInfoClient::new(p.userinfo_timeout, proxy),
                    userinfo_url: p.userinfo_url.clone(),
                    leeway_secs: cfg.native.leeway.as_secs() as i64,
                    max_lifetime_secs: p.max_token_lifetime.as_secs() as i64,
                    budget: TokenBucket::new(p.userinfo_budget.per_second, p.userinfo_budget.burst),
                    old_links_trusted: tokio::sync::OnceCell::new(),
                    signals: signals.clone(),
                };
                (p.issuer.clone(), Arc::new(provider))
            })
            .collect::<HashMap<_, Arc<Provider>>>();
        let opaque = by_issuer.values().find(|p| p.accepts_opaque()).cloned();
        Self { by_issuer, opaque }
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_issuer.values()
    }

    pub fn opaque(&self) -> Option<&Arc<Provider>> {
        self.opaque.as_ref()
    }

    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.by_issuer.get(iss)
    }
}
