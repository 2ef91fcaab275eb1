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

struct Shared {
    keys: Vec<Arc<SigningKey>>,
    /// Extra raw JWKs published as they are (hostile entries).
    extra: Vec<Value>,
    status: u16,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks(
    State((shared, hits)): State<(Arc<Mutex<Shared>>, Arc<AtomicUsize>)>,
) -> impl IntoResponse {
    hits.fetch_add(1, Ordering::SeqCst);
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
}

impl FakeIdp {
    /// Starts with one key of each kind: RS256, ES256, EdDSA.
    pub async fn start() -> Self {
        let keys = [KeyKind::Rs256, KeyKind::Es256, KeyKind::Eddsa]
            .into_iter()
            .map(|k| Arc::new(SigningKey::generate(k).unwrap()))
            .collect();
        let shared = Arc::new(Mutex::new(Shared {
            keys,
            extra: Vec::new(),
            status: 200,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state((shared.clone(), hits.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, hits }
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

    pub fn set_status(&self, status: u16) {
        self.shared.lock().unwrap().status = status;
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
