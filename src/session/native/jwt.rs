//! Native `session_jwt`s: minting, and verifying those that come back (the README's
//! "Native sessions" lists the claims).
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

use crate::config::{Env, NativeConfig};
use crate::error::Error;
use crate::ids::{self, IdKind};
use crate::keys::SigningKeys;
use crate::session::claims::{Claims, RESERVED_CLAIMS, VerifiedJwt, claims_of};
use crate::session::model::{AuthFactor, Session};
use crate::session::token::{Header, Jws, audience_matches, numeric_date};
use crate::session::verdict::Reason;

/// Mints and verifies sessiongate's own JWTs.
pub struct NativeIssuer {
    env: Env,
    issuer: Arc<str>,
    /// The same deployment's issuer in the other env, to answer WRONG_ENV precisely.
    other_env_issuer: Option<String>,
    audiences: Arc<[String]>,
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
            issuer: cfg.issuer.as_str().into(),
            other_env_issuer,
            audiences: cfg.audiences.clone().into(),
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
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let claims = claims_of(&self.issuer, &self.audiences, session, iat, iat, exp, &jti);
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

    /// The claims of a verified JWT, as the API renders them.
    pub fn claims(&self, jwt: &Arc<VerifiedJwt>) -> Claims {
        Claims::of(jwt, &self.issuer, &self.audiences)
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
        if !self.keys.supports(alg) {
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
        let Ok(signature) = URL_SAFE_NO_PAD.decode(jws.signature) else {
            return Err(Reason::BadSignature);
        };
        if !key.verify(jws.signing_input.as_bytes(), &signature) {
            return Err(Reason::BadSignature);
        }
        self.check_claims(claims, now_secs)
    }

    fn check_claims(&self, claims: Map<String, Value>, now: i64) -> Result<VerifiedJwt, Reason> {
        if claims.get("iss").and_then(Value::as_str) != Some(&*self.issuer) {
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
        if exp.checked_sub(iat).is_none_or(|life| life > self.ttl_secs) || exp < iat {
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
        if !ids::may_be(IdKind::User, self.env, &user_id)
            || !ids::may_be(IdKind::Session, self.env, &session_id)
        {
            return Err(Reason::WrongEnv);
        }
        let session = session_from_claims(&session_id, &user_id, &claims);
        // A minted jti is 32 lowercase hex digits; anything else is not canonical (below),
        // so 0 stands in for it.
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| j.len() == 32 && j.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .and_then(|j| u128::from_str_radix(j, 16).ok())
            .unwrap_or(0);
        // Keep the parsed claims only when rebuilding them would not give them back exactly.
        let canonical = claims_of(
            &self.issuer,
            &self.audiences,
            &session,
            iat,
            nbf,
            exp,
            &format!("{jti:032x}"),
        ) == claims;
        Ok(VerifiedJwt::new(
            [iat, nbf, exp],
            jti,
            session,
            (!canonical).then_some(claims),
        ))
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
                    acr: f
                        .get("acr")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
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

/// Fixtures shared with the API layer's rendering test.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::session::token::{self, Shape};

    fn issuer() -> NativeIssuer {
        issuer_with(r#"["sessiongate"]"#)
    }

    /// An issuer of the test env with these audiences (a TOML array) and a generated key.
    pub(crate) fn issuer_with(audiences: &str) -> NativeIssuer {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessiongate.toml");
        std::fs::write(&file, format!("[native]\naudiences = {audiences}\n")).unwrap();
        let cfg = crate::config::load(
            &std::collections::HashMap::<String, String>::new(),
            dir.path(),
            Some(&file),
        )
        .unwrap();
        let keys = Arc::new(SigningKeys::load_or_generate(&[]).unwrap());
        NativeIssuer::new(cfg.env, &cfg.native, keys)
    }

    fn parts(jwt: &str) -> (Header, Map<String, Value>) {
        let Ok(Shape::Jws(jws)) = token::classify(jwt) else {
            panic!("not a JWS")
        };
        (token::header(&jws).unwrap(), token::payload(&jws).unwrap())
    }

    fn session(now_ms: i64) -> Session {
        sample_session(now_ms)
    }

    /// A session with custom claims (nested, of every JSON type) and two factors, one with
    /// every optional field and one with none.
    pub(crate) fn sample_session(now_ms: i64) -> Session {
        let mut custom = Map::new();
        custom.insert("tenant".into(), json!("acme"));
        custom.insert("roles".into(), json!(["admin", {"scope": 3}]));
        custom.insert("n".into(), json!({"deep": [1, 2.5, null, true]}));
        Session {
            session_id: "session-test-0b8e7c1e-2f7a-4d5b-9c3e-5a6b7c8d9e0f".into(),
            user_id: "user-test-1c2d3e4f-5a6b-7c8d-9e0f-1a2b3c4d5e6f".into(),
            started_at_ms: now_ms - 61_000,
            last_accessed_at_ms: now_ms,
            expires_at_ms: now_ms + 3_600_000,
            factors: vec![
                AuthFactor {
                    kind: "otp".into(),
                    delivery: "email".into(),
                    last_authenticated_at_ms: Some(now_ms - 61_000),
                    acr: "urn:example:loa:2".into(),
                },
                AuthFactor {
                    kind: "passkey".into(),
                    ..Default::default()
                },
            ],
            attributes: Default::default(),
            custom_claims: custom,
        }
    }

    /// What the verdict cache keeps must give back exactly the claims the token carries:
    /// responses are built from it on every cache hit.
    #[test]
    fn a_minted_token_is_kept_compact_and_its_claims_come_back_exactly() {
        let issuer = issuer();
        let now_ms = 1_800_000_000_000;
        let jwt = issuer.mint(&session(now_ms), now_ms).unwrap();
        let (header, claims) = parts(&jwt);
        let Ok(Shape::Jws(jws)) = token::classify(&jwt) else {
            unreachable!()
        };
        let v = issuer
            .verify(&jws, &header, claims.clone(), now_ms / 1000)
            .unwrap();
        assert!(v.is_canonical(), "a minted token was not kept compact");
        let s = v.session();
        assert_eq!(*issuer.claims(&Arc::new(v.clone())).to_json(), claims);
        assert_eq!(s.factors, session(now_ms).factors);
        assert_eq!(s.custom_claims, session(now_ms).custom_claims);
        assert_eq!(v.session_id(), session(now_ms).session_id);
    }

    /// A token of ours whose claims are not what minting writes (here: an extra reserved
    /// claim, a jti in another format) keeps its claims as received.
    #[test]
    fn a_token_minted_otherwise_keeps_its_claims_as_received() {
        let issuer = issuer();
        let now_ms = 1_800_000_000_000;
        let jwt = issuer.mint(&session(now_ms), now_ms).unwrap();
        let (_, mut claims) = parts(&jwt);
        // (check_claims is what verify runs after the signature: these claims stand for
        // what another minting would have signed)
        for (name, value) in [("azp", json!("someone")), ("jti", json!("NOT-HEX"))] {
            let mut c = claims.clone();
            c.insert(name.into(), value);
            let v = issuer.check_claims(c.clone(), now_ms / 1000).unwrap();
            assert!(!v.is_canonical(), "{name}");
            assert_eq!(*issuer.claims(&Arc::new(v)).to_json(), c);
        }
        claims.remove("nbf");
        let v = issuer.check_claims(claims.clone(), now_ms / 1000).unwrap();
        assert_eq!(*issuer.claims(&Arc::new(v)).to_json(), claims);
    }
}
