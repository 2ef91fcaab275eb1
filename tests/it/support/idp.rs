//! A fake identity provider on loopback: serves a JWKS it can rotate, break and count, and
//! signs tokens with its keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sessiongate::keys::{KeyKind, SigningKey};

/// How the fake UserInfo endpoint answers one bearer token.
#[derive(Clone)]
pub enum UserInfoReply {
    Json(Value),
    Status(u16),
    RateLimited(u64),
    Slow(std::time::Duration),
    SlowJson(std::time::Duration, Value),
    /// A JSON body larger than sessiongate accepts.
    Oversize,
    /// A redirect to this URL.
    Redirect(String),
    NotJson,
}

struct Shared {
    /// Simulated latency of the JWKS endpoint (a hanging issuer).
    jwks_delay: Option<std::time::Duration>,
    /// The issuer the discovery document claims (default: the real one).
    discovery_issuer: Option<String>,
    /// The host the discovery document points its endpoints at (default: its own).
    endpoints_host: Option<String>,
    userinfo: std::collections::HashMap<String, UserInfoReply>,
    keys: Vec<Arc<SigningKey>>,
    /// Extra raw JWKs published as they are (hostile entries).
    extra: Vec<Value>,
    status: u16,
    /// A raw JWKS answer replacing the real one (hostile issuers).
    jwks_raw: Option<RawAnswer>,
}

#[derive(Clone)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    hits: Arc<AtomicUsize>,
    userinfo_hits: Arc<AtomicUsize>,
}

async fn discovery(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let real = format!("http://{host}/");
    let (issuer, endpoints) = {
        let s = shared.lock().unwrap();
        (
            s.discovery_issuer.clone().unwrap_or(real.clone()),
            s.endpoints_host
                .as_ref()
                .map_or(real.clone(), |h| format!("http://{h}/")),
        )
    };
    (
        [("content-type", "application/json")],
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{endpoints}.well-known/jwks.json"),
            "userinfo_endpoint": format!("{endpoints}userinfo"),
        })
        .to_string(),
    )
}

async fn userinfo(
    State((shared, hits)): State<(Arc<Mutex<Shared>>, Arc<AtomicUsize>)>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let reply = shared.lock().unwrap().userinfo.get(&token).cloned();
    match reply {
        None => StatusCode::UNAUTHORIZED.into_response(),
        Some(UserInfoReply::Json(v)) => {
            ([("content-type", "application/json")], v.to_string()).into_response()
        }
        Some(UserInfoReply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(UserInfoReply::RateLimited(after)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", after.to_string())],
        )
            .into_response(),
        Some(UserInfoReply::Slow(d)) => {
            // Simulated latency of a slow provider, not synchronisation.
            tokio::time::sleep(d).await;
            (
                [("content-type", "application/json")],
                json!({"sub": "slow"}).to_string(),
            )
                .into_response()
        }
        Some(UserInfoReply::SlowJson(d, v)) => {
            // Simulated latency of a slow provider, not synchronisation.
            tokio::time::sleep(d).await;
            ([("content-type", "application/json")], v.to_string()).into_response()
        }
        Some(UserInfoReply::Oversize) => {
            let body = json!({"sub": "big", "pad": "x".repeat(100 * 1024)}).to_string();
            ([("content-type", "application/json")], body).into_response()
        }
        Some(UserInfoReply::Redirect(to)) => {
            (StatusCode::FOUND, [("location", to)]).into_response()
        }
        Some(UserInfoReply::NotJson) => ([("content-type", "text/html")], "<html>").into_response(),
    }
}

async fn jwks(
    State((shared, hits)): State<(Arc<Mutex<Shared>>, Arc<AtomicUsize>)>,
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let raw = shared.lock().unwrap().jwks_raw.clone();
    if let Some(RawAnswer {
        status,
        headers,
        body,
    }) = raw
    {
        let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
        for (k, v) in headers {
            resp.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(&v).unwrap(),
            );
        }
        return resp;
    }
    let delay = shared.lock().unwrap().jwks_delay;
    if let Some(d) = delay {
        // A hanging issuer: simulated latency, not synchronisation.
        tokio::time::sleep(d).await;
    }
    let s = shared.lock().unwrap();
    let mut keys: Vec<Value> = s
        .keys
        .iter()
        .map(|k| serde_json::to_value(k.public_jwk()).unwrap())
        .collect();
    keys.extend(s.extra.iter().cloned());
    let status = StatusCode::from_u16(s.status).unwrap();
    (
        status,
        [("content-type", "application/json")],
        json!({ "keys": keys }).to_string(),
    )
        .into_response()
}

