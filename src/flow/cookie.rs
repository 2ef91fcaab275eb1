//! The flow cookie: a tamper-evident device id plus a sticky-NEW flag and the rollback epoch
//! it was given under.
//!
//! Value: `v1.<device id, base64url>.<N|L>.<epoch>.<kid>.<HMAC-SHA256, 128 bits, base64url>`;
//! the MAC also covers the flow's name, so a cookie of one flow means nothing to another.
//! Anything that does not verify is ignored, never an error: a forged cookie can at worst be
//! a device id the caller could have sent anyway.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use crate::config::KeySource;

/// Longest cookie value considered (a device id is at most 128 bytes).
const MAX_VALUE_LEN: usize = 512;
/// Bytes of the MAC kept: 128 bits is beyond forgery by guessing.
const MAC_LEN: usize = 16;

/// What a verified cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowCookie {
    pub device_id: String,
    pub new: bool,
    pub epoch: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CookieKeyError {
    #[error("flow cookie key {0}: {1}")]
    Unreadable(String, String),
    #[error("flow cookie key {0} is shorter than 32 bytes: use `openssl rand -base64 32`")]
    TooShort(String),
}

/// The HMAC keys: the first signs, all verify (rotation).
pub struct CookieKeys {
    keys: Vec<(String, hmac::Key)>,
    /// True when generated at start (test env without configured keys).
    pub generated: bool,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CookieKeys").field("kids", &kids).finish()
    }
}

impl CookieKeys {
    /// Loads configured keys; with none, generates one (the caller decides whether that is
    /// allowed: config refuses it in live).
    pub fn load(sources: &[KeySource]) -> Result<Self, CookieKeyError> {
        if sources.is_empty() {
            let mut secret = [0u8; 32];
            rand::fill(&mut secret);
            return Ok(CookieKeys {
                keys: vec![Self::key(&secret)],
                generated: true,
            });
        }
        let mut keys = Vec::new();
        for s in sources {
            let (label, text) = match s {
                KeySource::File(p) => (
                    p.display().to_string(),
                    std::fs::read_to_string(p).map_err(|e| {
                        CookieKeyError::Unreadable(p.display().to_string(), e.to_string())
                    })?,
                ),
                KeySource::Env { var, value } => (format!("env:{var}"), value.expose().to_owned()),
            };
            let secret = text.trim();
            if secret.len() < 32 {
                return Err(CookieKeyError::TooShort(label));
            }
            keys.push(Self::key(secret.as_bytes()));
        }
        Ok(CookieKeys {
            keys,
            generated: false,
        })
    }

    fn key(secret: &[u8]) -> (String, hmac::Key) {
        // The key id names the key without revealing it.
        let kid = hex::encode(&Sha256::digest(secret)[..4]);
        (kid, hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn signed_part(c: &FlowCookie, kid: &str) -> String {
        format!(
            "v1.{}.{}.{}.{kid}",
            URL_SAFE_NO_PAD.encode(c.device_id.as_bytes()),
            if c.new { 'N' } else { 'L' },
            c.epoch
        )
    }

    fn mac(key: &hmac::Key, flow: &str, signed: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(signed.as_bytes());
        ctx.update(b"\n");
        ctx.update(flow.as_bytes());
        ctx.sign()
    }

    /// The cookie value for `flow`.
    pub fn sign(&self, flow: &str, c: &FlowCookie) -> String {
        let (kid, key) = &self.keys[0];
        let signed = Self::signed_part(c, kid);
        let tag = Self::mac(key, flow, &signed);
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..MAC_LEN])
        )
    }

    /// The cookie's content when it is a genuine cookie of `flow`; `None` otherwise.
    pub fn verify(&self, flow: &str, value: &str) -> Option<FlowCookie> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        let (signed, mac) = value.rsplit_once('.')?;
        let mut parts = signed.split('.');
        let (Some("v1"), Some(dev), Some(flag), Some(epoch), Some(kid), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let (_, key) = self.keys.iter().find(|(k, _)| k == kid)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let tag = Self::mac(key, flow, signed);
        // Constant-time comparison of the truncated tag.
        if mac.len() != MAC_LEN
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                &tag.as_ref()[..MAC_LEN],
                &mac[..],
            ))
        {
            return None;
        }
        let device_id = String::from_utf8(URL_SAFE_NO_PAD.decode(dev).ok()?).ok()?;
        let new = match flag {
            "N" => true,
            "L" => false,
            _ => return None,
        };
        Some(FlowCookie {
            device_id,
            new,
            epoch: epoch.parse().ok()?,
        })
    }
}

