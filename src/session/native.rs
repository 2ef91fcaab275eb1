//! Native `session_jwt`s: minting, and verifying those that come back (DESIGN.md §3.1 step 3,
//! §4).
//!
//! Signature checks go through jsonwebtoken's crypto provider (aws-lc); the JOSE header and
//! the claims are parsed and checked here, once, against the injectable [`Clock`] — which is
//! also what lets an expired-but-signed JWT be told apart from a forged one and refreshed.

use std::str::FromStr as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};

use super::Reason;
use super::model::{AuthFactor, Session};
use super::token::{Header, Jws, audience_matches, numeric_date};
use crate::config::{Env, NativeConfig};
use crate::error::Error;
use crate::keys::SigningKeys;

/// Claim names sessiongate sets itself; custom claims may not use them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "sid",
    "session",
    "azp",
    "client_id",
    "scope",
    "cnf",
    "act",
    "may_act",
    "auth_time",
    "amr",
    "acr",
    "nonce",
];

/// A native JWT whose signature and claims checked out (it may still be expired: see
/// [`VerifiedJwt::expired`]).
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    pub session_id: String,
    pub user_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub claims: Arc<Map<String, Value>>,
    /// The session as the JWT describes it, derived once (no store round trip).
    pub session: Session,
}

/// Mints and verifies sessiongate's own JWTs.
pub struct NativeIssuer {
    env: Env,
    issuer: String,
    /// The same deployment's issuer in the other env, to answer WRONG_ENV precisely.
    other_env_issuer: Option<String>,
    audiences: Vec<String>,
    ttl_secs: i64,
    leeway_secs: i64,
    keys: Arc<SigningKeys>,
}

