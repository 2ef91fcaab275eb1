//! ValidateSession for legacy and external providers' tokens, against fake issuers on loopback.
//!
//! Rows of the threat catalogue in docs/security.md and where each is proven (tests are named `threat_NN_…`):
//! 1, 7, 13, 14, 17 → `threat_01_07_13_14_17_…`; 2, 3, 6 → `threat_02_03_06_…`;
//! 4, 10, 11, 12 → `threat_04_10_11_12_…`; 5 → `threat_05_…`; 8, 9 → `threat_08_09_…`;
//! 15, 18 (Wycheproof JWS) and 20, 21 (Wycheproof JWK) → `wycheproof.rs`; 16 → `token.rs`;
//! 19 → `threat_19_…`; 22, 24 → `threat_22_24_…`; 23 → `threat_23_…` (and the native
//! replica test in `sessions.rs`); 25, 26 → `threat_25_26_…` and `threat_26_…`; 29 →
//! `migrate.rs`. Row 27 is structural (tokens are looked up by SHA-256, never compared);
//! 28 (leakage into logs and spans) and 30 (ResolveFlow) belong to their own issues.

use std::time::Duration;

use serde_json::{Value, json};
use sessiongate::grpc::pb;
use sessiongate::keys::KeyKind;

use crate::support::idp::{FakeIdp, UserInfoReply, ecdsa_twin, sign};
use crate::support::{Setup, eventually, reason};

const API: &str = "https://api.example.com";

fn provider(name: &str, kind: &str, idp: &FakeIdp, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nissuer = \"{}\"\njwks_url = \"{}\"\naudiences = [\"{API}\"]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n{extra}\n",
        idp.issuer(),
        idp.jwks_url()
    )
}

fn verdict(r: &pb::ValidateSessionResponse) -> (pb::Verdict, pb::Reason) {
    (r.verdict(), r.reason())
}

const VALID: (pb::Verdict, pb::Reason) = (pb::Verdict::Valid, pb::Reason::Unspecified);

fn invalid(r: pb::Reason) -> (pb::Verdict, pb::Reason) {
    (pb::Verdict::Invalid, r)
}

#[tokio::test]
async fn legacy_and_external_tokens_validate_with_their_policy() {
    let legacy = FakeIdp::start().await;
    let upgrade = FakeIdp::start().await;
    let retired = FakeIdp::start().await;
    let external = FakeIdp::start().await;
    let toml = [
        provider("auth0", "legacy", &legacy, "policy = \"accept\""),
        provider("cognito", "legacy", &upgrade, "policy = \"upgrade\""),
        provider("oldsso", "legacy", &retired, "policy = \"reject\""),
        provider("stytch", "external", &external, ""),
    ]
    .concat();
    let app = Setup::new().toml(&toml).spawn().await;

    for kind in [KeyKind::Rs256, KeyKind::Es256, KeyKind::Eddsa] {
        let token = sign(&legacy.key(kind), json!({}), &legacy.claims(API));
        let r = eventually(Duration::from_secs(5), || async {
            app.validate(&token).await.ok()
        })
        .await;
        assert_eq!(verdict(&r), VALID, "{kind:?}");
        assert_eq!(r.origin(), pb::Origin::Legacy);
        assert_eq!(r.provider, "auth0");
        assert_eq!(r.subject, "auth0|legacy-user-1");
        assert_eq!(r.action(), pb::Action::None);
        assert_eq!(r.source(), pb::DecisionSource::LocalVerify);
        assert!(r.claims.unwrap().fields.contains_key("scope"));
        assert!(r.session.is_none() && r.session_jwt.is_empty());
        let again = app.validate(&token).await.unwrap();
        assert_eq!(
            (verdict(&again), again.source()),
            (VALID, pb::DecisionSource::Cache)
        );
    }

    let token = sign(
        &upgrade.key(KeyKind::Rs256),
        json!({}),
        &upgrade.claims(API),
    );
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!((verdict(&r), r.action()), (VALID, pb::Action::Migrate));

    let token = sign(
        &retired.key(KeyKind::Rs256),
        json!({}),
        &retired.claims(API),
    );
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), invalid(pb::Reason::LegacyRetired));
    assert_eq!(
        (r.origin(), r.provider.as_str()),
        (pb::Origin::Legacy, "oldsso")
    );

    let token = sign(
        &external.key(KeyKind::Es256),
        json!({}),
        &external.claims(API),
    );
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    assert_eq!(
        (r.origin(), r.provider.as_str()),
        (pb::Origin::New, "stytch")
    );
}

