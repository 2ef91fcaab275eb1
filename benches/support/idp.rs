//! The legacy identity provider the benchmarks measure against: on loopback, it publishes a
//! JWKS, signs access tokens and answers UserInfo after a fixed latency. Just what the
//! measurements need; the integration tests have their own, richer fake (it breaks and
//! counts things; this one only has to be fast).
#![allow(dead_code)] // shared by the benchmarks: not each uses every part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sessiongate::keys::{KeyKind, SigningKey, SigningKeys};

/// The audience the legacy provider's access tokens are for.
pub const LEGACY_API: &str = "https://api.example.com";

/// A legacy provider with one key of each kind sessiongate verifies (RS256, ES256, EdDSA).
pub struct LegacyIdp {
    addr: SocketAddr,
    keys: Arc<SigningKeys>,
    /// The kid of each kind's key.
    kids: Vec<(KeyKind, String)>,
}

impl LegacyIdp {
    /// Serves the JWKS, and UserInfo answering each access token (its `sub`, read from the
    /// token: the provider trusts its own tokens) after `userinfo_latency`.
    pub async fn start(userinfo_latency: Duration) -> anyhow::Result<Self> {
        let mut kids = Vec::new();
        let mut generated = Vec::new();
        for kind in [KeyKind::Rs256, KeyKind::Es256, KeyKind::Eddsa] {
            let key = SigningKey::generate(kind)?;
            kids.push((kind, key.kid().to_owned()));
            generated.push(key);
        }
        let keys = Arc::new(SigningKeys::from_keys(generated, false)?);
        let jwks = keys.jwks_json().to_owned();
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(move || async move { ([("content-type", "application/json")], jwks) }),
            )
            .route("/userinfo", get(userinfo))
            .with_state(userinfo_latency);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, keys, kids })
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn userinfo_url(&self) -> String {
        format!("http://{}/userinfo", self.addr)
    }

    /// What signs this provider's tokens with its `kind` key (cheap to clone, to send to
    /// the minting threads).
    pub fn signer(&self, kind: KeyKind) -> Signer {
        let kid = self
            .kids
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, kid)| kid.clone())
            .expect("one key of each kind");
        Signer {
            keys: self.keys.clone(),
            kid,
        }
    }

    /// An access token's claims for `sub`, valid for an hour.
    pub fn claims(&self, sub: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        json!({
            "iss": self.issuer(),
            "sub": sub,
            "aud": LEGACY_API,
            "iat": now,
            "exp": now + 3600,
        })
    }
}

/// Signs access tokens with one of the provider's keys.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<SigningKeys>,
    kid: String,
}

impl Signer {
    /// `claims` signed as the provider signs an access token.
    pub fn sign(&self, claims: &Value) -> String {
        let key = self.keys.get(&self.kid).expect("the signer's key");
        let header = json!({"alg": key.algorithm(), "kid": key.kid(), "typ": "at+jwt"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key.encoding_key(), key.algorithm())
            .expect("signing with a generated key");
        format!("{input}.{sig}")
    }
}

async fn userinfo(State(latency): State<Duration>, headers: HeaderMap) -> impl IntoResponse {
    tokio::time::sleep(latency).await;
    let sub = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| t.split('.').nth(1))
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .and_then(|c| c["sub"].as_str().map(str::to_owned));
    match sub {
        Some(sub) => (
            StatusCode::OK,
            axum::Json(json!({"sub": sub, "name": "Load"})),
        )
            .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}
