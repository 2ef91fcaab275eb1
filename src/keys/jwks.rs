//! Issuers' JWKS: parsing a key set into verification keys, defensively (DESIGN.md §5;
//! `reference/threats.md` rows 3, 4, 20, 26; `reference/reliability.md` §5).
//!
//! Each usable key is parsed **once** into aws-lc `ParsedPublicKey`s — one per algorithm the
//! provider allows for its key type — so a verification is a signature check and nothing
//! else. Bad keys are skipped with a reason (and counted), never fatal for the rest of the
//! set; a set left with no usable key is an error (the last good set stays in use).

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::der;

/// Keys kept per set at most; more is a misconfiguration or an attack.
pub const MAX_KEYS: usize = 100;
/// A `kid` longer than this, or with other than printable ASCII, is refused (in the set and
/// in tokens): it is only ever a lookup key.
pub const MAX_KID_BYTES: usize = 256;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// One algorithm sessiongate verifies for providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    fn kty(self) -> &'static str {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "RSA",
            Alg::Es256 | Alg::Es384 => "EC",
            Alg::EdDsa => "OKP",
        }
    }

    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Alg::EdDsa => &signature::ED25519,
        }
    }
}

/// A published key, parsed for each algorithm it may verify.
pub struct VerifyKey {
    parsed: Vec<(Alg, ParsedPublicKey)>,
}

impl VerifyKey {
    /// Checks `signature` over `message` with `alg`; false if this key is not for `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }
}

/// The usable keys of one issuer, by `kid` (`""` for a key published without one).
#[derive(Default)]
pub struct KeySet {
    pub keys: HashMap<String, Arc<VerifyKey>>,
}

/// Why a key of a set was skipped (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Kty,
    Use,
    Alg,
    Kid,
    DuplicateKid,
    Weak,
    Invalid,
    TooMany,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Kty => "kty",
            Rejected::Use => "use",
            Rejected::Alg => "alg",
            Rejected::Kid => "kid",
            Rejected::DuplicateKid => "duplicate_kid",
            Rejected::Weak => "weak",
            Rejected::Invalid => "invalid",
            Rejected::TooMany => "too_many",
        }
    }
}

/// A kid sessiongate will look up: short printable ASCII.
pub fn kid_ok(kid: &str) -> bool {
    kid.len() <= MAX_KID_BYTES && kid.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn b64(v: &Value, name: &str) -> Result<Vec<u8>, Rejected> {
    let s = v
        .get(name)
        .and_then(Value::as_str)
        .ok_or(Rejected::Invalid)?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| Rejected::Invalid)
}

