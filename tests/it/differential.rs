//! The fleet's other languages must never be stricter than the gate in front of them: one
//! corpus of tokens — good ones, and the attacks of docs/security.md (`alg` confusion, `none`,
//! `kid` tricks, key-carrying headers, `crit`, claims named twice, dates that overflow,
//! malleated signatures, oversize and misshapen tokens, and Wycheproof's JWS vectors) — goes through the real binary, through
//! PyJWT (`tests/contract/python/differential.py`) and through npm `jose`
//! (`tests/contract/node/differential.mjs`), all configured alike. Any token another library
//! refuses but sessiongate accepts fails the test.
//!
//! Needs `python3` with PyJWT and `tests/contract/node/node_modules` (what `scripts/test`
//! installs first). Without them the test says so loudly and skips — except under CI, where
//! a missing tool is a failure.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use sessiongate::keys::{KeyKind, SigningKey};

use crate::support::binary::Binary;
use crate::support::idp::{FakeIdp, ecdsa_twin, sign};
use crate::support::{eventually, http_get, sha, validate_as};

const API: &str = "https://api.example.com";
const KEY: &str = "differential-test-key";
const LEEWAY: i64 = 30;

/// The tools are there, or (outside CI) the reason they are not.
fn tools(root: &std::path::Path) -> Result<(), String> {
    let python = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !python {
        return Err(
            "python3 with PyJWT (pip install -r tests/contract/python/requirements.txt)".into(),
        );
    }
    if !root.join("tests/contract/node/node_modules/jose").is_dir() {
        return Err("npm jose (cd tests/contract/node && npm ci)".into());
    }
    Ok(())
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// `header.payload` as given (text, so that duplicates and odd JSON survive), signed by `key`.
fn sign_raw(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), key.encoding_key(), key.algorithm()).unwrap();
    format!("{input}.{sig}")
}

