//! sessiongate's signing keys.
//!
//! Keys come from PEM files (PKCS#8, or PKCS#1 for RSA): RSA (RS256, ≥ 2048 bits), EC P-256
//! (ES256) or Ed25519 (EdDSA). The first configured key signs; all are published in the JWKS
//! and accepted for verification, so a rotation is: add the new key second, wait for caches
//! to pick it up, move it first, retire the old one after the longest JWT lifetime. A key's
//! `kid` is its RFC 7638 thumbprint, so it is stable and needs no bookkeeping. In `test` with
//! no keys configured one is generated at start (and `live` refuses that, see `config`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::KeySource;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

use super::jwks::{Alg, VerifyKey, parse_key};

/// One of jsonwebtoken's PEM parsers.
type ParsePem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// Smallest RSA modulus accepted for signing, in bits.
const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read the key file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
    #[error("two signing keys have the same kid {0}: each key must be listed once")]
    Duplicate(String),
}

/// The kinds of key sessiongate signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// RSA 2048, RS256: what every JWT library verifies.
    Rs256,
    /// EC P-256, ES256: small and fast to sign.
    Es256,
    /// Ed25519, EdDSA: smallest and fastest; not every library verifies it.
    Eddsa,
}

/// One signing key with everything derived from it once.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// The public key parsed once for aws-lc, as provider keys are: verifying through
    /// jsonwebtoken rebuilt the key from its components on every token (most of the cost
    /// of an uncached RS256 validation).
    verifier: (Alg, VerifyKey),
    public: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Builds a key from PEM text or a private JWK (JSON), detecting which.
    pub fn from_pem_or_jwk(text: &[u8], origin: &Path) -> Result<Self, KeyError> {
        if text.trim_ascii_start().first() == Some(&b'{') {
            let der = super::jwk_private::to_der(text).map_err(|reason| KeyError::Invalid {
                path: origin.to_path_buf(),
                reason,
            })?;
            let pem = pem::encode(&pem::Pem::new(der.label, der.bytes));
            return Self::from_pem(pem.as_bytes(), origin);
        }
        Self::from_pem(text, origin)
    }

    /// Builds a key from PEM text, detecting its type.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let candidates: [(Algorithm, ParsePem); 3] = [
            (Algorithm::RS256, EncodingKey::from_rsa_pem),
            (Algorithm::ES256, EncodingKey::from_ec_pem),
            (Algorithm::EdDSA, EncodingKey::from_ed_pem),
        ];
        for (alg, parse) in candidates {
            let Ok(encoding) = parse(pem) else { continue };
            // Deriving the public JWK also proves the key is usable for `alg` (an EC key on
            // another curve than P-256 fails here).
            let Ok(public) = Jwk::from_encoding_key(&encoding, alg) else {
                continue;
            };
            return Self::new(alg, encoding, public).map_err(invalid);
        }
        Err(invalid(
            "not a PEM private key sessiongate can sign with: use RSA (>= 2048 bits), EC P-256 or Ed25519, in PKCS#8 (`sessiongate keygen` makes one)".into(),
        ))
    }

    fn new(alg: Algorithm, encoding: EncodingKey, mut public: Jwk) -> Result<Self, String> {
        if let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &public.algorithm {
            use base64::Engine as _;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|e| format!("RSA modulus: {e}"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits is too small: use at least {MIN_RSA_BITS}"
                ));
            }
            if super::jwks::roca_vulnerable(&n) {
                return Err("RSA key has the ROCA fingerprint (CVE-2017-15361): its private key can be recovered; generate a new one".into());
            }
        }
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key's thumbprint: {e}"))?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        let verify_alg = match alg {
            Algorithm::RS256 => Alg::Rs256,
            Algorithm::ES256 => Alg::Es256,
            Algorithm::EdDSA => Alg::EdDsa,
            other => return Err(format!("no verifier for {other:?}")),
        };
        let jwk = serde_json::to_value(&public).map_err(|e| format!("public key: {e}"))?;
        let verifier =
            parse_key(&jwk, &[verify_alg]).map_err(|r| format!("public key: {}", r.as_str()))?;
        Ok(Self {
            kid,
            alg,
            encoding,
            verifier: (verify_alg, verifier),
            public,
        })
    }

    /// A fresh key of `kind`.
    pub fn generate(kind: KeyKind) -> Result<Self, KeyError> {
        let pem = generate_pem(kind)?;
        Self::from_pem(pem.as_bytes(), Path::new("(generated)"))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// Whether `signature` (raw bytes) over `message` is this key's, by its algorithm.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifier.1.verify(self.verifier.0, message, signature)
    }

    /// The public JWK (with `kid`, `use` and `alg`).
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }
}