#[tokio::test]
async fn threat_05_keys_are_bound_to_their_issuer() {
    let a = FakeIdp::start().await;
    let b = FakeIdp::start().await;
    let app = Setup::new()
        .toml(
            &[
                provider("a", "legacy", &a, ""),
                provider("b", "legacy", &b, ""),
            ]
            .concat(),
        )
        .spawn()
        .await;
    // Warm both key sets.
    for idp in [&a, &b] {
        let t = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
        eventually(Duration::from_secs(5), || async {
            app.validate(&t).await.ok()
        })
        .await;
    }
    // B signs a token that claims to be from A, with B's kid: A has no such key.
    let forged = sign(&b.key(KeyKind::Rs256), json!({}), &a.claims(API));
    assert_eq!(
        verdict(&app.validate(&forged).await.unwrap()),
        invalid(pb::Reason::UnknownKey)
    );
    // Same, but B's key presented under A's kid: the signature fails under A's key.
    let forged = sign(
        &b.key(KeyKind::Rs256),
        json!({"kid": a.key(KeyKind::Rs256).kid()}),
        &a.claims(API),
    );
    assert_eq!(
        verdict(&app.validate(&forged).await.unwrap()),
        invalid(pb::Reason::BadSignature)
    );
}

#[tokio::test]
async fn threat_04_10_11_12_claims_and_kids_are_checked_strictly() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider(
            "auth0",
            "legacy",
            &idp,
            "allowed_client_ids = [\"client-web\"]",
        ))
        .spawn()
        .await;
    let key = idp.key(KeyKind::Rs256);
    let good = idp.claims(API);
    let ok = sign(&key, json!({}), &good);
    eventually(Duration::from_secs(5), || async {
        app.validate(&ok).await.ok()
    })
    .await;

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let now = good["iat"].as_i64().unwrap();
    let trimmed_issuer = idp.issuer().trim_end_matches('/').to_owned();
    let cases: Vec<(&str, Value, Value, pb::Reason)> = vec![
        (
            "issuer without the trailing slash",
            json!({}),
            with("iss", json!(trimmed_issuer)),
            pb::Reason::UnknownIssuer,
        ),
        (
            "issuer as an array",
            json!({}),
            with("iss", json!([idp.issuer()])),
            pb::Reason::UnknownIssuer,
        ),
        (
            "other audience",
            json!({}),
            with("aud", json!("https://other.example.com")),
            pb::Reason::WrongAudience,
        ),
        (
            "audience as a number",
            json!({}),
            with("aud", json!(123)),
            pb::Reason::WrongAudience,
        ),
        (
            "no audience",
            json!({}),
            without("aud"),
            pb::Reason::WrongAudience,
        ),
        (
            "client not allowed",
            json!({}),
            with("azp", json!("client-evil")),
            pb::Reason::WrongAudience,
        ),
        (
            "expired",
            json!({}),
            with("exp", json!(now - 120)),
            pb::Reason::Expired,
        ),
        (
            "exp as a string",
            json!({}),
            with("exp", json!("9999999999")),
            pb::Reason::InvalidClaims,
        ),
        (
            "exp in milliseconds",
            json!({}),
            with("exp", json!(now * 1000)),
            pb::Reason::InvalidClaims,
        ),
        (
            "no exp",
            json!({}),
            without("exp"),
            pb::Reason::InvalidClaims,
        ),
        (
            "nbf in the future",
            json!({}),
            with("nbf", json!(now + 3600)),
            pb::Reason::NotYetValid,
        ),
        (
            "iat in the future",
            json!({}),
            with("iat", json!(now + 3600)),
            pb::Reason::NotYetValid,
        ),
        (
            "no sub",
            json!({}),
            without("sub"),
            pb::Reason::InvalidClaims,
        ),
        (
            "alg none",
            json!({"alg": "none"}),
            good.clone(),
            pb::Reason::UnsupportedAlgorithm,
        ),
        (
            "alg NONE",
            json!({"alg": "NONE"}),
            good.clone(),
            pb::Reason::UnsupportedAlgorithm,
        ),
        (
            "alg with a space",
            json!({"alg": "RS256 "}),
            good.clone(),
            pb::Reason::UnsupportedAlgorithm,
        ),
        (
            "typ JWE",
            json!({"typ": "JWE"}),
            good.clone(),
            pb::Reason::Malformed,
        ),
        (
            "crit",
            json!({"crit": ["exp"]}),
            good.clone(),
            pb::Reason::Malformed,
        ),
        (
            "kid path traversal",
            json!({"kid": "../../../../dev/null"}),
            good.clone(),
            pb::Reason::UnknownKey,
        ),
        (
            "kid with CRLF",
            json!({"kid": "a\r\nb"}),
            good.clone(),
            pb::Reason::Malformed,
        ),
        (
            "huge kid",
            json!({"kid": "k".repeat(300)}),
            good.clone(),
            pb::Reason::Malformed,
        ),
    ];
    for (name, header, claims, want) in cases {
        let token = sign(&key, header, &claims);
        let r = app
            .validate(&token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(verdict(&r), invalid(want), "{name}");
        assert!(
            r.claims.is_none(),
            "{name}: claims of an invalid token returned"
        );
    }
}