impl FakeIdp {
    /// Starts with one key of each kind: RS256, ES256, EdDSA.
    pub async fn start() -> Self {
        let keys = [KeyKind::Rs256, KeyKind::Es256, KeyKind::Eddsa]
            .into_iter()
            .map(|k| Arc::new(SigningKey::generate(k).unwrap()))
            .collect();
        let shared = Arc::new(Mutex::new(Shared {
            jwks_delay: None,
            discovery_issuer: None,
            endpoints_host: None,
            userinfo: Default::default(),
            keys,
            extra: Vec::new(),
            status: 200,
            jwks_raw: None,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let userinfo_hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state((shared.clone(), hits.clone()))
            .merge(
                Router::new()
                    .route("/.well-known/openid-configuration", get(discovery))
                    .with_state(shared.clone()),
            )
            .merge(
                Router::new()
                    .route("/userinfo", get(userinfo))
                    .with_state((shared.clone(), userinfo_hits.clone())),
            );
        let addr = super::serve_http(app).await;
        Self {
            addr,
            shared,
            hits,
            userinfo_hits,
        }
    }

    pub fn userinfo_url(&self) -> String {
        format!("http://{}/userinfo", self.addr)
    }

    pub fn userinfo_hits(&self) -> usize {
        self.userinfo_hits.load(Ordering::SeqCst)
    }

    /// How UserInfo answers `token` (unknown tokens get 401).
    pub fn on_userinfo(&self, token: &str, reply: UserInfoReply) {
        self.shared
            .lock()
            .unwrap()
            .userinfo
            .insert(token.to_owned(), reply);
    }

    /// `http://127.0.0.1:<port>/` (with the trailing slash, as Auth0 writes it).
    pub fn issuer(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn jwks_hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Makes the discovery document claim another issuer.
    pub fn lie_about_issuer(&self, issuer: &str) {
        self.shared.lock().unwrap().discovery_issuer = Some(issuer.to_owned());
    }

    /// Makes the discovery document point its endpoints at `host` (`name:port`).
    pub fn point_endpoints_at(&self, host: &str) {
        self.shared.lock().unwrap().endpoints_host = Some(host.to_owned());
    }

    /// Makes the JWKS endpoint answer only after `d`.
    pub fn hang_jwks(&self, d: std::time::Duration) {
        self.shared.lock().unwrap().jwks_delay = Some(d);
    }

    pub fn set_status(&self, status: u16) {
        self.shared.lock().unwrap().status = status;
    }

    /// Answers the JWKS URL with exactly this from now on.
    pub fn serve_jwks_raw(&self, status: u16, headers: &[(&str, &str)], body: Vec<u8>) {
        self.shared.lock().unwrap().jwks_raw = Some(RawAnswer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        });
    }

    /// Serves the real key set again after [`FakeIdp::serve_jwks_raw`].
    pub fn serve_real_jwks(&self) {
        self.shared.lock().unwrap().jwks_raw = None;
    }

    /// Stops publishing the key with this kid (the end of a rotation).
    pub fn retire(&self, kid: &str) {
        self.shared.lock().unwrap().keys.retain(|k| k.kid() != kid);
    }

    /// Publishes a raw JWK as it is.
    pub fn publish_raw(&self, jwk: Value) {
        self.shared.lock().unwrap().extra.push(jwk);
    }

    /// Adds a new key (a rotation) and returns it.
    pub fn rotate(&self, kind: KeyKind) -> Arc<SigningKey> {
        let k = Arc::new(SigningKey::generate(kind).unwrap());
        self.shared.lock().unwrap().keys.push(k.clone());
        k
    }

    pub fn key(&self, kind: KeyKind) -> Arc<SigningKey> {
        let want = match kind {
            KeyKind::Rs256 => jsonwebtoken::Algorithm::RS256,
            KeyKind::Es256 => jsonwebtoken::Algorithm::ES256,
            KeyKind::Eddsa => jsonwebtoken::Algorithm::EdDSA,
        };
        self.shared
            .lock()
            .unwrap()
            .keys
            .iter()
            .find(|k| k.algorithm() == want)
            .unwrap()
            .clone()
    }

    /// Standard access-token claims from this issuer for `aud`, valid for an hour.
    pub fn claims(&self, aud: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        json!({
            "iss": self.issuer(),
            "sub": "auth0|legacy-user-1",
            "aud": [aud, format!("{}userinfo", self.issuer())],
            "azp": "client-web",
            "iat": now,
            "exp": now + 3600,
            "scope": "openid profile email",
        })
    }
}

/// Signs `claims` with `key` under `header` (defaults filled: alg of the key, kid, typ).
pub fn sign(key: &SigningKey, header: Value, claims: &Value) -> String {
    let mut h = json!({"alg": key.algorithm(), "kid": key.kid(), "typ": "at+jwt"});
    if let (Value::Object(h), Value::Object(extra)) = (&mut h, header) {
        for (k, v) in extra {
            if v.is_null() {
                h.remove(&k);
            } else {
                h.insert(k, v);
            }
        }
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), key.encoding_key(), key.algorithm()).unwrap();
    format!("{input}.{sig}")
}

/// `(r, n − s)`: the other ES256 signature over the same bytes, which verifies as well (ECDSA
/// signatures are malleable).
pub fn ecdsa_twin(token: &str) -> String {
    // The order of P-256.
    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63,
        0x25, 0x51,
    ];
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let s = &mut sig[32..];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        s[i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}
