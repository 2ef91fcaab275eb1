//! Private keys written as JWK (RFC 7517/7518): turned into the DER that the signing code
//! already reads, so a JWK and a PEM of the same key behave identically (same `kid`).
//!
//! jsonwebtoken's `Jwk` type models public keys only, and no maintained crate in our tree
//! converts private JWKs, so the few DER structures involved are written here: PKCS#1
//! `RSAPrivateKey`, and PKCS#8 for P-256 and Ed25519 (fixed prefixes around the key bytes).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::der::{der_integer, der_tlv};

/// A private key in DER, with the PEM label that says which structure it is.
pub struct Der {
    pub label: &'static str,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Der {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        write!(f, "Der({}, {} bytes)", self.label, self.bytes.len())
    }
}

#[derive(Deserialize)]
struct PrivateJwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
}

fn b64(name: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let v = v
        .as_deref()
        .ok_or_else(|| format!("private JWK lacks `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// Converts a private JWK (JSON text) to DER.
pub fn to_der(json: &[u8]) -> Result<Der, String> {
    let jwk: PrivateJwk = serde_json::from_slice(json).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.d.is_none() {
        return Err("this JWK has no private part (`d`): a signing key needs it".into());
    }
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let parts = [
                b64("n", &jwk.n)?,
                b64("e", &jwk.e)?,
                b64("d", &jwk.d)?,
                b64("p", &jwk.p)?,
                b64("q", &jwk.q)?,
                b64("dp", &jwk.dp)?,
                b64("dq", &jwk.dq)?,
                b64("qi", &jwk.qi)?,
            ];
            // RSAPrivateKey ::= SEQUENCE { version 0, n, e, d, p, q, dp, dq, qi }
            let mut body = der_integer(&[0]);
            for p in &parts {
                body.extend(der_integer(p));
            }
            Ok(Der {
                label: "RSA PRIVATE KEY",
                bytes: der_tlv(0x30, &body),
            })
        }
        ("EC", Some("P-256")) => {
            let (d, x, y) = (b64("d", &jwk.d)?, b64("x", &jwk.x)?, b64("y", &jwk.y)?);
            if d.len() != 32 || x.len() != 32 || y.len() != 32 {
                return Err("P-256 `d`, `x` and `y` must be 32 bytes each".into());
            }
            // PKCS#8 { version 0, { id-ecPublicKey, prime256v1 }, ECPrivateKey { 1, d, [1] point } }
            let mut out = hex_bytes(
                "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420",
            );
            out.extend(&d);
            out.extend(hex_bytes("a14403420004"));
            out.extend(&x);
            out.extend(&y);
            Ok(Der {
                label: "PRIVATE KEY",
                bytes: out,
            })
        }
        ("OKP", Some("Ed25519")) => {
            let d = b64("d", &jwk.d)?;
            if d.len() != 32 {
                return Err("Ed25519 `d` must be 32 bytes".into());
            }
            // PKCS#8 v1 { version 0, { id-Ed25519 }, OCTET STRING { OCTET STRING seed } }
            let mut out = hex_bytes("302e020100300506032b657004220420");
            out.extend(&d);
            Ok(Der {
                label: "PRIVATE KEY",
                bytes: out,
            })
        }
        (kty, crv) => Err(format!(
            "unsupported JWK (kty {kty}, crv {}): use RSA, EC P-256 or OKP Ed25519",
            crv.unwrap_or("-")
        )),
    }
}

fn hex_bytes(h: &str) -> Vec<u8> {
    hex::decode(h).expect("constant hex")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_only_and_unknown_jwks_are_refused() {
        assert!(
            to_der(br#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#)
                .unwrap_err()
                .contains("no private part")
        );
        assert!(
            to_der(br#"{"kty":"oct","k":"AA","d":"AA"}"#)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(to_der(b"not json").is_err());
    }
}
