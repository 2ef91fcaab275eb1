//! A verified native JWT as the verdict cache keeps it, and its claims as the API needs
//! them: the compact form [`VerifiedJwt`], rebuilt into the exact claims minting signs
//! ([`claims_of`]) only when a response asks for them.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{AuthFactor, Session};

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
/// from them when a response needs them (`Claims::of`). Only a token whose claims
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
    /// `received`: the claims as they came, kept only when they are not the canonical ones
    /// that [`claims_of`] rebuilds from the rest.
    pub(crate) fn new(
        times: [i64; 3],
        jti: u128,
        session: Session,
        received: Option<Map<String, Value>>,
    ) -> Self {
        let [issued_at, not_before, expires_at] = times;
        Self {
            issued_at,
            not_before,
            expires_at,
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
            claims: received.map(Arc::new),
        }
    }

    /// Whether its claims are exactly the ones minting would write (so none are kept).
    pub fn is_canonical(&self) -> bool {
        self.claims.is_none()
    }

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
    /// The claims of a verified JWT: as received, or — for a canonical token — a view of its
    /// compact form that the API renders directly (building a JSON map on every cache hit
    /// cost more than the rest of the hit together).
    pub(crate) fn of(jwt: &Arc<VerifiedJwt>, issuer: &Arc<str>, audiences: &Arc<[String]>) -> Self {
        match &jwt.claims {
            Some(c) => Claims::Json(c.clone()),
            None => Claims::Native(NativeClaims {
                issuer: issuer.clone(),
                audiences: audiences.clone(),
                jwt: jwt.clone(),
            }),
        }
    }

    /// As a JSON object: exactly what the token carries.
    pub fn to_json(&self) -> Arc<Map<String, Value>> {
        match self {
            Claims::Json(m) => m.clone(),
            Claims::Native(n) => Arc::new(n.to_json()),
        }
    }
}

/// The claims of a canonical native JWT — the layout the native issuer's `mint` signs:
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
pub(crate) fn claims_of(
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
            if !f.acr.is_empty() {
                o.insert("acr".into(), json!(f.acr));
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