#[tokio::test]
async fn threat_02_03_06_hostile_key_sets_and_header_urls_are_ignored() {
    let idp = FakeIdp::start().await;
    // A symmetric key smuggled into the JWKS, and a token HMAC-signed with it.
    let secret = b"0123456789abcdef0123456789abcdef";
    idp.publish_raw(json!({"kty": "oct", "kid": "hmac", "k": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)}));
    // A canary that must never be contacted through a jku/x5u header.
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary_addr = canary.local_addr().unwrap();
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = contacted.clone();
    tokio::spawn(async move {
        if canary.accept().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let key = idp.key(KeyKind::Rs256);
    let claims = idp.claims(API);
    let ok = sign(&key, json!({}), &claims);
    eventually(Duration::from_secs(5), || async {
        app.validate(&ok).await.ok()
    })
    .await;

    let hs256 = {
        use base64::Engine as _;
        let h = json!({"alg": "HS256", "kid": "hmac", "typ": "JWT"});
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            enc.encode(h.to_string()),
            enc.encode(claims.to_string())
        );
        let k = jsonwebtoken::EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, jsonwebtoken::Algorithm::HS256)
            .unwrap();
        format!("{input}.{sig}")
    };
    assert_eq!(
        verdict(&app.validate(&hs256).await.unwrap()),
        invalid(pb::Reason::UnsupportedAlgorithm)
    );
    let jku = sign(
        &key,
        json!({"jku": format!("http://{canary_addr}/jwks")}),
        &claims,
    );
    let x5u = sign(
        &key,
        json!({"x5u": format!("http://{canary_addr}/cert")}),
        &claims,
    );
    for t in [jku, x5u] {
        assert_eq!(
            verdict(&app.validate(&t).await.unwrap()),
            invalid(pb::Reason::Malformed)
        );
    }
    assert!(
        !contacted.load(std::sync::atomic::Ordering::SeqCst),
        "a header URL was fetched"
    );
}

#[tokio::test]
async fn threat_26_rotation_is_picked_up_once_and_random_kids_cannot_storm_the_issuer() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let claims = idp.claims(API);
    let first = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    eventually(Duration::from_secs(5), || async {
        app.validate(&first)
            .await
            .ok()
            .filter(|r| verdict(r) == VALID)
    })
    .await;
    let before = idp.jwks_hits();

    // The issuer rotates: a token with the new kid makes one refresh and verifies.
    let new_key = idp.rotate(KeyKind::Es256);
    let rotated = sign(&new_key, json!({}), &claims);
    assert_eq!(verdict(&app.validate(&rotated).await.unwrap()), VALID);
    assert_eq!(idp.jwks_hits(), before + 1);

    // 200 tokens with random kids within the cooldown: not one more fetch.
    for i in 0..200 {
        let t = sign(&new_key, json!({"kid": format!("random-{i}")}), &claims);
        assert_eq!(
            verdict(&app.validate(&t).await.unwrap()),
            invalid(pb::Reason::UnknownKey)
        );
    }
    assert_eq!(idp.jwks_hits(), before + 1, "unknown kids caused fetches");
}

