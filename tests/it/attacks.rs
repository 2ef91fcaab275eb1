//! Attacks on the migration path, tried against the real binary and a real redis-server, as
//! an attacker holding a legacy token would try them. Each test here failed before the fix it
//! names (docs/security.md lists them): a revoked token that still migrated, an ECDSA twin
//! that undid a revocation, a NumericDate that wrapped, a retired provider that still minted
//! sessions, a client allow-list that opaque tokens walked around, sessiongate's own
//! credentials sent to the legacy provider.
//!
//! Multi-threaded runtimes: the fake IdP runs in this process and must answer while
//! `Binary::start` blocks on the binary's first log line.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::revoke_session_request::Target;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use sessiongate::keys::KeyKind;
use tonic::transport::Channel;

use crate::support::binary::Binary;
use crate::support::idp::{FakeIdp, UserInfoReply, ecdsa_twin, sign};
use crate::support::{RedisServer, bearer, eventually, reason, sha, validate_as};

const API: &str = "https://api.example.com";
const KEY: &str = "attacks-test-key";

/// The binary on a real Redis, one legacy provider of `idp` configured with `extra`.
struct Gate {
    bin: Binary,
    client: SessionGateServiceClient<Channel>,
    /// Its own Redis, unless the test shares one between binaries.
    _redis: Option<RedisServer>,
}

async fn start(idp: &FakeIdp, extra: &str) -> Gate {
    start_with(idp, "", extra).await
}

/// As [`start`], with more `[migration]` settings.
async fn start_with(idp: &FakeIdp, migration: &str, extra: &str) -> Gate {
    let endpoints = format!(
        "jwks_url = \"{}\"\nuserinfo_url = \"{}\"\n{extra}",
        idp.jwks_url(),
        idp.userinfo_url()
    );
    launch(&config(idp, migration, &endpoints), &[]).await
}

/// The configuration: one caller key, one legacy provider of `idp` with `provider` lines.
fn config(idp: &FakeIdp, migration: &str, provider: &str) -> String {
    format!(
        "[[clients]]\nname = \"attacker-facing-edge\"\nkey_sha256 = \"{}\"\n\
         scopes = [\"validate\", \"migrate\", \"revoke\", \"flow\"]\n\
         [migration]\nper_identity_per_minute = 100\n{migration}\n\
         [[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\n\
         audiences = [\"{API}\"]\nalgorithms = [\"RS256\", \"ES256\"]\n{provider}\n",
        sha(KEY),
        idp.issuer(),
    )
}