impl NativeIssuer {
    pub fn new(env: Env, cfg: &NativeConfig, keys: Arc<SigningKeys>) -> Self {
        let other = match env {
            Env::Test => Env::Live,
            Env::Live => Env::Test,
        };
        let other_env_issuer = cfg
            .issuer
            .contains(env.as_str())
            .then(|| cfg.issuer.replace(env.as_str(), other.as_str()));
        Self {
            env,
            issuer: cfg.issuer.clone(),
            other_env_issuer,
            audiences: cfg.audiences.clone(),
            ttl_secs: cfg.jwt_ttl.as_secs() as i64,
            leeway_secs: cfg.leeway.as_secs() as i64,
            keys,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// True if `iss` is this deployment's issuer in the other env.
    pub fn is_other_env(&self, iss: &str) -> bool {
        self.other_env_issuer.as_deref() == Some(iss)
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// A fresh JWT for `session`, valid from `now` for the configured TTL but never past the
    /// session's own expiry.
    pub fn mint(&self, session: &Session, now_ms: i64) -> Result<String, Error> {
        let key = self.keys.active();
        let iat = now_ms.div_euclid(1000);
        let exp = (iat + self.ttl_secs)
            .min(session.expires_at_ms.div_euclid(1000))
            .max(iat + 1);
        let aud = match self.audiences.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let factors: Vec<Value> = session
            .factors
            .iter()
            .map(|f| {
                let mut o = Map::new();
                o.insert("type".into(), json!(f.kind));
                if !f.delivery.is_empty() {
                    o.insert("delivery".into(), json!(f.delivery));
                }
                if let Some(ms) = f.last_authenticated_at_ms {
                    o.insert("last_authenticated_at".into(), json!(ms.div_euclid(1000)));
                }
                Value::Object(o)
            })
            .collect();
        // Custom claims first: reserved names were refused at creation, and the registered
        // claims below overwrite anything that slipped through.
        let mut claims = session.custom_claims.clone();
        for (k, v) in [
            ("iss", json!(self.issuer)),
            ("aud", aud),
            ("sub", json!(session.user_id)),
            ("sid", json!(session.session_id)),
            ("iat", json!(iat)),
            ("nbf", json!(iat)),
            ("exp", json!(exp)),
            ("jti", json!(uuid::Uuid::new_v4().simple().to_string())),
            (
                "session",
                json!({
                    "id": session.session_id,
                    "started_at": session.started_at_ms.div_euclid(1000),
                    "last_accessed_at": session.last_accessed_at_ms.div_euclid(1000),
                    "expires_at": session.expires_at_ms.div_euclid(1000),
                    "authentication_factors": factors,
                }),
            ),
        ] {
            claims.insert(k.into(), v);
        }
        // jsonwebtoken serialises an Algorithm as its JOSE name ("RS256", "EdDSA", …).
        let header = json!({"alg": key.algorithm(), "kid": key.kid(), "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
        );
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            key.encoding_key(),
            key.algorithm(),
        )
        .map_err(Error::internal)?;
        Ok(format!("{signing_input}.{signature}"))
    }

    /// Verifies a JWT already routed here by its `iss`. `Ok` includes expired tokens (see
    /// [`VerifiedJwt::expired`]): only a signed, well-formed token of ours may be refreshed.
    pub fn verify(
        &self,
        jws: &Jws<'_>,
        header: &Header,
        claims: Map<String, Value>,
        now_secs: i64,
    ) -> Result<VerifiedJwt, Reason> {
        let alg = Algorithm::from_str(&header.alg).map_err(|_| Reason::UnsupportedAlgorithm)?;
        if !self.keys.algorithms().contains(&alg) {
            return Err(Reason::UnsupportedAlgorithm);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(Reason::UnknownKey)?;
        // The key decides the algorithm, never the token: a header claiming another
        // algorithm than its key's is an algorithm-confusion attempt.
        if key.algorithm() != alg {
            return Err(Reason::UnsupportedAlgorithm);
        }
        match jsonwebtoken::crypto::verify(
            jws.signature,
            jws.signing_input.as_bytes(),
            key.decoding_key(),
            alg,
        ) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(Reason::BadSignature),
        }
        self.check_claims(claims, now_secs)
    }

    fn check_claims(&self, claims: Map<String, Value>, now: i64) -> Result<VerifiedJwt, Reason> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Reason::UnknownIssuer);
        }
        if !audience_matches(&claims, &self.audiences) {
            return Err(Reason::WrongAudience);
        }
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(Reason::InvalidClaims)?;
        let iat = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(Reason::InvalidClaims)?;
        let nbf = match claims.get("nbf") {
            None => iat,
            Some(_) => claims
                .get("nbf")
                .and_then(numeric_date)
                .ok_or(Reason::InvalidClaims)?,
        };
        if nbf > now + self.leeway_secs || iat > now + self.leeway_secs {
            return Err(Reason::NotYetValid);
        }
        // Maximum lifetime: a native JWT never lives longer than the configured TTL; one that
        // claims to was not minted by this deployment's rules.
        if exp - iat > self.ttl_secs || exp < iat {
            return Err(Reason::InvalidClaims);
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(Reason::InvalidClaims)
        };
        let user_id = text("sub")?;
        let session_id = text("sid")?;
        let env = self.env.as_str();
        if !user_id.starts_with(&format!("user-{env}-"))
            || !session_id.starts_with(&format!("session-{env}-"))
        {
            return Err(Reason::WrongEnv);
        }
        let session = session_from_claims(&session_id, &user_id, &claims);
        Ok(VerifiedJwt {
            session_id,
            user_id,
            issued_at: iat,
            expires_at: exp,
            claims: Arc::new(claims),
            session,
        })
    }

    /// True once `jwt` is past its `exp` (with leeway) at `now`.
    pub fn expired(&self, jwt: &VerifiedJwt, now_secs: i64) -> bool {
        now_secs >= jwt.expires_at + self.leeway_secs
    }
}

/// The session a native JWT describes, from its `session` claim and custom claims.
fn session_from_claims(session_id: &str, user_id: &str, claims: &Map<String, Value>) -> Session {
    let s = claims.get("session").and_then(Value::as_object);
    let secs = |name: &str| {
        s.and_then(|s| s.get(name))
            .and_then(Value::as_i64)
            .map_or(0, |v| v.saturating_mul(1000))
    };
    let factors = s
        .and_then(|s| s.get("authentication_factors"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_object)
                .map(|f| AuthFactor {
                    kind: f
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    delivery: f
                        .get("delivery")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    last_authenticated_at_ms: f
                        .get("last_authenticated_at")
                        .and_then(Value::as_i64)
                        .map(|v| v.saturating_mul(1000)),
                })
                .collect()
        })
        .unwrap_or_default();
    Session {
        session_id: session_id.to_owned(),
        user_id: user_id.to_owned(),
        started_at_ms: secs("started_at"),
        last_accessed_at_ms: secs("last_accessed_at"),
        expires_at_ms: secs("expires_at"),
        factors,
        attributes: Default::default(),
        custom_claims: claims
            .iter()
            .filter(|(k, _)| !RESERVED_CLAIMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