#[tokio::test]
async fn issuer_down_at_start_is_unavailable_then_recovers_and_outages_keep_last_keys() {
    let idp = FakeIdp::start().await;
    idp.set_status(500);
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    // Start-up did not wait for the issuer; its tokens cannot be checked yet: UNAVAILABLE,
    // never INVALID.
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    let e = app.validate(&token).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::Unavailable, "KEYS_UNAVAILABLE")
    );

    // The issuer comes back: the background fetch (with backoff) loads the keys.
    idp.set_status(200);
    let r = eventually(Duration::from_secs(10), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);

    // The issuer fails again: the last good keys stay in use for a token never seen before.
    idp.set_status(500);
    let mut other = idp.claims(API);
    other["sub"] = json!("auth0|someone-else");
    let fresh = sign(&idp.key(KeyKind::Es256), json!({}), &other);
    assert_eq!(verdict(&app.validate(&fresh).await.unwrap()), VALID);
}

#[tokio::test]
async fn legacy_opaque_tokens_go_through_userinfo_cached_by_digest() {
    let idp = FakeIdp::start().await;
    let extra = format!(
        "policy = \"upgrade\"\ntoken_format = \"both\"\nuserinfo_url = \"{}\"\nuserinfo_timeout_ms = 300\n",
        idp.userinfo_url()
    );
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, &extra))
        .spawn()
        .await;
    idp.on_userinfo(
        "opaque-good",
        UserInfoReply::Json(
            json!({"sub": "auth0|42", "email": "ada@example.com", "email_verified": true}),
        ),
    );
    idp.on_userinfo("opaque-429", UserInfoReply::RateLimited(7));
    idp.on_userinfo("opaque-503", UserInfoReply::Status(503));
    idp.on_userinfo("opaque-slow", UserInfoReply::Slow(Duration::from_secs(3)));
    idp.on_userinfo("opaque-html", UserInfoReply::NotJson);

    let r = app.validate("opaque-good").await.unwrap();
    assert_eq!((verdict(&r), r.action()), (VALID, pb::Action::Migrate));
    assert_eq!(
        (r.origin(), r.provider.as_str(), r.subject.as_str()),
        (pb::Origin::Legacy, "auth0", "auth0|42")
    );
    assert_eq!(r.source(), pb::DecisionSource::Upstream);
    assert!(r.claims.unwrap().fields.contains_key("email"));
    // The answer is cached (by digest): no second call.
    let r = app.validate("opaque-good").await.unwrap();
    assert_eq!(
        (verdict(&r), r.source()),
        (VALID, pb::DecisionSource::Cache)
    );
    assert_eq!(idp.userinfo_hits(), 1);

    // Refused by the provider: INVALID, and the refusal is cached too.
    let r = app.validate("opaque-unknown").await.unwrap();
    assert_eq!(verdict(&r), invalid(pb::Reason::NotFound));
    let _ = app.validate("opaque-unknown").await.unwrap();
    assert_eq!(idp.userinfo_hits(), 2);

    // Rate limited: RESOURCE_EXHAUSTED with the provider's retry-after.
    let e = app.validate("opaque-429").await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::ResourceExhausted, "LEGACY_RATE_LIMITED")
    );
    assert_eq!(e.metadata().get("retry-after").unwrap(), "7");
    // Down, slow or broken: UNAVAILABLE — never an INVALID verdict.
    for token in ["opaque-503", "opaque-slow", "opaque-html"] {
        let started = std::time::Instant::now();
        let e = app.validate(token).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (tonic::Code::Unavailable, "LEGACY_PROVIDER_UNAVAILABLE"),
            "{token}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{token} took {:?}",
            started.elapsed()
        );
    }
    // Tokens that could split a header never leave the process.
    let before = idp.userinfo_hits();
    for bad in ["has space", "tab\there", "new\nline"] {
        assert_eq!(
            verdict(&app.validate(bad).await.unwrap()),
            invalid(pb::Reason::Malformed)
        );
    }
    assert_eq!(idp.userinfo_hits(), before);
}

