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

use super::Reason;
use super::model::{AuthFactor, Session};
use super::token::{Header, Jws, audience_matches, numeric_date};
use crate::config::{Env, NativeConfig};
use crate::error::Error;
use crate::ids::{self, IdKind};
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
///
/// This is what the verdict cache keeps per token, so it is kept small: a token minted by
/// these rules is fully described by its session and four values, and its claims are rebuilt
/// from them when a response needs them ([`NativeIssuer::claims`]). Only a token whose claims
/// are not exactly that (minted under other settings, say) keeps its parsed claims.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    pub issued_at: i64,
    pub not_before: i64,
    pub expires_at: i64,
    /// The `jti` of a canonical token: 32 lowercase hex digits (as minted).
    jti: u128,
    session: CachedSession,
    /// The claims as received, when they are not the canonical ones rebuilt from the above.
    claims: Option<Arc<Map<String, Value>>>,
}

/// The session a JWT describes, in the smallest form that gives it back (a JWT's session
/// carries no client attributes).
#[derive(Debug, Clone)]
struct CachedSession {
    session_id: Box<str>,
    user_id: Box<str>,
    started_at_ms: i64,
    last_accessed_at_ms: i64,
    expires_at_ms: i64,
    factors: Box<[AuthFactor]>,
    custom_claims: Option<Box<Map<String, Value>>>,
}

impl VerifiedJwt {
    pub fn session_id(&self) -> &str {
        &self.session.session_id
    }

    pub fn user_id(&self) -> &str {
        &self.session.user_id
    }

    /// The session as the JWT describes it (no store round trip).
    pub fn session(&self) -> Session {
        let s = &self.session;
        Session {
            session_id: s.session_id.to_string(),
            user_id: s.user_id.to_string(),
            started_at_ms: s.started_at_ms,
            last_accessed_at_ms: s.last_accessed_at_ms,
            expires_at_ms: s.expires_at_ms,
            factors: s.factors.to_vec(),
            attributes: Default::default(),
            custom_claims: s.custom_claims.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// A verified token's claims, as the API needs them.
#[derive(Debug, Clone)]
pub enum Claims {
    /// As received (provider tokens, and native tokens minted under other rules).
    Json(Arc<Map<String, Value>>),
    /// A canonical native token's, read from its cached compact form.
    Native(NativeClaims),
}

impl Claims {
    /// As a JSON object: exactly what the token carries.
    pub fn to_json(&self) -> Arc<Map<String, Value>> {
        match self {
            Claims::Json(m) => m.clone(),
            Claims::Native(n) => Arc::new(n.to_json()),
        }
    }
}

/// The claims of a canonical native JWT — the layout [`NativeIssuer::mint`] signs:
/// custom claims, then `iss`, `aud` (a string when there is one audience), `sub`, `sid`,
/// `iat`, `nbf`, `exp`, `jti` and the `session` object. Renderers must follow
/// [`NativeClaims::to_json`] exactly (a test in the API layer holds them to it).
#[derive(Debug, Clone)]
pub struct NativeClaims {
    pub issuer: Arc<str>,
    pub audiences: Arc<[String]>,
    jwt: Arc<VerifiedJwt>,
}

impl NativeClaims {
    pub fn custom(&self) -> Option<&Map<String, Value>> {
        self.jwt.session.custom_claims.as_deref()
    }
    pub fn subject(&self) -> &str {
        self.jwt.user_id()
    }
    pub fn session_id(&self) -> &str {
        self.jwt.session_id()
    }
    pub fn issued_at(&self) -> i64 {
        self.jwt.issued_at
    }
    pub fn not_before(&self) -> i64 {
        self.jwt.not_before
    }
    pub fn expires_at(&self) -> i64 {
        self.jwt.expires_at
    }
    pub fn jti(&self) -> String {
        format!("{:032x}", self.jwt.jti)
    }
    /// `session.started_at`, `last_accessed_at`, `expires_at` (seconds).
    pub fn session_times(&self) -> [(&'static str, i64); 3] {
        let s = &self.jwt.session;
        [
            ("started_at", s.started_at_ms.div_euclid(1000)),
            ("last_accessed_at", s.last_accessed_at_ms.div_euclid(1000)),
            ("expires_at", s.expires_at_ms.div_euclid(1000)),
        ]
    }
    pub fn factors(&self) -> &[AuthFactor] {
        &self.jwt.session.factors
    }

    /// The claims as JSON, built the way minting builds them.
    pub fn to_json(&self) -> Map<String, Value> {
        claims_of(
            &self.issuer,
            &self.audiences,
            &self.jwt.session(),
            self.jwt.issued_at,
            self.jwt.not_before,
            self.jwt.expires_at,
            &self.jti(),
        )
    }
}

/// The claims of a JWT minted for `session` with these times and id — the one layout
/// minting writes and the verdict cache rebuilds.
fn claims_of(
    issuer: &str,
    audiences: &[String],
    session: &Session,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &str,
) -> Map<String, Value> {
    let aud = match audiences {
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
        ("iss", json!(issuer)),
        ("aud", aud),
        ("sub", json!(session.user_id)),
        ("sid", json!(session.session_id)),
        ("iat", json!(iat)),
        ("nbf", json!(nbf)),
        ("exp", json!(exp)),
        ("jti", json!(jti)),
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
    claims
}

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

    /// The claims of a verified JWT: as received, or — for a canonical token — a view of its
    /// compact form that the API renders directly (building a JSON map on every cache hit
    /// cost more than the rest of the hit together).
    pub fn claims(&self, jwt: &Arc<VerifiedJwt>) -> Claims {
        match &jwt.claims {
            Some(c) => Claims::Json(c.clone()),
            None => Claims::Native(NativeClaims {
                issuer: self.issuer.clone(),
                audiences: self.audiences.clone(),
                jwt: jwt.clone(),
            }),
        }
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
        Ok(VerifiedJwt {
            issued_at: iat,
            not_before: nbf,
            expires_at: exp,
            jti,
            session: CachedSession {
                session_id: session.session_id.into(),
                user_id: session.user_id.into(),
                started_at_ms: session.started_at_ms,
                last_accessed_at_ms: session.last_accessed_at_ms,
                expires_at_ms: session.expires_at_ms,
                factors: session.factors.into(),
                custom_claims: (!session.custom_claims.is_empty())
                    .then(|| Box::new(session.custom_claims)),
            },
            claims: (!canonical).then(|| Arc::new(claims)),
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
        assert!(v.claims.is_none(), "a minted token was not kept compact");
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
            assert!(v.claims.is_some(), "{name}");
            assert_eq!(*issuer.claims(&Arc::new(v)).to_json(), c);
        }
        claims.remove("nbf");
        let v = issuer.check_claims(claims.clone(), now_ms / 1000).unwrap();
        assert_eq!(*issuer.claims(&Arc::new(v)).to_json(), claims);
    }
}
