//! Wycheproof's JWS/JWK vectors (Apache-2.0, read from `../shared/vectors/wycheproof/`, never
//! copied here) against sessiongate's token screening, key loading and signature checks.
//!
//! Where the folder is absent (a user's clone) the test says so loudly and passes; CI always
//! has it.

use std::path::PathBuf;

use serde_json::Value;
use sessiongate::keys::SigningKey;
use sessiongate::session::token::{self, Shape};

pub(crate) fn vectors(file: &str) -> Option<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/wycheproof");
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("vector file is JSON")),
        Err(_) => {
            eprintln!(
                "\n*** SKIPPED: Wycheproof vectors not found at {} (they live beside the project in CI, not in a user's clone) ***\n",
                path.display()
            );
            None
        }
    }
}

/// What sessiongate does with one compact JWS given the key of its group: screen the shape
/// and header, insist on the key's algorithm, check the signature.
fn accepted(jws: &str, key: &SigningKey) -> bool {
    let Ok(Shape::Jws(parts)) = token::classify(jws) else {
        return false;
    };
    let Ok(header) = token::header(&parts) else {
        return false;
    };
    let alg_name = serde_json::to_value(key.algorithm()).unwrap();
    if alg_name.as_str() != Some(header.alg.as_str()) {
        return false;
    }
    // The check NativeIssuer makes: the signature, base64url-decoded, against the key
    // parsed once for aws-lc.
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts.signature)
        .is_ok_and(|sig| key.verify(parts.signing_input.as_bytes(), &sig))
}

/// Vectors that are valid JWS but not acceptable JWTs, by the test's `comment`.
const POLICY: &[(&str, &str)] = &[(
    "emptyPayload",
    "a JWT's payload is its claims object, so an empty payload is refused",
)];

#[test]
fn threat_15_18_jws_vectors_against_screening_and_signature_checks() {
    let Some(v) = vectors("json_web_signature_test.json") else {
        return;
    };
    let (mut checked, mut keys_loaded, mut policy_rejections) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for group in v["testGroups"].as_array().unwrap() {
        let private = &group["private"];
        let alg = private["alg"].as_str().unwrap_or_default();
        // sessiongate signs and verifies its own sessions with RS256, ES256 or EdDSA only.
        let ours = matches!(alg, "RS256" | "ES256" | "EdDSA");
        if !ours {
            // Every other algorithm is refused before any signature check (HS* above all:
            // a shared secret cannot be published, and HS256-with-the-public-key is the classic
            // confusion attack).
            for t in group["tests"].as_array().unwrap() {
                if let Ok(Shape::Jws(parts)) =
                    token::classify(t["jws"].as_str().unwrap_or_default())
                    && let Ok(h) = token::header(&parts)
                {
                    assert!(!matches!(h.alg.as_str(), "RS256" | "ES256" | "EdDSA") || h.alg != alg);
                }
                policy_rejections += 1;
            }
            continue;
        }
        let key = SigningKey::from_pem_or_jwk(
            private.to_string().as_bytes(),
            std::path::Path::new("vector"),
        )
        .unwrap_or_else(|e| {
            panic!(
                "group {}: cannot load its private JWK: {e}",
                group["comment"]
            )
        });
        keys_loaded += 1;
        // The private JWK and the group's public JWK are the same key.
        let public = &group["public"];
        let mine = serde_json::to_value(key.public_jwk()).unwrap();
        for field in ["n", "e", "x", "y", "crv"] {
            assert_eq!(
                mine.get(field),
                public.get(field),
                "group {}: {field}",
                group["comment"]
            );
        }
        for t in group["tests"].as_array().unwrap() {
            let jws = match &t["jws"] {
                Value::String(s) => s.clone(),
                // JSON serialisation: not a compact JWS, which is all sessiongate accepts.
                other => other.to_string(),
            };
            let mut want = t["result"] == "valid";
            if let Some((_, why)) = POLICY.iter().find(|(c, _)| t["comment"] == *c) {
                // A valid JWS that is not an acceptable JWT.
                println!("tcId {}: refused by policy: {why}", t["tcId"]);
                want = false;
                policy_rejections += 1;
            }
            let got = accepted(&jws, &key);
            if got != want {
                mismatches.push(format!(
                    "tcId {} ({}): {} — expected {}",
                    t["tcId"], group["comment"], t["comment"], t["result"]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    println!(
        "wycheproof JWS: {checked} vectors checked with {keys_loaded} private JWKs; {policy_rejections} refused by algorithm policy"
    );
    assert!(checked > 200 && keys_loaded >= 3);
}

#[test]
fn jwk_vectors_private_keys_load_or_are_refused_cleanly() {
    let Some(v) = vectors("json_web_key_test.json") else {
        return;
    };
    let mut seen = 0;
    for group in v["testGroups"].as_array().unwrap() {
        for k in group["private"]["keys"].as_array().into_iter().flatten() {
            // Whatever the key, loading it as a signing key either works or fails with an
            // error — never a panic.
            let _ = SigningKey::from_pem_or_jwk(
                k.to_string().as_bytes(),
                std::path::Path::new("vector"),
            );
            seen += 1;
        }
    }
    assert!(seen > 0);
}

/// Vectors sessiongate refuses by policy although they are valid JWS, by tcId.
const JWK_POLICY_SKIPS: &[(u64, &str)] = &[
    (
        2,
        "HS256 keyset: symmetric keys are never accepted from a JWKS (docs/security.md)",
    ),
    (
        13,
        "HS256 long key: symmetric keys are never accepted from a JWKS",
    ),
    (
        14,
        "HS384 long key: symmetric keys are never accepted from a JWKS",
    ),
    (
        15,
        "HS512 long key: symmetric keys are never accepted from a JWKS",
    ),
];

#[test]
fn threat_20_21_jwk_vectors_through_the_provider_key_set_loader_and_verifier() {
    use base64::Engine as _;
    use sessiongate::keys::jwks::{Alg, kid_ok, parse_set};
    let Some(v) = vectors("json_web_key_test.json") else {
        return;
    };
    let all = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for group in v["testGroups"].as_array().unwrap() {
        // An issuer publishes public keys; where a group only has private ones, publish those
        // (the loader must refuse private material).
        let set = group.get("public").unwrap_or(&group["private"]);
        let loaded = parse_set(set.to_string().as_bytes(), &all).ok();
        for t in group["tests"].as_array().unwrap() {
            let id = t["tcId"].as_u64().unwrap();
            let mut want = t["result"] == "valid";
            if let Some((_, why)) = JWK_POLICY_SKIPS.iter().find(|(i, _)| *i == id) {
                println!("tcId {id}: refused by policy: {why}");
                want = false;
            }
            let jws = t["jws"].as_str().unwrap_or_default();
            let got = (|| {
                let (keys, _) = loaded.as_ref()?;
                let Ok(Shape::Jws(parts)) = token::classify(jws) else {
                    return None;
                };
                let header = token::header(&parts).ok()?;
                let alg = Alg::parse(&header.alg)?;
                let kid = header.kid.as_deref().unwrap_or("");
                if !kid_ok(kid) {
                    return None;
                }
                let key = keys.keys.get(kid)?;
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(parts.signature)
                    .ok()?;
                key.verify(alg, parts.signing_input.as_bytes(), &sig)
                    .then_some(())
            })()
            .is_some();
            if got != want {
                mismatches.push(format!(
                    "tcId {id} ({}): {} — expected {}",
                    group["comment"], t["comment"], t["result"]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    println!("wycheproof JWK: {checked} vectors checked");
}