#[tokio::test]
async fn threat_23_legacy_tokens_are_revoked_by_jti_and_by_digest_on_every_replica() {
    let redis = crate::support::RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let extra = format!(
        "token_format = \"both\"\nuserinfo_url = \"{}\"\n",
        idp.userinfo_url()
    );
    let setup = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, &extra))
        .caller_key("revoker")
        .redis(&redis);
    let a = setup.clone().spawn().await;
    let b = setup.spawn().await;
    let key = idp.key(KeyKind::Es256);
    let mut claims = idp.claims(API);
    claims["jti"] = json!("jti-1");
    let token = sign(&key, json!({}), &claims);
    // A second encoding of the same token (same iss and jti, other bytes).
    let twin = sign(&key, json!({"typ": "JWT"}), &claims);
    let plain = sign(&key, json!({}), &idp.claims(API)); // no jti
    idp.on_userinfo("opaque-1", UserInfoReply::Json(json!({"sub": "auth0|9"})));
    for t in [&token, &twin, &plain] {
        let r = eventually(Duration::from_secs(5), || async {
            b.validate(t).await.ok()
        })
        .await;
        assert_eq!(verdict(&r), VALID);
    }
    assert_eq!(verdict(&b.validate("opaque-1").await.unwrap()), VALID);

    let revoke = |t: &str| pb::RevokeSessionRequest {
        target: Some(pb::revoke_session_request::Target::LegacyToken(t.into())),
        ..Default::default()
    };
    for t in [&token, &plain, &"opaque-1".to_string()] {
        let r = a
            .session()
            .revoke_session(a.authed(revoke(t)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.revoked, 1);
    }
    // Replica B had all of them cached; within a second they are REVOKED there.
    for t in [&token, &twin, &plain, &"opaque-1".to_string()] {
        eventually(Duration::from_secs(1), || async {
            (verdict(&b.validate(t).await.unwrap()) == invalid(pb::Reason::Revoked)).then_some(())
        })
        .await;
    }
    let hits = idp.userinfo_hits();
    assert_eq!(
        verdict(&a.validate("opaque-1").await.unwrap()),
        invalid(pb::Reason::Revoked)
    );
    assert_eq!(
        idp.userinfo_hits(),
        hits,
        "a revoked opaque token was sent upstream"
    );

    // Only tokens of configured providers can be deny-listed; an expired one needs nothing.
    let e = a
        .session()
        .revoke_session(a.authed(revoke("a.b.c")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::InvalidArgument, "NOT_A_PROVIDER_TOKEN")
    );
    let mut old = idp.claims(API);
    old["exp"] = json!(old["iat"].as_i64().unwrap() - 600);
    old["iat"] = json!(old["iat"].as_i64().unwrap() - 1200);
    let expired = sign(&key, json!({}), &old);
    assert_eq!(
        a.session()
            .revoke_session(a.authed(revoke(&expired)))
            .await
            .unwrap()
            .into_inner()
            .revoked,
        0
    );
}

#[tokio::test]
async fn endpoints_left_out_are_discovered_from_the_issuer() {
    let idp = FakeIdp::start().await;
    let liar = FakeIdp::start().await;
    liar.lie_about_issuer("https://someone-else.example/");
    let only_issuer = |name: &str, idp: &FakeIdp, format: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"legacy\"\nissuer = \"{}\"\naudiences = [\"{API}\"]\ntoken_format = \"{format}\"\n",
            idp.issuer()
        )
    };
    let app = Setup::new()
        .toml(
            &[
                only_issuer("auth0", &idp, "both"),
                only_issuer("liar", &liar, "jwt"),
            ]
            .concat(),
        )
        .spawn()
        .await;
    idp.on_userinfo("opaque-d", UserInfoReply::Json(json!({"sub": "auth0|d"})));
    let jwt = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&jwt).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    let r = app.validate("opaque-d").await.unwrap();
    assert_eq!((verdict(&r), r.subject.as_str()), (VALID, "auth0|d"));

    // A discovery document that names another issuer is refused: that provider's keys never
    // load, so its tokens are UNAVAILABLE (not trusted, not INVALID).
    let jwt = sign(&liar.key(KeyKind::Rs256), json!({}), &liar.claims(API));
    let e = app.validate(&jwt).await.unwrap_err();
    assert_eq!(reason(&e), "KEYS_UNAVAILABLE");
    assert_eq!(liar.jwks_hits(), 0);
}

