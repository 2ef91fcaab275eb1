//! `sessiongate token inspect`: what a credential is, decoded but **not trusted** — the
//! operator's answer to "why is this token INVALID?" without a debugger or a JWT website.
//!
//! Nothing is verified. Signatures and opaque token bodies are never printed in full (a few
//! characters and a SHA-256 fingerprint identify them); claims are shown as they are, since
//! whoever runs this holds the token anyway.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::token::{self, Shape};
use crate::config::Config;
use crate::store::keys::Digest;

/// Shows at most this many characters of a secret part.
const SHOWN: usize = 6;

fn abbreviate(s: &str) -> String {
    let head: String = s.chars().take(SHOWN).collect();
    format!("{head}… ({} chars)", s.chars().count())
}

fn when(secs: i64, now: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    let rel = humantime::format_duration(std::time::Duration::from_secs(secs.abs_diff(now)));
    let rel = if secs >= now {
        format!("in {rel}")
    } else {
        format!("{rel} ago")
    };
    format!("{} ({rel})", humantime::format_rfc3339_seconds(at))
}

/// Inspects `token` at `now` (Unix seconds); `cfg` (when given) says which verifier would
/// take it.
pub fn inspect(token: &str, now: i64, cfg: Option<&Config>) -> Value {
    let token = token.trim();
    let fingerprint = Digest::of(token.as_bytes()).fingerprint();
    let mut out = Map::new();
    out.insert("verified".into(), json!(false));
    out.insert("length".into(), json!(token.len()));
    out.insert("sha256_fingerprint".into(), json!(fingerprint));
    match token::classify(token) {
        Err(reason) => {
            out.insert("shape".into(), json!("malformed"));
            out.insert("reason".into(), json!(reason.as_str()));
            out.insert(
                "note".into(),
                json!(
                    "sessiongate answers INVALID with this reason before any verification (a sgs_ token of the wrong length, a JWS part that is not base64url, a JWE, …)"
                ),
            );
        }
        Ok(Shape::NativeOpaque) => {
            out.insert("shape".into(), json!("native session_token"));
            out.insert("token".into(), json!(abbreviate(token)));
            out.insert(
                "note".into(),
                json!(
                    "an opaque sessiongate session token: validated by one store lookup of its SHA-256"
                ),
            );
        }
        Ok(Shape::Other) => {
            out.insert("shape".into(), json!("opaque (not sessiongate's)"));
            out.insert("token".into(), json!(abbreviate(token)));
            let opaque = cfg.and_then(|c| {
                c.providers.iter().find(|p| {
                    p.token_format != crate::config::TokenFormat::Jwt
                        && p.kind == crate::config::ProviderKind::Legacy
                })
            });
            out.insert(
                "verifier".into(),
                match (cfg, opaque) {
                    (_, Some(p)) => json!(format!("legacy provider `{}` (UserInfo)", p.name)),
                    (Some(_), None) => {
                        json!("none: no legacy provider takes opaque tokens (UNKNOWN_ISSUER)")
                    }
                    (None, None) => json!("(pass --config to see which provider would take it)"),
                },
            );
        }
        Ok(Shape::Jws(jws)) => {
            out.insert("shape".into(), json!("JWS (compact JWT)"));
            let header = URL_SAFE_NO_PAD
                .decode(jws.header)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let claims = URL_SAFE_NO_PAD
                .decode(jws.payload)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            out.insert(
                "header".into(),
                header.unwrap_or_else(|| json!("(not JSON)")),
            );
            out.insert("signature".into(), json!(abbreviate(jws.signature)));
            if let Some(Value::Object(c)) = &claims {
                let mut times = Map::new();
                for k in ["iat", "nbf", "exp"] {
                    if let Some(t) = c.get(k).and_then(token::numeric_date) {
                        times.insert(k.into(), json!(when(t, now)));
                    }
                }
                if let Some(exp) = c.get("exp").and_then(token::numeric_date) {
                    out.insert("expired".into(), json!(exp <= now));
                }
                out.insert("times".into(), Value::Object(times));
                if let Some(cfg) = cfg {
                    let iss = c.get("iss").and_then(Value::as_str).unwrap_or_default();
                    let verifier = if iss == cfg.native.issuer {
                        "sessiongate (native)".to_owned()
                    } else if let Some(p) = cfg.providers.iter().find(|p| p.issuer == iss) {
                        format!(
                            "{} provider `{}`",
                            match p.kind {
                                crate::config::ProviderKind::Legacy => "legacy",
                                crate::config::ProviderKind::External => "external",
                            },
                            p.name
                        )
                    } else {
                        format!(
                            "none: no configured issuer is `{iss}` (UNKNOWN_ISSUER; an exact match, a trailing slash matters)"
                        )
                    };
                    out.insert("verifier".into(), json!(verifier));
                }
            }
            out.insert(
                "claims".into(),
                claims.unwrap_or_else(|| json!("(not JSON)")),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: Value, claims: Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn a_jwt_is_decoded_and_its_signature_never_printed_whole() {
        let sig = "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtYmUtcHJpbnRlZC1pbi1mdWxs";
        let t = jwt(
            json!({"alg": "RS256", "kid": "k1"}),
            json!({"iss": "https://sessions.example.com/test", "sub": "u", "exp": 1000, "iat": 400}),
            sig,
        );
        let v = inspect(&t, 2000, None);
        let text = v.to_string();
        assert!(!text.contains(sig), "{text}");
        assert_eq!(v["header"]["kid"], "k1");
        assert_eq!(v["claims"]["sub"], "u");
        assert_eq!(v["expired"], true);
        assert_eq!(v["verified"], false);
        assert!(v["times"]["exp"].as_str().unwrap().contains("ago"), "{v}");
    }

    #[test]
    fn opaque_tokens_are_abbreviated_and_fingerprinted() {
        let native = format!("sgs_{}", "A".repeat(43));
        let v = inspect(&native, 0, None);
        assert_eq!(v["shape"], "native session_token");
        assert!(!v.to_string().contains(&native));
        let legacy = "a-legacy-opaque-token-with-secret-body";
        let v = inspect(legacy, 0, None);
        assert_eq!(v["shape"], "opaque (not sessiongate's)");
        assert!(!v.to_string().contains(legacy));
        assert_eq!(
            v["sha256_fingerprint"],
            Digest::of(legacy.as_bytes()).fingerprint()
        );
        let v = inspect("sgs_short", 0, None);
        assert_eq!(
            (v["shape"].as_str(), v["reason"].as_str()),
            (Some("malformed"), Some("MALFORMED"))
        );
    }
}