/// The binary with `toml`, on a Redis of its own, with more environment variables.
async fn launch(toml: &str, env: &[(&'static str, String)]) -> Gate {
    let redis = RedisServer::start().await;
    let mut vars = vec![("RUST_LOG", "warn,sessiongate::app=info".into())];
    vars.extend_from_slice(env);
    let mut gate = launch_on(toml, &redis, &vars).await;
    gate._redis = Some(redis);
    gate
}

/// The binary with `toml` on `redis`, which outlives it (the test restarts the binary on it).
async fn launch_on(toml: &str, redis: &RedisServer, env: &[(&'static str, String)]) -> Gate {
    let mut vars = vec![("REDIS_URL", redis.url())];
    vars.extend_from_slice(env);
    let bin = Binary::start(toml, &vars);
    let client = SessionGateServiceClient::new(bin.channel().await);
    Gate {
        bin,
        client,
        _redis: None,
    }
}

impl Gate {
    async fn validate(&self, token: &str) -> pb::ValidateSessionResponse {
        self.try_validate(token)
            .await
            .expect("ValidateSession answers")
    }

    /// ValidateSession, the call's error included.
    async fn try_validate(
        &self,
        token: &str,
    ) -> Result<pb::ValidateSessionResponse, tonic::Status> {
        self.client
            .clone()
            .validate_session(validate_as(token, KEY))
            .await
            .map(|r| r.into_inner())
    }

    async fn migrate(&self, token: &str) -> Result<pb::MigrateSessionResponse, tonic::Status> {
        self.client
            .clone()
            .migrate_session(bearer(
                pb::MigrateSessionRequest {
                    legacy_token: token.into(),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// RevokeSession; how many it revoked.
    async fn revoke(&self, target: Target) -> u32 {
        self.client
            .clone()
            .revoke_session(bearer(
                pb::RevokeSessionRequest {
                    target: Some(target),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .expect("RevokeSession succeeds")
            .into_inner()
            .revoked
    }

    /// Waits until the binary has the issuer's keys (the first fetch runs in the background).
    async fn warm(&self, token: &str) {
        eventually(Duration::from_secs(10), || async {
            (self.validate(token).await.verdict() == pb::Verdict::Valid).then_some(())
        })
        .await;
    }
}

fn verdict(r: &pb::ValidateSessionResponse) -> (pb::Verdict, pb::Reason) {
    (r.verdict(), r.reason())
}

fn refused_as_rejected(e: &tonic::Status) {
    assert_eq!(
        (e.code(), reason(e).as_str()),
        (tonic::Code::Unauthenticated, "LEGACY_TOKEN_REJECTED"),
        "{e:?}"
    );
}

/// Migrates `token`, revokes it, and checks that the token and what it became are dead and
/// that it never migrates again — without another UserInfo call.
async fn migrate_then_revoke(t: &Gate, idp: &FakeIdp, token: &str) {
    let minted = t.migrate(token).await.expect("migrates");
    assert_eq!(
        verdict(&t.validate(&minted.session_token).await).0,
        pb::Verdict::Valid
    );
    let n = t.revoke(Target::LegacyToken(token.into())).await;
    assert_eq!(n, 2, "the legacy token and the one session minted from it");
    for native in [&minted.session_token, &minted.session_jwt] {
        assert_eq!(
            verdict(&t.validate(native).await),
            (pb::Verdict::Invalid, pb::Reason::Revoked),
            "what the revoked legacy token became"
        );
    }
    let calls = idp.userinfo_hits();
    // Within the replay window: refused, not replayed.
    refused_as_rejected(&t.migrate(token).await.unwrap_err());
    assert_eq!(
        verdict(&t.validate(token).await),
        (pb::Verdict::Invalid, pb::Reason::Revoked)
    );
    assert_eq!(
        idp.userinfo_hits(),
        calls,
        "UserInfo asked about a revoked token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_legacy_token_never_migrates_and_revoking_it_revokes_its_sessions() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "token_format = \"both\"\npolicy = \"upgrade\"").await;
    let key = idp.key(KeyKind::Rs256);
    let mut claims = idp.claims(API);
    let who = json!({"sub": "auth0|legacy-user-1"});

    // A JWT (with a jti) and an opaque token, each migrated and then revoked.
    claims["jti"] = json!("login-1");
    let jwt = sign(&key, json!({}), &claims);
    idp.on_userinfo(&jwt, UserInfoReply::Json(who.clone()));
    t.warm(&jwt).await;
    migrate_then_revoke(&t, &idp, &jwt).await;
    idp.on_userinfo("legacy-opaque-1", UserInfoReply::Json(who.clone()));
    migrate_then_revoke(&t, &idp, "legacy-opaque-1").await;

    // Revoked first, then presented for migration: refused before UserInfo.
    claims["jti"] = json!("login-2");
    let jwt2 = sign(&key, json!({}), &claims);
    idp.on_userinfo(&jwt2, UserInfoReply::Json(who.clone()));
    idp.on_userinfo("legacy-opaque-2", UserInfoReply::Json(who));
    let calls = idp.userinfo_hits();
    for token in [jwt2.as_str(), "legacy-opaque-2"] {
        assert_eq!(t.revoke(Target::LegacyToken(token.into())).await, 1);
        refused_as_rejected(&t.migrate(token).await.unwrap_err());
    }
    assert_eq!(idp.userinfo_hits(), calls);
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_twin_of_a_revoked_token_is_revoked_too() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "policy = \"upgrade\"").await;
    // No jti: the deny-list can only go by the token's bytes.
    let token = sign(&idp.key(KeyKind::Es256), json!({}), &idp.claims(API));
    let twin = ecdsa_twin(&token);
    assert_ne!(twin, token);
    t.warm(&token).await;
    assert_eq!(
        verdict(&t.validate(&twin).await).0,
        pb::Verdict::Valid,
        "the twin verifies: it is the same token to any ECDSA verifier"
    );
    assert_eq!(t.revoke(Target::LegacyToken(token.clone())).await, 1);
    for presented in [&token, &twin] {
        assert_eq!(
            verdict(&t.validate(presented).await),
            (pb::Verdict::Invalid, pb::Reason::Revoked)
        );
        refused_as_rejected(&t.migrate(presented).await.unwrap_err());
    }
    // And the other way round: the twin revoked, the original denied.
    let mut claims = idp.claims(API);
    claims["sub"] = json!("auth0|another");
    let other = sign(&idp.key(KeyKind::Es256), json!({}), &claims);
    assert_eq!(t.revoke(Target::LegacyToken(ecdsa_twin(&other))).await, 1);
    assert_eq!(
        verdict(&t.validate(&other).await),
        (pb::Verdict::Invalid, pb::Reason::Revoked)
    );
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_dates_that_would_overflow_are_invalid() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "").await;
    let key = idp.key(KeyKind::Rs256);
    t.warm(&sign(&key, json!({}), &idp.claims(API))).await;
    let wrapping = [
        // exp − iat wraps to a small number in two's complement.
        (
            json!(4_611_686_018_427_387_904_i64),
            json!(-4_611_686_018_427_387_905_i64),
        ),
        (json!(i64::MAX), json!(i64::MIN)),
        (json!(9_223_372_036_854_775_807_u64), json!(0)),
        (json!(1e300), json!(0)),
    ];
    for (exp, iat) in wrapping {
        let mut claims = idp.claims(API);
        claims["exp"] = exp.clone();
        claims["iat"] = iat.clone();
        let token = sign(&key, json!({}), &claims);
        assert_eq!(
            verdict(&t.validate(&token).await).0,
            pb::Verdict::Invalid,
            "exp {exp}, iat {iat}"
        );
        refused_as_rejected(&t.migrate(&token).await.unwrap_err());
    }
    assert_eq!(idp.userinfo_hits(), 0);
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_provider_migrates_nothing() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "token_format = \"both\"\npolicy = \"reject\"").await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    idp.on_userinfo(
        &token,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1"})),
    );
    idp.on_userinfo(
        "legacy-opaque",
        UserInfoReply::Json(json!({"sub": "auth0|x"})),
    );
    eventually(Duration::from_secs(10), || async {
        (t.validate(&token).await.reason() == pb::Reason::LegacyRetired).then_some(())
    })
    .await;
    for presented in [token.as_str(), "legacy-opaque"] {
        let e = t.migrate(presented).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (tonic::Code::FailedPrecondition, "LEGACY_RETIRED")
        );
    }
    assert_eq!(idp.userinfo_hits(), 0);
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessiongates_own_credentials_and_unprintable_strings_never_reach_the_provider() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "token_format = \"both\"\npolicy = \"upgrade\"").await;
    let native = format!("sgs_{}", "A".repeat(43));
    for hostile in [
        "sgk_a-caller-api-key-of-this-deployment",
        native.as_str(),
        "sgs_short",
        "opaque with spaces",
        "opaque\u{7f}del",
        "opaqué",
    ] {
        assert_eq!(
            verdict(&t.validate(hostile).await).0,
            pb::Verdict::Invalid,
            "{hostile:?}"
        );
        let e = t.migrate(hostile).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{hostile:?}");
    }
    assert_eq!(idp.userinfo_hits(), 0);
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_allow_list_that_opaque_tokens_would_bypass_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiongate.toml");
    std::fs::write(
        &path,
        "[[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"https://tenant.example.com/\"\n\
         audiences = [\"https://api.example.com\"]\ntoken_format = \"both\"\nallowed_client_ids = [\"web\"]\n",
    )
    .unwrap();
    // `check-config` runs the same checks as start-up and exits either way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .env_clear()
        .arg("check-config")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("providers[0].allowed_client_ids") && stderr.contains("token_format"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_opaque_tokens_cost_the_legacy_provider_almost_nothing() {
    let idp = FakeIdp::start().await;
    let t = start(
        &idp,
        "token_format = \"opaque\"\nuserinfo_budget_per_second = 1\nuserinfo_budget_burst = 30",
    )
    .await;
    let started = std::time::Instant::now();

    // 50 concurrent validations of one unknown string: one UserInfo call.
    let all = futures::future::join_all((0..50).map(|_| t.validate("junk-opaque-1"))).await;
    assert!(
        all.iter()
            .all(|r| verdict(r) == (pb::Verdict::Invalid, pb::Reason::NotFound))
    );
    assert_eq!(idp.userinfo_hits(), 1, "UserInfo calls for one junk string");
    t.validate("junk-opaque-1").await;
    assert_eq!(idp.userinfo_hits(), 1, "the refusal is cached");

    // Answers that are neither 200 nor 401 are remembered too (as UNAVAILABLE: the
    // provider's fault, never INVALID).
    idp.on_userinfo("junk-400", UserInfoReply::Status(400));
    idp.on_userinfo("junk-404", UserInfoReply::Status(404));
    idp.on_userinfo(
        "junk-nosub",
        UserInfoReply::Json(json!({"email": "x@example.com"})),
    );
    idp.on_userinfo("junk-html", UserInfoReply::NotJson);
    for junk in ["junk-400", "junk-404", "junk-nosub", "junk-html"] {
        for _ in 0..3 {
            let e = t.try_validate(junk).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unavailable, "{junk}");
        }
    }
    assert_eq!(idp.userinfo_hits(), 5, "one call per distinct string");

    // Distinct junk strings spend the provider's budget, then are refused without a call.
    let mut exhausted = 0;
    for i in 0..60 {
        match t.try_validate(&format!("junk-distinct-{i}")).await {
            Ok(r) => assert_eq!(verdict(&r), (pb::Verdict::Invalid, pb::Reason::NotFound)),
            Err(e) => {
                assert_eq!(
                    (e.code(), reason(&e).as_str()),
                    (tonic::Code::ResourceExhausted, "UPSTREAM_BUDGET_EXHAUSTED")
                );
                assert!(e.metadata().get("retry-after").is_some());
                exhausted += 1;
            }
        }
    }
    let refill = started.elapsed().as_secs() as usize + 1;
    assert!(exhausted >= 60 - 25 - refill, "{exhausted} refused");
    assert!(
        idp.userinfo_hits() <= 30 + refill,
        "{} UserInfo calls past a burst of 30",
        idp.userinfo_hits()
    );
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_shape_and_a_budget_charged_for_real_tokens_keep_junk_from_real_users() {
    let idp = FakeIdp::start().await;
    let t = start_with(
        &idp,
        "per_caller_per_minute = 3",
        "token_format = \"opaque\"\nopaque_token_prefix = \"lt_\"\n\
         opaque_token_min_length = 20\nopaque_token_alphabet = \"base64url\"",
    )
    .await;
    let shaped = |s: &str| format!("lt_{s:_<20}");
    for wrong in [
        "junk",
        "lt_short",
        "xx_aaaaaaaaaaaaaaaaaaaaaaa",
        "lt_aaaaaaaaaaaaa!aaaaaaaaa",
    ] {
        assert_eq!(
            verdict(&t.validate(wrong).await),
            (pb::Verdict::Invalid, pb::Reason::Malformed),
            "{wrong}"
        );
        refused_as_rejected(&t.migrate(wrong).await.unwrap_err());
    }
    assert_eq!(
        idp.userinfo_hits(),
        0,
        "tokens of the wrong shape reach no provider"
    );

    // Ten junk migrations of the right shape (UserInfo refuses them): refused as such, and
    // the caller's budget of three a minute is untouched...
    for i in 0..10 {
        refused_as_rejected(&t.migrate(&shaped(&format!("junk{i}"))).await.unwrap_err());
    }
    assert_eq!(idp.userinfo_hits(), 10);
    // ...so its real users still migrate, up to the budget.
    for i in 0..4 {
        let real = shaped(&format!("real{i}"));
        idp.on_userinfo(
            &real,
            UserInfoReply::Json(json!({"sub": format!("auth0|user-{i}")})),
        );
        let r = t.migrate(&real).await;
        if i < 3 {
            r.expect("a real user migrates");
        } else {
            let e = r.unwrap_err();
            assert_eq!(
                (e.code(), reason(&e).as_str()),
                (tonic::Code::ResourceExhausted, "RATE_LIMITED")
            );
        }
    }
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_named_twice_at_any_depth_is_invalid() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "").await;
    let key = idp.key(KeyKind::Rs256);
    t.warm(&sign(&key, json!({}), &idp.claims(API))).await;
    let good = idp.claims(API).to_string();
    let body = &good[1..good.len() - 1];
    for dup in [
        format!(r#"{{{body},"org":{{"role":"user","role":"admin"}}}}"#),
        format!(r#"{{{body},"groups":[{{"id":"a","id":"b"}}]}}"#),
        format!(r#"{{{body},"sub":"auth0|admin"}}"#),
    ] {
        let header = URL_SAFE_NO_PAD
            .encode(json!({"alg": "RS256", "kid": key.kid(), "typ": "JWT"}).to_string());
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&dup));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key.encoding_key(), key.algorithm())
            .unwrap();
        let token = format!("{input}.{sig}");
        assert_eq!(
            verdict(&t.validate(&token).await),
            (pb::Verdict::Invalid, pb::Reason::Malformed),
            "{dup}"
        );
    }
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_read_no_more_than_the_api_does() {
    let idp = FakeIdp::start().await;
    let t = start(&idp, "").await;
    let channel = t.bin.channel().await;
    let big = "x".repeat(100 * 1024);
    let e = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: big.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::FileByFilename(
                big,
            ),
        ),
    };
    // Refused: the call fails, or the stream ends without an answer to the oversized
    // request (tonic's reflection ends the stream on a request it cannot decode). Without the
    // limit the request is read and answered ("file not found").
    let answered = match reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
    {
        Err(_) => false,
        Ok(mut answers) => matches!(answers.get_mut().message().await, Ok(Some(_))),
    };
    assert!(!answered, "reflection read a 100 KiB request");
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_come_from_the_configuration_only_and_discovered_endpoints_stay_on_the_issuers_host()
 {
    // A canary where a proxy variable points: it must never see a connection.
    let canary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    canary.set_nonblocking(true).unwrap();
    let proxy = format!("http://{}", canary.local_addr().unwrap());
    let idp = FakeIdp::start().await;
    // No endpoints configured: both are discovered.
    let toml = config(&idp, "", "");
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));

    // Discovery through proxy variables that point at the canary: the binary goes direct.
    let proxied: Vec<(&'static str, String)> =
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy"]
            .into_iter()
            .map(|v| (v, proxy.clone()))
            .collect();
    let t = launch(&toml, &proxied).await;
    t.warm(&token).await;
    assert!(
        canary.accept().is_err(),
        "a request went through the proxy named by the environment"
    );
    t.bin.stop();

    // A proxy configured on purpose is used (the canary sees the binary's first fetch).
    let t = launch(
        &format!("[server]\nupstream_proxy = \"{proxy}\"\n{toml}"),
        &[],
    )
    .await;
    eventually(Duration::from_secs(10), || async {
        canary.accept().ok().map(|_| ())
    })
    .await;
    t.bin.stop();

    // The discovery document points the keys at another host (`localhost` is the same
    // server under another name: without the check the token would verify).
    idp.point_endpoints_at(&format!("localhost:{}", idp.addr.port()));
    let t = launch(&toml, &[]).await;
    // Once the binary has read the document and refused it, the token stays unverifiable.
    eventually(Duration::from_secs(10), || async {
        t.bin
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("not on the issuer's host"))
            .then_some(())
    })
    .await;
    for _ in 0..3 {
        match t.try_validate(&token).await {
            Ok(r) => assert_ne!(r.verdict(), pb::Verdict::Valid),
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable),
        }
    }
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_re_pointed_at_another_issuer_never_inherits_the_old_issuers_keys() {
    let old = FakeIdp::start().await;
    let new = FakeIdp::start().await;
    // The new issuer cannot be reached: all the binary could use is what the store holds.
    new.set_status(503);
    let redis = RedisServer::start().await;
    let provider = |idp: &FakeIdp| {
        format!(
            "[[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\n\
             jwks_url = \"{}\"\naudiences = [\"{API}\"]\nalgorithms = [\"RS256\"]\n\
             [[clients]]\nname = \"edge\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n",
            idp.issuer(),
            idp.jwks_url(),
            sha(KEY)
        )
    };
    let env = [("RUST_LOG", "warn,sessiongate::app=info".into())];
    // A replica of the old configuration shares the old issuer's keys through Redis.
    let key = old.key(KeyKind::Rs256);
    let t = launch_on(&provider(&old), &redis, &env).await;
    t.warm(&sign(&key, json!({}), &old.claims(API))).await;
    t.bin.stop();

    // Same name, another issuer: a token claiming the new issuer, signed with the old one's
    // key, must not verify.
    let t = launch_on(&provider(&new), &redis, &env).await;
    let mut claims = old.claims(API);
    claims["iss"] = json!(new.issuer());
    let forged = sign(&key, json!({}), &claims);
    for _ in 0..3 {
        match t.try_validate(&forged).await {
            Ok(r) => assert_ne!(r.verdict(), pb::Verdict::Valid),
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable),
        }
    }
    t.bin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_re_pointed_at_another_issuer_never_inherits_the_old_issuers_users() {
    let old = FakeIdp::start().await;
    let new = FakeIdp::start().await;
    let redis = RedisServer::start().await;
    let env = [("RUST_LOG", "warn,sessiongate::app=info".into())];
    // Two links as a version that keyed identities by provider name wrote them: one is used
    // before the provider is re-pointed, one only after.
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (sub, user_id) in [("auth0|early", "user-early"), ("auth0|late", "user-late")] {
        let record = json!({"uid": user_id, "li": [{"p": "auth0", "s": sub}], "ca": 0});
        let _: () = ::redis::pipe()
            .set(
                format!("sg:test:{{i:{}}}:user", sha(&format!("auth0\0{sub}"))),
                user_id,
            )
            .set(format!("sg:test:{{u:{user_id}}}:user"), record.to_string())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let token_of = |idp: &FakeIdp, sub: &str| {
        let mut claims = idp.claims(API);
        claims["sub"] = json!(sub);
        let token = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
        idp.on_userinfo(&token, UserInfoReply::Json(json!({"sub": sub})));
        token
    };
    let endpoints = |idp: &FakeIdp| {
        format!(
            "jwks_url = \"{}\"\nuserinfo_url = \"{}\"",
            idp.jwks_url(),
            idp.userinfo_url()
        )
    };

    let t = launch_on(&config(&old, "", &endpoints(&old)), &redis, &env).await;
    let first = token_of(&old, "auth0|legacy-user-1");
    t.warm(&first).await;
    let migrated = t.migrate(&first).await.expect("migrates");
    assert!(migrated.user_created);
    assert_eq!(t.validate(&first).await.user_id, migrated.user_id);
    // An old link is honoured while the name still means the issuer it was made under.
    let early = token_of(&old, "auth0|early");
    assert_eq!(t.validate(&early).await.user_id, "user-early");
    let again = t.migrate(&early).await.expect("migrates");
    assert_eq!(
        (again.user_id.as_str(), again.user_created),
        ("user-early", false)
    );
    t.bin.stop();

    // The same provider name, re-pointed at another issuer that happens to use the same
    // subjects: none of the old issuer's users is theirs.
    let t = launch_on(&config(&new, "", &endpoints(&new)), &redis, &env).await;
    let twin = token_of(&new, "auth0|legacy-user-1");
    t.warm(&twin).await;
    assert_eq!(t.validate(&twin).await.user_id, "", "not migrated yet");
    let theirs = t.migrate(&twin).await.expect("migrates");
    assert!(theirs.user_created);
    assert_ne!(theirs.user_id, migrated.user_id);
    assert_eq!(t.validate(&twin).await.user_id, theirs.user_id);
    for (sub, old_user) in [("auth0|early", "user-early"), ("auth0|late", "user-late")] {
        let token = token_of(&new, sub);
        assert_eq!(t.validate(&token).await.user_id, "", "{sub}");
        let theirs = t.migrate(&token).await.expect("migrates");
        assert_ne!(theirs.user_id, old_user, "{sub}");
        assert!(theirs.user_created, "{sub}");
    }
    let log = t.bin.stop();
    assert!(
        log.contains("a link made when this provider name stood for another issuer is ignored"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_or_kill_switch_whose_message_was_lost_still_reaches_the_replica() {
    let idp = FakeIdp::start().await;
    let redis = RedisServer::start().await;
    let provider = format!(
        "jwks_url = \"{}\"\nuserinfo_url = \"{}\"\n\
         [redis]\nresync_seconds = 1\n[[flows]]\nname = \"login\"\npercentage = 100\n",
        idp.jwks_url(),
        idp.userinfo_url()
    );
    let t = launch_on(&config(&idp, "", &provider), &redis, &[]).await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    idp.on_userinfo(
        &token,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1"})),
    );
    t.warm(&token).await;
    let minted = t.migrate(&token).await.expect("migrates");
    let sid = minted.session.expect("a session").session_id;
    let resolve = || async {
        t.client
            .clone()
            .resolve_flow(bearer(
                pb::ResolveFlowRequest {
                    flow: "login".into(),
                    device_id: "device-1".into(),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .expect("ResolveFlow answers")
            .into_inner()
    };
    assert_eq!(
        verdict(&t.validate(&minted.session_jwt).await).0,
        pb::Verdict::Valid
    );
    assert_eq!(resolve().await.flow(), pb::Flow::New);

    // Another replica revoked the session and set the kill switch, and both announcements
    // were lost (a failed publish, a partition): only the store has them.
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let _: () = ::redis::pipe()
        .zadd("sg:test:revoked", &sid, until)
        .set(
            format!("sg:test:flow:{}", sha("login")),
            r#"{"kill_switch":true,"revision":1}"#,
        )
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        (verdict(&t.validate(&minted.session_jwt).await)
            == (pb::Verdict::Invalid, pb::Reason::Revoked))
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (resolve().await.flow() == pb::Flow::Legacy).then_some(())
    })
    .await;
    t.bin.stop();
}