/// Parses one JWK for the algorithms in `allowed`.
fn parse_key(jwk: &Value, allowed: &[Alg]) -> Result<VerifyKey, Rejected> {
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or(Rejected::Kty)?;
    if !matches!(kty, "RSA" | "EC" | "OKP") {
        // `oct` above all: a symmetric key in a public set turns HS256 into "anyone who can
        // read the JWKS can sign".
        return Err(Rejected::Kty);
    }
    if jwk.get("d").is_some() {
        // A private key published by mistake: refuse it rather than use half of it.
        return Err(Rejected::Invalid);
    }
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err(Rejected::Use),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o == "verify"));
        if !verify {
            return Err(Rejected::Use);
        }
    }
    // The algorithms this key may verify: the provider's, narrowed by the key's own `alg`.
    let mut algs: Vec<Alg> = allowed.iter().copied().filter(|a| a.kty() == kty).collect();
    if let Some(a) = jwk.get("alg") {
        let a = a.as_str().and_then(Alg::parse).ok_or(Rejected::Alg)?;
        if !algs.contains(&a) {
            return Err(Rejected::Alg);
        }
        algs = vec![a];
    }
    if algs.is_empty() {
        return Err(Rejected::Alg);
    }
    let bytes = match kty {
        "RSA" => {
            let (n, e) = (b64(jwk, "n")?, b64(jwk, "e")?);
            let n_bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            let e_val = e.iter().skip_while(|b| **b == 0).try_fold(0u64, |acc, b| {
                acc.checked_mul(256).map(|v| v + u64::from(*b))
            });
            match e_val {
                Some(e)
                    if n_bits >= MIN_RSA_BITS
                        && e >= 3
                        && e % 2 == 1
                        && n.last().is_some_and(|b| b % 2 == 1) => {}
                _ => return Err(Rejected::Weak),
            }
            der::rsa_public_key(&n, &e)
        }
        "EC" => {
            let crv = jwk
                .get("crv")
                .and_then(Value::as_str)
                .ok_or(Rejected::Invalid)?;
            let want = match crv {
                "P-256" => (Alg::Es256, 32),
                "P-384" => (Alg::Es384, 48),
                _ => return Err(Rejected::Invalid),
            };
            // `crv` and the algorithm must agree (ES256 is P-256 only).
            algs.retain(|a| *a == want.0);
            if algs.is_empty() {
                return Err(Rejected::Alg);
            }
            let (x, y) = (b64(jwk, "x")?, b64(jwk, "y")?);
            if x.len() != want.1 || y.len() != want.1 {
                return Err(Rejected::Invalid);
            }
            let mut point = vec![0x04];
            point.extend(x);
            point.extend(y);
            point
        }
        _ => {
            if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err(Rejected::Invalid);
            }
            let x = b64(jwk, "x")?;
            if x.len() != 32 {
                return Err(Rejected::Invalid);
            }
            x
        }
    };
    // Parsing validates the key itself (EC points on the curve, RSA sizes).
    let parsed = algs
        .into_iter()
        .map(|a| {
            ParsedPublicKey::new(a.verification(), &bytes)
                .map(|k| (a, k))
                .map_err(|_| Rejected::Invalid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VerifyKey { parsed })
}

/// Parses a JWKS document. Returns the usable keys and what was skipped, or `Err` when the
/// document is not a key set at all or nothing in it is usable.
pub fn parse_set(body: &[u8], allowed: &[Alg]) -> Result<(KeySet, Vec<Rejected>), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut rejected = Vec::new();
    let mut keys: HashMap<String, Arc<VerifyKey>> = HashMap::new();
    let mut duplicated = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        if i >= MAX_KEYS {
            rejected.push(Rejected::TooMany);
            continue;
        }
        let kid = match jwk.get("kid") {
            None => String::new(),
            Some(Value::String(k)) if kid_ok(k) => k.clone(),
            Some(_) => {
                rejected.push(Rejected::Kid);
                continue;
            }
        };
        match parse_key(jwk, allowed) {
            Ok(k) => {
                if keys.insert(kid.clone(), Arc::new(k)).is_some() {
                    duplicated.push(kid);
                }
            }
            Err(r) => rejected.push(r),
        }
    }
    // Two keys under one kid: which one a token means is ambiguous, so neither is used.
    for kid in duplicated {
        if keys.remove(&kid).is_some() {
            rejected.push(Rejected::DuplicateKid);
        }
        rejected.push(Rejected::DuplicateKid);
    }
    if keys.is_empty() {
        return Err(format!("no usable key ({} skipped)", rejected.len()));
    }
    Ok((KeySet { keys }, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL: &[Alg] = &[Alg::Rs256, Alg::Es256, Alg::EdDsa];

    fn public_jwk(kind: crate::keys::KeyKind) -> Value {
        serde_json::to_value(
            crate::keys::SigningKey::generate(kind)
                .unwrap()
                .public_jwk(),
        )
        .unwrap()
    }

    #[test]
    fn usable_keys_load_and_bad_ones_are_skipped_with_a_reason() {
        let rsa = public_jwk(crate::keys::KeyKind::Rs256);
        let ec = public_jwk(crate::keys::KeyKind::Es256);
        let ed = public_jwk(crate::keys::KeyKind::Eddsa);
        let mut enc = rsa.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut off_curve = ec.clone();
        off_curve["kid"] = json!("off");
        off_curve["y"] = off_curve["x"].clone();
        let mut wrong_crv = ec.clone();
        wrong_crv["kid"] = json!("crv");
        wrong_crv["crv"] = json!("P-521");
        let doc = json!({"keys": [
            rsa, ec, ed, enc, off_curve, wrong_crv,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "bad\r\nkid", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB"},
        ]});
        let (set, rejected) = parse_set(doc.to_string().as_bytes(), ALL).unwrap();
        assert_eq!(set.keys.len(), 3);
        let mut reasons: Vec<_> = rejected.iter().map(|r| r.as_str()).collect();
        reasons.sort();
        assert_eq!(reasons, ["invalid", "invalid", "kid", "kty", "use", "weak"]);
    }

    #[test]
    fn duplicate_kids_and_empty_sets_are_refused() {
        let mut a = public_jwk(crate::keys::KeyKind::Es256);
        let mut b = public_jwk(crate::keys::KeyKind::Es256);
        a["kid"] = json!("same");
        b["kid"] = json!("same");
        let err = parse_set(json!({"keys": [a, b]}).to_string().as_bytes(), ALL)
            .err()
            .unwrap();
        assert!(err.contains("no usable key"), "{err}");
        assert!(parse_set(b"{}", ALL).is_err());
        assert!(parse_set(b"[1]", ALL).is_err());
    }

    #[test]
    fn the_providers_algorithms_and_the_keys_alg_narrow_each_other() {
        let rsa = public_jwk(crate::keys::KeyKind::Rs256); // carries "alg": "RS256"
        assert!(
            parse_set(
                json!({"keys": [rsa.clone()]}).to_string().as_bytes(),
                &[Alg::Ps256]
            )
            .is_err()
        );
        let mut no_alg = rsa;
        no_alg.as_object_mut().unwrap().remove("alg");
        let (set, _) = parse_set(
            json!({"keys": [no_alg]}).to_string().as_bytes(),
            &[Alg::Rs256, Alg::Ps256],
        )
        .unwrap();
        let k = set.keys.values().next().unwrap();
        assert_eq!(k.parsed.len(), 2);
    }
}