/// The cookie name of `flow`: the configured name for the flow `login`, the configured name
/// plus a short digest of the flow's name for any other flow (flow names are free text, cookie
/// names are not).
pub fn cookie_name(base: &str, flow: &str) -> String {
    if flow == "login" {
        base.to_owned()
    } else {
        format!(
            "{base}-{}",
            hex::encode(&Sha256::digest(flow.as_bytes())[..6])
        )
    }
}

/// A ready-made `Set-Cookie` header value.
pub fn header_value(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; Max-Age={max_age_secs}; Path=/; Secure; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(secret: &str) -> CookieKeys {
        CookieKeys::load(&[KeySource::Env {
            var: "K".into(),
            value: Secret::new(secret),
        }])
        .unwrap()
    }

    #[test]
    fn a_signed_cookie_verifies_for_its_flow_only() {
        let k = keys("0123456789abcdef0123456789abcdef-a");
        let c = FlowCookie {
            device_id: "dev.with.dots ünïcode".into(),
            new: true,
            epoch: 3,
        };
        let v = k.sign("login", &c);
        assert_eq!(k.verify("login", &v), Some(c.clone()));
        assert_eq!(k.verify("checkout", &v), None, "another flow");
        // Cookie-safe characters only.
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{v}"
        );
    }

    #[test]
    fn forged_truncated_and_foreign_cookies_are_ignored() {
        let k = keys("0123456789abcdef0123456789abcdef-a");
        let other = keys("0123456789abcdef0123456789abcdef-b");
        let c = FlowCookie {
            device_id: "d1".into(),
            new: false,
            epoch: 0,
        };
        let v = k.sign("login", &c);
        // Flip the flag to N without the key.
        let forged = v.replacen(".L.", ".N.", 1);
        assert_eq!(k.verify("login", &forged), None);
        assert_eq!(other.verify("login", &v), None, "unknown kid");
        assert_eq!(k.verify("login", &v[..v.len() - 2]), None);
        for junk in ["", "v1", "v1.....", "v2.ZDE.L.0.x.y", &"a".repeat(600)] {
            assert_eq!(k.verify("login", junk), None, "{junk}");
        }
    }

    #[test]
    fn rotation_keeps_old_cookies_valid() {
        let old = keys("0123456789abcdef0123456789abcdef-a");
        let both = CookieKeys::load(&[
            KeySource::Env {
                var: "NEW".into(),
                value: Secret::new("0123456789abcdef0123456789abcdef-b"),
            },
            KeySource::Env {
                var: "OLD".into(),
                value: Secret::new("0123456789abcdef0123456789abcdef-a"),
            },
        ])
        .unwrap();
        let c = FlowCookie {
            device_id: "d".into(),
            new: true,
            epoch: 1,
        };
        assert_eq!(
            both.verify("login", &old.sign("login", &c)),
            Some(c.clone())
        );
        assert_eq!(old.verify("login", &both.sign("login", &c)), None);
    }

    #[test]
    fn short_keys_are_refused() {
        let e = CookieKeys::load(&[KeySource::Env {
            var: "K".into(),
            value: Secret::new("short"),
        }]);
        assert!(matches!(e, Err(CookieKeyError::TooShort(_))));
    }

    #[test]
    fn names_and_header() {
        assert_eq!(cookie_name("__Host-sg_flow", "login"), "__Host-sg_flow");
        let n = cookie_name("__Host-sg_flow", "checkout ✓");
        assert!(n.starts_with("__Host-sg_flow-") && n.len() == "__Host-sg_flow-".len() + 12);
        assert_eq!(
            header_value("n", "v", 10),
            "n=v; Max-Age=10; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
    }
}
