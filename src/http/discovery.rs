//! `/.well-known/openid-configuration`: the metadata an OpenID Connect library reads to verify
//! `session_jwt`s by discovery — the issuer, where its keys are, which algorithms sign —
//! when the native issuer is a URL (OpenID Connect Discovery 1.0, section 4: the document of
//! issuer `I` is at `I/.well-known/openid-configuration`).
//!
//! sessiongate issues session JWTs; it is not an OpenID Provider (no authorization or token
//! endpoint, no ID tokens). The document says so by what it leaves out, and lists no
//! response types: a client library that would start a login against it fails at once
//! instead of at the first redirect.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::config::is_url_issuer;
use crate::keys::SigningKeys;

/// The document, rendered once at start (`Err`: why there is none), and the issuer URL's
/// path, under which both well-known documents are served too.
#[derive(Clone)]
pub struct Discovery {
    doc: Result<Bytes, Bytes>,
    path: Option<String>,
}

impl Discovery {
    pub fn new(issuer: &str, signing: &SigningKeys) -> Self {
        // Configuration has checked a URL issuer: a host, no query, no fragment.
        let Some(url) = is_url_issuer(issuer)
            .then(|| url::Url::parse(issuer).ok())
            .flatten()
        else {
            return Self {
                doc: Err(Bytes::from(format!(
                    "no OpenID discovery: the native issuer `{issuer}` is not an http(s) URL. Set \
                     [native] issuer to the URL callers reach this port at (for example \
                     https://sessiongate.example.com) to publish it; /.well-known/jwks.json is \
                     served either way.\n"
                ))),
                path: None,
            };
        };
        let base = issuer.trim_end_matches('/');
        let doc = json!({
            "issuer": issuer,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": signing
                .algorithms()
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>(),
            "subject_types_supported": ["public"],
            "response_types_supported": [],
            "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "session"],
        });
        let path = url.path().trim_end_matches('/');
        // Plain segments only: the path becomes a route, where `{`, `}`, `*` or an empty
        // segment would mean something else (url has percent-encoded the rest).
        let plain = !path.is_empty()
            && !path.contains("//")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b));
        Self {
            doc: Ok(Bytes::from(doc.to_string())),
            path: plain.then(|| path.to_owned()),
        }
    }

    /// The issuer URL's path (`/sessiongate` of `https://auth.example.com/sessiongate`), when
    /// it has one: a verifier asks for `<issuer>/.well-known/…`, and a proxy that forwards that
    /// path unchanged must find the documents there as well as at the root.
    pub fn issuer_path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

pub(super) async fn document(State(d): State<Discovery>) -> Response {
    match d.doc {
        Ok(doc) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                // As long as the JWKS: a verifier re-reads both on the same schedule.
                (header::CACHE_CONTROL, "public, max-age=300"),
            ],
            doc,
        )
            .into_response(),
        Err(why) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            why,
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, SigningKey};

    fn keys() -> SigningKeys {
        SigningKeys::from_keys(vec![SigningKey::generate(KeyKind::Es256).unwrap()], true).unwrap()
    }

    #[test]
    fn a_url_issuer_publishes_where_its_keys_are() {
        for issuer in [
            "https://sessiongate.example.com",
            "https://sessiongate.example.com/",
        ] {
            let d = Discovery::new(issuer, &keys());
            assert_eq!(d.issuer_path(), None);
            let doc: serde_json::Value = serde_json::from_slice(&d.doc.unwrap()).unwrap();
            assert_eq!(
                doc["issuer"], issuer,
                "the issuer exactly as the JWTs' `iss`"
            );
            assert_eq!(
                doc["jwks_uri"],
                "https://sessiongate.example.com/.well-known/jwks.json"
            );
            assert_eq!(
                doc["id_token_signing_alg_values_supported"],
                json!(["ES256"])
            );
            assert!(doc.get("authorization_endpoint").is_none());
        }
    }

    #[test]
    fn an_issuer_with_a_path_publishes_under_it() {
        let d = Discovery::new("https://auth.example.com/sessiongate/", &keys());
        assert_eq!(d.issuer_path(), Some("/sessiongate"));
        let doc: serde_json::Value = serde_json::from_slice(d.doc.as_ref().unwrap()).unwrap();
        assert_eq!(
            doc["jwks_uri"],
            "https://auth.example.com/sessiongate/.well-known/jwks.json"
        );
        // A path that would not be a plain route is served at the root only.
        for odd in ["https://a.example/x//y", "https://a.example/x*y"] {
            assert_eq!(Discovery::new(odd, &keys()).issuer_path(), None, "{odd}");
        }
        // Braces arrive percent-encoded: a literal route, not a parameter.
        let braces = Discovery::new("https://a.example/{x}", &keys());
        assert_eq!(braces.issuer_path(), Some("/%7Bx%7D"));
    }

    #[test]
    fn a_urn_issuer_publishes_nothing_and_says_why() {
        let why = Discovery::new("urn:sessiongate:test", &keys())
            .doc
            .unwrap_err();
        let why = String::from_utf8_lossy(&why);
        assert!(why.contains("[native] issuer"), "{why}");
    }
}