/// A new private key of `kind`, as PKCS#8 PEM.
pub fn generate_pem(kind: KeyKind) -> Result<String, KeyError> {
    let err = |e: aws_lc_rs::error::Unspecified| KeyError::Generate(e.to_string());
    let der: Vec<u8> = match kind {
        KeyKind::Rs256 => {
            let pair =
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(err)?;
            pair.as_der().map_err(err)?.as_ref().to_vec()
        }
        KeyKind::Es256 => {
            let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .map_err(err)?;
            pair.to_pkcs8v1().map_err(err)?.as_ref().to_vec()
        }
        KeyKind::Eddsa => {
            // PKCS#8 v1 (no embedded public key): the form jsonwebtoken's Ed25519 support reads.
            aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .map_err(err)?
            .as_ref()
            .to_vec()
        }
    };
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
}

/// The configured signing keys: one signs, all verify and are published.
pub struct SigningKeys {
    keys: Vec<Arc<SigningKey>>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    jwks_json: String,
    generated: bool,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("keys", &self.keys)
            .field("generated", &self.generated)
            .finish()
    }
}

impl SigningKeys {
    /// Loads the configured keys, or generates one RS256 key when there are none (the
    /// caller decides whether that is allowed: `config` refuses it in `live`).
    pub fn load_or_generate(sources: &[KeySource]) -> Result<Self, KeyError> {
        if sources.is_empty() {
            return Self::from_keys(vec![SigningKey::generate(KeyKind::Rs256)?], true);
        }
        let keys = sources
            .iter()
            .map(|source| match source {
                KeySource::File(p) => {
                    let text = std::fs::read(p).map_err(|source| KeyError::Read {
                        path: p.clone(),
                        source,
                    })?;
                    SigningKey::from_pem_or_jwk(&text, p)
                }
                KeySource::Env { var, value } => SigningKey::from_pem_or_jwk(
                    value.expose().as_bytes(),
                    Path::new(&format!("env:{var}")),
                ),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keys(keys, false)
    }

    /// From keys already built; the first signs.
    pub fn from_keys(keys: Vec<SigningKey>, generated: bool) -> Result<Self, KeyError> {
        let keys: Vec<_> = keys.into_iter().map(Arc::new).collect();
        let mut by_kid = HashMap::new();
        for k in &keys {
            if by_kid.insert(k.kid.clone(), k.clone()).is_some() {
                return Err(KeyError::Duplicate(k.kid.clone()));
            }
        }
        let set = JwkSet {
            keys: keys.iter().map(|k| k.public.clone()).collect(),
        };
        let jwks_json =
            serde_json::to_string(&set).map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self {
            keys,
            by_kid,
            jwks_json,
            generated,
        })
    }

    /// The key that signs new JWTs.
    pub fn active(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// A published key by `kid`.
    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.by_kid.get(kid).map(|k| &**k)
    }

    /// Whether some key signs with `alg` (what a token's header may name).
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.alg == alg)
    }

    /// The algorithms of the published keys: the native issuer's allowlist.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs = Vec::new();
        for k in &self.keys {
            if !algs.contains(&k.alg) {
                algs.push(k.alg);
            }
        }
        algs
    }

    /// The public JWKS document, rendered once.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// True when the key was generated at start (test only).
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_generates_signs_and_verifies() {
        for kind in [KeyKind::Rs256, KeyKind::Es256, KeyKind::Eddsa] {
            let key = SigningKey::generate(kind).unwrap();
            let header = jsonwebtoken::Header {
                kid: Some(key.kid().into()),
                ..jsonwebtoken::Header::new(key.algorithm())
            };
            let claims = serde_json::json!({"sub": "u", "exp": 4_000_000_000u64});
            let token = jsonwebtoken::encode(&header, &claims, key.encoding_key()).unwrap();
            let mut v = jsonwebtoken::Validation::new(key.algorithm());
            v.required_spec_claims.clear();
            let data = jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_jwk(key.public_jwk()).unwrap(),
                &v,
            )
            .unwrap();
            assert_eq!(data.claims["sub"], "u", "{kind:?}");
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_and_jwks_is_public_only() {
        let keys = SigningKeys::from_keys(
            vec![
                SigningKey::generate(KeyKind::Rs256).unwrap(),
                SigningKey::generate(KeyKind::Es256).unwrap(),
            ],
            false,
        )
        .unwrap();
        let jwks: serde_json::Value = serde_json::from_str(keys.jwks_json()).unwrap();
        let list = jwks["keys"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["kid"], keys.active().kid());
        assert_eq!(list[0]["kty"], "RSA");
        assert_eq!(list[0]["alg"], "RS256");
        assert_eq!(list[0]["use"], "sig");
        assert_eq!(list[1]["kty"], "EC");
        for k in list {
            assert!(
                k.get("d").is_none() && k.get("p").is_none(),
                "private material in {k}"
            );
        }
        assert_eq!(keys.algorithms(), vec![Algorithm::RS256, Algorithm::ES256]);
    }

    #[test]
    fn small_rsa_keys_other_curves_and_garbage_are_refused() {
        // Throwaway test keys, generated with openssl for these negative cases only.
        let small = include_bytes!("../../tests/fixtures/rsa1024-too-small.pem");
        let e = SigningKey::from_pem(small, Path::new("small.pem")).unwrap_err();
        // aws-lc refuses to load it at all; the message still names the floor.
        assert!(e.to_string().contains(">= 2048 bits"), "{e}");
        let p384 = include_bytes!("../../tests/fixtures/ec-p384-unsupported.pem");
        assert!(SigningKey::from_pem(p384, Path::new("p384.pem")).is_err());
        let e = SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            Path::new("k.pem"),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("k.pem: not a PEM private key"),
            "{e}"
        );
        let e =
            SigningKeys::load_or_generate(&[KeySource::File(PathBuf::from("/nonexistent.pem"))])
                .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"));
    }

    #[test]
    fn a_private_jwk_is_the_same_key_as_its_pem() {
        use base64::Engine as _;
        // Ed25519 PKCS#8 v1 ends with the 32-byte seed, which is the JWK's `d`.
        let pem = generate_pem(KeyKind::Eddsa).unwrap();
        let der = pem::parse(&pem).unwrap().into_contents();
        let from_pem = SigningKey::from_pem(pem.as_bytes(), Path::new("k.pem")).unwrap();
        let public = serde_json::to_value(from_pem.public_jwk()).unwrap();
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": public["x"],
            "d": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]),
        });
        let from_jwk =
            SigningKey::from_pem_or_jwk(jwk.to_string().as_bytes(), Path::new("k.jwk")).unwrap();
        assert_eq!(from_jwk.kid(), from_pem.kid());
        // (RSA and P-256 private JWKs are checked against Wycheproof's keys in tests/it.)
    }

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let pem = generate_pem(KeyKind::Es256).unwrap();
        let a = SigningKey::from_pem(pem.as_bytes(), Path::new("a")).unwrap();
        let b = SigningKey::from_pem(pem.as_bytes(), Path::new("b")).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert!(
            SigningKeys::from_keys(vec![a, b], false).is_err(),
            "duplicate kid accepted"
        );
    }
}