/// The corpus: (name, token).
fn corpus(idp: &FakeIdp, jwks_text: &str) -> Vec<(String, String)> {
    let rs = idp.key(KeyKind::Rs256);
    let es = idp.key(KeyKind::Es256);
    let ed = idp.key(KeyKind::Eddsa);
    let good = idp.claims(API);
    let now = good["iat"].as_i64().unwrap();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| out.push((name.to_owned(), token));

    add("valid RS256", sign(&rs, json!({}), &good));
    add("valid ES256", sign(&es, json!({}), &good));
    add("valid EdDSA", sign(&ed, json!({}), &good));
    add("valid, typ JWT", sign(&rs, json!({"typ": "JWT"}), &good));
    add(
        "valid, exp as a float",
        sign(&rs, json!({}), &with("exp", json!(now as f64 + 600.5))),
    );
    add(
        "valid, aud a string",
        sign(&rs, json!({}), &with("aud", json!(API))),
    );
    let es_token = sign(&es, json!({}), &good);
    add("ES256 (r, n-s) twin", ecdsa_twin(&es_token));

    // alg: none and its spellings, with no signature and with the original one.
    let signed = sign(&rs, json!({}), &good);
    let (_, payload_and_sig) = signed.split_once('.').unwrap();
    let (payload, sig) = payload_and_sig.split_once('.').unwrap();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg": alg, "kid": rs.kid()}).to_string().as_bytes());
        add(
            &format!("alg {alg}, no signature"),
            format!("{h}.{payload}."),
        );
        add(
            &format!("alg {alg}, original signature"),
            format!("{h}.{payload}.{sig}"),
        );
    }
    // HS256 keyed with the issuer's public key material (RS→HS confusion).
    for (what, secret) in [
        ("JWKS text", jwks_text.as_bytes().to_vec()),
        ("RSA n", {
            let jwks: Value = serde_json::from_str(jwks_text).unwrap();
            let n = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == rs.kid())
                .and_then(|k| k["n"].as_str())
                .unwrap()
                .to_owned();
            URL_SAFE_NO_PAD.decode(n).unwrap()
        }),
    ] {
        let header = json!({"alg": "HS256", "kid": rs.kid(), "typ": "JWT"}).to_string();
        let input = format!("{}.{payload}", b64(header.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        add(
            &format!("HS256 keyed with the {what}"),
            format!("{input}.{sig}"),
        );
    }
    // kid tricks.
    add(
        "unknown kid",
        sign(&rs, json!({"kid": "not-published"}), &good),
    );
    add("no kid", sign(&rs, json!({"kid": null}), &good));
    add(
        "kid path traversal",
        sign(&rs, json!({"kid": "../../../../dev/null"}), &good),
    );
    add(
        "kid of another key",
        sign(&rs, json!({"kid": es.kid()}), &good),
    );
    // Headers that pick a key or need an extension.
    add(
        "jku header",
        sign(&rs, json!({"jku": "http://127.0.0.1:9/jwks"}), &good),
    );
    add(
        "jwk header",
        sign(&rs, json!({"jwk": {"kty": "RSA"}}), &good),
    );
    add(
        "x5u header",
        sign(&rs, json!({"x5u": "http://127.0.0.1:9/x"}), &good),
    );
    add("crit exp", sign(&rs, json!({"crit": ["exp"]}), &good));
    add(
        "crit b64",
        sign(&rs, json!({"crit": ["b64"], "b64": false}), &good),
    );
    add("cty JWT", sign(&rs, json!({"cty": "JWT"}), &good));
    add("typ JWE", sign(&rs, json!({"typ": "JWE"}), &good));
    // Claims.
    add(
        "expired",
        sign(&rs, json!({}), &with("exp", json!(now - 120))),
    );
    add(
        "not yet valid",
        sign(&rs, json!({}), &with("nbf", json!(now + 3600))),
    );
    add(
        "issued in the future",
        sign(&rs, json!({}), &with("iat", json!(now + 3600))),
    );
    add("no exp", sign(&rs, json!({}), &with("exp", Value::Null)));
    add(
        "exp a string",
        sign(&rs, json!({}), &with("exp", json!((now + 600).to_string()))),
    );
    add(
        "exp 1e300",
        sign(&rs, json!({}), &with("exp", json!(1e300))),
    );
    add(
        "exp - iat wraps",
        sign(
            &rs,
            json!({}),
            &with("exp", json!(4_611_686_018_427_387_904_i64)),
        ),
    );
    add(
        "exp in milliseconds",
        sign(&rs, json!({}), &with("exp", json!((now + 600) * 1000))),
    );
    add(
        "wrong audience",
        sign(&rs, json!({}), &with("aud", json!("other-api"))),
    );
    add(
        "audience a number",
        sign(&rs, json!({}), &with("aud", json!(123))),
    );
    add(
        "no audience",
        sign(&rs, json!({}), &with("aud", Value::Null)),
    );
    let iss = good["iss"].as_str().unwrap().to_owned();
    add(
        "issuer without its slash",
        sign(
            &rs,
            json!({}),
            &with("iss", json!(iss.trim_end_matches('/'))),
        ),
    );
    add(
        "issuer a prefix",
        sign(&rs, json!({}), &with("iss", json!(&iss[..iss.len() - 2]))),
    );
    add(
        "issuer an array",
        sign(&rs, json!({}), &with("iss", json!(["evil", iss]))),
    );
    add(
        "no subject",
        sign(&rs, json!({}), &with("sub", Value::Null)),
    );
    let header = json!({"alg": "RS256", "kid": rs.kid()}).to_string();
    let body = good.to_string();
    let inner = &body[1..body.len() - 1];
    add(
        "sub named twice",
        sign_raw(&rs, &header, &format!(r#"{{{inner},"sub":"admin"}}"#)),
    );
    add(
        "a nested claim named twice",
        sign_raw(
            &rs,
            &header,
            &format!(r#"{{{inner},"org":{{"role":"user","role":"admin"}}}}"#),
        ),
    );
    add(
        "alg named twice",
        sign_raw(
            &rs,
            &format!(r#"{{"alg":"RS256","kid":"{}","alg":"none"}}"#, rs.kid()),
            &body,
        ),
    );
    // Shapes.
    add("an extra segment", format!("{signed}.e30"));
    add("padding", format!("{signed}="));
    add("a space", format!(" {signed}"));
    add("signature cut", signed[..signed.len() - 4].to_owned());
    add(
        "oversize",
        sign(&rs, json!({}), &with("pad", json!("x".repeat(20_000)))),
    );
    out
}

/// Wycheproof's JWS vectors, with their groups' public keys published by `idp` (one per kid,
/// for the algorithms all three are configured with), so that their signatures really are
/// checked against the keys they were made with. Their payloads are not claim sets (`foo`,
/// and the like): every library must refuse every one, and what a vector adds is a
/// malformed or malleated JWS that one of them might take.
fn wycheproof(idp: &FakeIdp) -> Vec<(String, String)> {
    let Some(vectors) = crate::wycheproof::vectors("json_web_signature_test.json") else {
        return Vec::new();
    };
    let mut kids = std::collections::HashSet::new();
    let mut out = Vec::new();
    for group in vectors["testGroups"].as_array().unwrap() {
        if let Some(public) = group.get("public")
            && matches!(public["alg"].as_str(), Some("RS256" | "ES256"))
            && kids.insert(public["kid"].to_string())
        {
            idp.publish_raw(public.clone());
        }
        for t in group["tests"].as_array().unwrap() {
            out.push((
                format!(
                    "wycheproof {} #{} {}",
                    group["comment"].as_str().unwrap_or_default(),
                    t["tcId"],
                    t["comment"].as_str().unwrap_or_default()
                ),
                t["jws"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_other_library_refuses_a_token_sessiongate_accepts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(missing) = tools(root) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the differential suite needs {missing}"
        );
        eprintln!("SKIPPED: the differential suite needs {missing}; scripts/test installs it");
        return;
    }
    let idp = FakeIdp::start().await;
    // Published before the binary first reads the key set.
    let vectors = wycheproof(&idp);
    let toml = format!(
        "[[clients]]\nname = \"edge\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n\
         [native]\nleeway_seconds = {LEEWAY}\n\
         [[providers]]\nname = \"auth0\"\nkind = \"external\"\nissuer = \"{}\"\njwks_url = \"{}\"\n\
         audiences = [\"{API}\"]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n",
        sha(KEY),
        idp.issuer(),
        idp.jwks_url(),
    );
    let bin = Binary::start(&toml, &[("RUST_LOG", "warn,sessiongate::app=info".into())]);
    let client = SessionGateServiceClient::new(bin.channel().await);
    let verdict = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .validate_session(validate_as(token, KEY))
                .await
                .map(|r| r.into_inner().verdict() == pb::Verdict::Valid)
        }
    };
    let (_, jwks_text) = http_get(idp.addr, "/.well-known/jwks.json").await;
    let mut cases = corpus(&idp, &jwks_text);
    let from_wycheproof = vectors.len();
    cases.extend(vectors);
    // The binary has the issuer's keys before the corpus runs.
    eventually(std::time::Duration::from_secs(10), || {
        let t = cases[0].1.clone();
        async { verdict(t).await.ok().filter(|v| *v) }
    })
    .await;
    let mut ours = Vec::new();
    for (_, token) in &cases {
        // A call error (a token too large for a message, say) is no acceptance either.
        ours.push(verdict(token.clone()).await.unwrap_or(false));
    }
    bin.stop();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corpus.json");
    let tokens: Vec<&str> = cases.iter().map(|(_, t)| t.as_str()).collect();
    std::fs::write(
        &file,
        json!({
            "issuer": idp.issuer(),
            "audience": API,
            "leeway": LEEWAY,
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "jwks": serde_json::from_str::<Value>(&jwks_text).unwrap(),
            "tokens": tokens,
        })
        .to_string(),
    )
    .unwrap();
    let run = |program: &str, script: &str| -> Vec<bool> {
        let out = Command::new(program)
            .arg(root.join(script))
            .arg(&file)
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script}: {e}"))
    };
    let pyjwt = run("python3", "tests/contract/python/differential.py");
    let jose = run("node", "tests/contract/node/differential.mjs");
    assert_eq!((pyjwt.len(), jose.len()), (cases.len(), cases.len()));

    let mut table = String::new();
    let mut looser = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let mark = |b: bool| if b { "accept" } else { "refuse" };
        table.push_str(&format!(
            "{name:<40} sessiongate {:<6}  PyJWT {:<6}  jose {:<6}\n",
            mark(ours[i]),
            mark(pyjwt[i]),
            mark(jose[i])
        ));
        if ours[i] && !(pyjwt[i] && jose[i]) {
            looser.push(name.as_str());
        }
    }
    eprintln!("{table}");
    assert!(
        looser.is_empty(),
        "sessiongate accepts what another library refuses: {looser:?}\n{table}"
    );
    // The harness is not vacuous: the good tokens pass everywhere.
    let everywhere = (0..cases.len())
        .filter(|&i| ours[i] && pyjwt[i] && jose[i])
        .count();
    assert!(
        everywhere >= 6,
        "only {everywhere} tokens passed everywhere:\n{table}"
    );
    let refused_by_us = ours.iter().filter(|v| !**v).count();
    eprintln!(
        "differential: {} tokens ({from_wycheproof} of them Wycheproof's); sessiongate refuses {refused_by_us}, PyJWT {}, jose {}; accepted everywhere {everywhere}",
        cases.len(),
        pyjwt.iter().filter(|v| !**v).count(),
        jose.iter().filter(|v| !**v).count(),
    );
}