#[tokio::test]
async fn replicas_share_the_jwks_through_the_store_instead_of_asking_the_issuer_again() {
    let redis = crate::support::RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let setup = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .redis(&redis);
    let a = setup.clone().spawn().await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    eventually(Duration::from_secs(5), || async {
        a.validate(&token).await.ok()
    })
    .await;
    assert_eq!(idp.jwks_hits(), 1);

    // A second replica (or a restart) starts from the shared copy.
    let b = setup.spawn().await;
    let r = eventually(Duration::from_secs(5), || async {
        b.validate(&token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    assert_eq!(idp.jwks_hits(), 1, "the second replica asked the issuer");
}

#[tokio::test]
async fn a_hanging_issuer_costs_one_fetch_and_no_more_than_the_callers_deadline() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let claims = idp.claims(API);
    let known = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    eventually(Duration::from_secs(5), || async {
        app.validate(&known).await.ok()
    })
    .await;
    let before = idp.jwks_hits();

    idp.hang_jwks(Duration::from_secs(3));
    let unknown = sign(
        &idp.key(KeyKind::Rs256),
        json!({"kid": "rotated-but-hanging"}),
        &claims,
    );
    let started = std::time::Instant::now();
    let calls = (0..20).map(|_| {
        let mut c = app.session();
        let token = unknown.clone();
        async move {
            let mut req = tonic::Request::new(pb::ValidateSessionRequest {
                token,
                ..Default::default()
            });
            req.set_timeout(Duration::from_millis(400));
            c.validate_session(req).await
        }
    });
    for r in futures::future::join_all(calls).await {
        // tonic reports an expired deadline as CANCELLED on the client side.
        let code = r.unwrap_err().code();
        assert!(
            matches!(code, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
            "{code:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        idp.jwks_hits(),
        before + 1,
        "more than one fetch for one unknown kid"
    );
    // Tokens with known kids never wait for the issuer.
    let t0 = std::time::Instant::now();
    let mut other = claims.clone();
    other["sub"] = json!("auth0|not-cached");
    let fresh = sign(&idp.key(KeyKind::Es256), json!({}), &other);
    assert_eq!(verdict(&app.validate(&fresh).await.unwrap()), VALID);
    assert!(t0.elapsed() < Duration::from_millis(200));
}

// === docs/security.md attacks not covered by the tests above, one test each ===

/// An app with `idp` as its legacy provider, on a clock the test moves.
async fn on_a_manual_clock(
    idp: &FakeIdp,
) -> (crate::support::TestApp, crate::support::ManualClock) {
    let clock = crate::support::ManualClock::new();
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", idp, ""))
        .clock(&clock)
        .spawn()
        .await;
    (app, clock)
}

#[tokio::test]
async fn threat_08_09_expiry_and_leeway_boundaries_on_the_injected_clock() {
    let idp = FakeIdp::start().await;
    let (app, clock) = on_a_manual_clock(&idp).await;
    let mut claims = idp.claims(API);
    let now = {
        use sessiongate::clock::Clock as _;
        clock.now_secs()
    };
    claims["iat"] = json!(now - 600);
    claims["exp"] = json!(now - 29); // leeway is 30 s: still inside
    let inside = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&inside).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    claims["exp"] = json!(now - 30); // exactly at exp + leeway: expired
    let at = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    assert_eq!(
        verdict(&app.validate(&at).await.unwrap()),
        invalid(pb::Reason::Expired)
    );
    // The cached verdict of the first token expires with the clock too.
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        verdict(&app.validate(&inside).await.unwrap()),
        invalid(pb::Reason::Expired)
    );
}

#[tokio::test]
async fn a_cached_provider_verification_serves_both_views_and_is_redone_after_five_minutes() {
    let idp = FakeIdp::start().await;
    let (app, clock) = on_a_manual_clock(&idp).await;
    let mut claims = idp.claims(API);
    claims["jti"] = json!("at-1");
    let token = sign(&idp.key(KeyKind::Es256), json!({}), &claims);
    let first = eventually(Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(
        (verdict(&first), first.source()),
        (VALID, pb::DecisionSource::LocalVerify)
    );
    let with_view = |view: pb::ValidateView| {
        let mut c = app.session();
        let token = token.clone();
        async move {
            c.validate_session(pb::ValidateSessionRequest {
                token,
                view: view.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    // A FULL hit reads the claims again from the token: the same as the first verdict's.
    let full = with_view(pb::ValidateView::Full).await;
    assert_eq!(full.source(), pb::DecisionSource::Cache);
    assert_eq!(full.claims, first.claims);
    assert_eq!(
        full.claims.unwrap().fields["jti"],
        first.claims.clone().unwrap().fields["jti"]
    );
    let basic = with_view(pb::ValidateView::Basic).await;
    assert_eq!(
        (verdict(&basic), basic.source(), basic.subject.as_str()),
        (VALID, pb::DecisionSource::Cache, first.subject.as_str())
    );
    assert!(basic.claims.is_none());
    // Five minutes on, the token is verified again (against the key set as it is then).
    clock.advance(Duration::from_secs(299));
    assert_eq!(
        with_view(pb::ValidateView::Basic).await.source(),
        pb::DecisionSource::Cache
    );
    clock.advance(Duration::from_secs(1));
    let again = with_view(pb::ValidateView::Basic).await;
    assert_eq!(
        (verdict(&again), again.source()),
        (VALID, pb::DecisionSource::LocalVerify)
    );
}

#[tokio::test]
async fn threat_19_an_ecdsa_twin_of_a_revoked_token_is_revoked_too() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .caller_key("revoker")
        .spawn()
        .await;
    let mut claims = idp.claims(API);
    claims["jti"] = json!("malleable-1");
    let token = sign(&idp.key(KeyKind::Es256), json!({}), &claims);
    // (r, s) → (r, n − s): another valid signature over the same bytes.
    let twin = ecdsa_twin(&token);
    assert_ne!(twin, token);
    for t in [&token, &twin] {
        let r = eventually(Duration::from_secs(5), || async {
            app.validate(t).await.ok()
        })
        .await;
        assert_eq!(verdict(&r), VALID, "both encodings verify");
    }
    let revoke = pb::RevokeSessionRequest {
        target: Some(pb::revoke_session_request::Target::LegacyToken(
            token.clone(),
        )),
        ..Default::default()
    };
    app.session()
        .revoke_session(app.authed(revoke))
        .await
        .unwrap();
    // Revocation is keyed by (iss, jti), never by token bytes: the twin is revoked as well.
    assert_eq!(
        verdict(&app.validate(&twin).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );
}

#[tokio::test]
async fn threat_22_24_missing_signatures_and_cache_poisoning() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    let (head, _) = token.rsplit_once('.').unwrap();
    // The verdict cache is keyed by the whole token: the same header and payload with an
    // empty, missing or forged signature are checked afresh and refused.
    for forged in [
        format!("{head}."),
        head.to_owned(),
        format!("{head}.AAAA"),
        format!("{head}.{}", "A".repeat(342)),
    ] {
        let r = app.validate(&forged).await.unwrap();
        assert_eq!(r.verdict(), pb::Verdict::Invalid, "{forged}");
        assert_ne!(r.source(), pb::DecisionSource::Cache);
    }
    assert_eq!(verdict(&app.validate(&token).await.unwrap()), VALID);
}

fn b64json(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn threat_01_07_13_14_17_hostile_headers_and_payloads_never_fetch_and_never_pass() {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let key = idp.key(KeyKind::Rs256);
    let claims = idp.claims(API);
    let good = sign(&key, json!({}), &claims);
    eventually(Duration::from_secs(5), || async {
        app.validate(&good).await.ok()
    })
    .await;
    let real_sig = good.rsplit_once('.').unwrap().1.to_owned();
    let fetches = idp.jwks_hits();
    let body = b64json(&claims);
    let kid = key.kid().to_owned();
    let mut tokens: Vec<(String, String)> = Vec::new();
    // Row 1: every spelling of "no algorithm", with an empty and with a real signature.
    for alg in [
        json!("none"),
        json!("None"),
        json!("NONE"),
        json!("nOnE"),
        Value::Null,
        json!(["RS256"]),
        json!("RS256 "),
        json!(""),
    ] {
        let h = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        tokens.push((format!("alg {alg}"), format!("{}.{body}.", b64json(&h))));
        tokens.push((
            format!("alg {alg}, real sig"),
            format!("{}.{body}.{real_sig}", b64json(&h)),
        ));
    }
    tokens.push((
        "no alg".into(),
        format!("{}.{body}.{real_sig}", b64json(&json!({"kid": kid}))),
    ));
    // Row 7: every form of `crit`, validly signed.
    for crit in [
        json!({"crit": ["exp"]}),
        json!({"crit": []}),
        json!({"crit": ["b64"], "b64": false}),
        json!({"crit": ["foo"], "foo": 1}),
        json!({"crit": "foo"}),
    ] {
        tokens.push((format!("crit {crit}"), sign(&key, crit, &claims)));
    }
    // Row 13: a nested JWT announced by `cty`, and JWE-like shapes.
    tokens.push(("cty JWT".into(), sign(&key, json!({"cty": "JWT"}), &claims)));
    tokens.push(("five parts".into(), format!("{good}.x.y")));
    // Row 14: pathological sizes and depths.
    tokens.push(("8,100 dots".into(), ".".repeat(8_100)));
    let deep = format!(
        "{{\"alg\":\"RS256\",\"a\":{}{}}}",
        "[".repeat(2000),
        "]".repeat(2000)
    );
    tokens.push((
        "deep header".into(),
        format!("{}.{body}.{real_sig}", enc.encode(deep)),
    ));
    // Row 17: not UTF-8 JSON.
    let utf16: Vec<u8> = claims
        .to_string()
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    tokens.push((
        "UTF-16 payload".into(),
        format!(
            "{}.{}.{real_sig}",
            good.split('.').next().unwrap(),
            enc.encode(utf16)
        ),
    ));
    let surrogate =
        claims
            .to_string()
            .replacen("\"sub\":\"auth0|legacy-user-1\"", "\"sub\":\"\\ud800\"", 1);
    tokens.push((
        "lone surrogate".into(),
        format!(
            "{}.{}.{real_sig}",
            good.split('.').next().unwrap(),
            enc.encode(surrogate)
        ),
    ));
    for (name, t) in tokens {
        let r = app
            .validate(&t)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(r.verdict(), pb::Verdict::Invalid, "{name}");
    }
    // 100,000 dots do not even reach the handler: the 64 KiB message cap refuses the call.
    let e = app.validate(&".".repeat(100_000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert_eq!(
        idp.jwks_hits(),
        fetches,
        "a hostile token caused a JWKS fetch"
    );
}

#[tokio::test]
async fn threat_25_26_forged_tokens_cannot_poison_a_victim_and_random_kids_cannot_storm() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider("auth0", "legacy", &idp, ""))
        .spawn()
        .await;
    let victim_claims = {
        let mut c = idp.claims(API);
        c["jti"] = json!("victim-jti");
        c
    };
    let victim = sign(&idp.key(KeyKind::Rs256), json!({}), &victim_claims);
    let r = eventually(Duration::from_secs(5), || async {
        app.validate(&victim).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
    let fetches = idp.jwks_hits();
    // 1,000 forgeries carrying the victim's sub and jti with bad signatures, and 10,000 with
    // random kids, in concurrent batches.
    // ES256: cheap to sign, so 11,000 forgeries take seconds, not minutes.
    let attacker = sessiongate::keys::SigningKey::generate(KeyKind::Es256).unwrap();
    let started = std::time::Instant::now();
    for batch in 0..110 {
        let calls = (0..100).map(|i| {
            let n = batch * 100 + i;
            let header = if n < 1000 {
                json!({"kid": idp.key(KeyKind::Rs256).kid()})
            } else {
                json!({"kid": format!("random-{n}")})
            };
            let t = sign(&attacker, header, &victim_claims);
            let app = &app;
            async move { app.validate(&t).await.unwrap() }
        });
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.verdict(), pb::Verdict::Invalid);
        }
    }
    // At most one fetch per 30 s cooldown (plus the first).
    let allowed = 1 + (started.elapsed().as_secs() / 30) as usize;
    println!(
        "10,000 random kids in {:?}: {} JWKS fetches",
        started.elapsed(),
        idp.jwks_hits() - fetches
    );
    assert!(
        idp.jwks_hits() - fetches <= allowed,
        "{} fetches for 10,000 random kids",
        idp.jwks_hits() - fetches
    );
    assert_eq!(
        verdict(&app.validate(&victim).await.unwrap()),
        VALID,
        "the victim's token was poisoned"
    );
}
