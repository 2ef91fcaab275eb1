//! OpenID Connect Back-Channel Logout from a legacy provider: a logout token posted to
//! `/backchannel-logout/<provider>` revokes the provider's tokens of that login issued up to
//! the logout — and, by the provider's setting, the sessions migrated from that identity — on
//! every replica; a forged, malformed or replayed logout token changes nothing.

use std::time::Duration;

use serde_json::{Value, json};
use sessiongate::grpc::pb;
use sessiongate::keys::KeyKind;
use sessiongate::session::providers::BACKCHANNEL_LOGOUT_EVENT;

use crate::migrate::{API, upgrade_toml};
use crate::support::RedisServer;
use crate::support::idp::{FakeIdp, UserInfoReply, sign};
use crate::support::{Setup, TestApp, eventually};

const CLIENT_ID: &str = "fleet-client";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn toml(idp: &FakeIdp, revokes: &str) -> String {
    upgrade_toml(
        idp,
        &format!(
            "token_format = \"jwt\"\nbackchannel_logout_audiences = [\"{CLIENT_ID}\"]\nbackchannel_logout_revokes = \"{revokes}\""
        ),
    )
}

/// An access token of `sub` (in OP session `sid`), issued `iat`.
fn access(idp: &FakeIdp, sub: &str, sid: &str, iat: i64) -> String {
    let mut c = idp.claims(API);
    c["sub"] = json!(sub);
    c["sid"] = json!(sid);
    c["iat"] = json!(iat);
    c["jti"] = json!(format!("at-{sub}-{sid}-{iat}"));
    sign(&idp.key(KeyKind::Rs256), json!({}), &c)
}

/// Logout token claims as the specification shapes them.
fn logout_claims(idp: &FakeIdp, sub: Option<&str>, sid: Option<&str>, jti: &str) -> Value {
    let mut c = json!({
        "iss": idp.issuer(),
        "aud": CLIENT_ID,
        "iat": now(),
        "exp": now() + 120,
        "jti": jti,
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    });
    if let Some(s) = sub {
        c["sub"] = json!(s);
    }
    if let Some(s) = sid {
        c["sid"] = json!(s);
    }
    c
}

fn logout_token(idp: &FakeIdp, claims: &Value) -> String {
    sign(
        &idp.key(KeyKind::Rs256),
        json!({"typ": "logout+jwt"}),
        claims,
    )
}

async fn post(app: &TestApp, provider: &str, content_type: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::builder()
        .timeout(crate::support::CALL_DEADLINE)
        .build()
        .unwrap()
        .post(format!(
            "http://{}/backchannel-logout/{provider}",
            app.http_addr
        ))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn logout(app: &TestApp, token: &str) -> (u16, String) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    post(app, "auth0", "application/x-www-form-urlencoded", body).await
}

async fn verdict(app: &TestApp, token: &str) -> (i32, i32) {
    let r = app.validate(token).await.unwrap();
    (r.verdict, r.reason)
}

const VALID: (i32, i32) = (pb::Verdict::Valid as i32, pb::Reason::Unspecified as i32);
const REVOKED: (i32, i32) = (pb::Verdict::Invalid as i32, pb::Reason::Revoked as i32);

#[tokio::test]
async fn a_logout_revokes_the_logins_tokens_and_migrated_sessions_and_nothing_else() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&toml(&idp, "all"))
        .caller_key("backchannel-test-key")
        .spawn()
        .await;
    let t0 = now() - 60;
    let alice = access(&idp, "auth0|alice", "op-1", t0);
    let bob = access(&idp, "auth0|bob", "op-2", t0);
    idp.on_userinfo(&alice, UserInfoReply::Json(json!({"sub": "auth0|alice"})));
    let migrated = eventually(Duration::from_secs(5), || async {
        app.migrate(&alice).await.ok()
    })
    .await;
    assert_eq!(verdict(&app, &alice).await, VALID);
    assert_eq!(verdict(&app, &migrated.session_token).await, VALID);
    // A native session of alice's that did not come from this provider stays.
    let native = app
        .session()
        .create_session(app.authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::UserId(
                migrated.user_id.clone(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    let token = logout_token(
        &idp,
        &logout_claims(&idp, Some("auth0|alice"), None, "lo-1"),
    );
    assert_eq!(logout(&app, &token).await.0, 200);
    assert_eq!(verdict(&app, &alice).await, REVOKED, "the legacy token");
    assert_eq!(
        verdict(&app, &migrated.session_token).await,
        REVOKED,
        "the session migrated from it (revokes = all)"
    );
    assert_eq!(verdict(&app, &migrated.session_jwt).await, REVOKED);
    assert_eq!(
        verdict(&app, &native.session_token).await,
        VALID,
        "a native login"
    );
    assert_eq!(verdict(&app, &bob).await, VALID, "another user");
    // Migrating the logged-out token is refused too.
    assert_eq!(
        app.migrate(&alice).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // Alice logs in again after the logout: her new token is good, and a replay of the logout
    // token changes nothing.
    let again = access(&idp, "auth0|alice", "op-3", now() + 1);
    assert_eq!(verdict(&app, &again).await, VALID);
    assert_eq!(logout(&app, &token).await.0, 200, "a redelivery is taken");
    assert_eq!(
        verdict(&app, &again).await,
        VALID,
        "a replay changes nothing"
    );

    // By OP session: only that session's tokens.
    let s4 = access(&idp, "auth0|carol", "op-4", t0);
    let s5 = access(&idp, "auth0|carol", "op-5", t0);
    let by_sid = logout_token(&idp, &logout_claims(&idp, None, Some("op-4"), "lo-2"));
    assert_eq!(logout(&app, &by_sid).await.0, 200);
    assert_eq!(verdict(&app, &s4).await, REVOKED);
    assert_eq!(verdict(&app, &s5).await, VALID);
}

/// Each way a logout token can be wrong is a 400 and revokes nothing.
#[tokio::test]
async fn forged_and_malformed_logout_tokens_change_nothing() {
    let idp = FakeIdp::start().await;
    let stranger = FakeIdp::start().await;
    let app = Setup::new().toml(&toml(&idp, "legacy")).spawn().await;
    let dave = access(&idp, "auth0|dave", "op-9", now() - 60);
    assert_eq!(verdict(&app, &dave).await, VALID);
    let good = || logout_claims(&idp, Some("auth0|dave"), None, "lo-x");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good();
        f(&mut c);
        logout_token(&idp, &c)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "signed by another key",
            sign(
                &stranger.key(KeyKind::Rs256),
                json!({"typ": "logout+jwt"}),
                &good(),
            ),
        ),
        (
            "another audience",
            with(&|c| c["aud"] = json!("someone-else")),
        ),
        (
            "another issuer",
            with(&|c| c["iss"] = json!("https://evil.example/")),
        ),
        ("a nonce (an ID token)", with(&|c| c["nonce"] = json!("n"))),
        (
            "no events",
            with(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
        ),
        (
            "the event not an object",
            with(&|c| c["events"] = json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" })),
        ),
        (
            "neither sub nor sid",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        (
            "no jti",
            with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "expired",
            with(&|c| {
                c["iat"] = json!(now() - 4_000);
                c["exp"] = json!(now() - 3_000);
            }),
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 3_600)),
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("sub not a string", with(&|c| c["sub"] = json!(42))),
        (
            "an access token's typ",
            sign(&idp.key(KeyKind::Rs256), json!({}), &good()),
        ),
        ("alg none", {
            let t = logout_token(&idp, &good());
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            use base64::Engine as _;
            parts[0] = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","typ":"logout+jwt"}"#);
            format!("{}.{}.", parts[0], parts[1])
        }),
        ("not a JWT", "not-a-jwt".into()),
    ];
    for (what, token) in &cases {
        let (status, body) = logout(&app, token).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body.contains("invalid_request"), "{what}: {body}");
    }
    assert_eq!(verdict(&app, &dave).await, VALID, "nothing was revoked");

    // The request itself.
    let token = logout_token(&idp, &good());
    let form = format!("logout_token={token}");
    assert_eq!(
        post(&app, "auth0", "application/json", form.clone())
            .await
            .0,
        400
    );
    assert_eq!(
        post(
            &app,
            "nobody",
            "application/x-www-form-urlencoded",
            form.clone()
        )
        .await
        .0,
        404
    );
    assert_eq!(
        post(
            &app,
            "auth0",
            "application/x-www-form-urlencoded",
            format!("{form}&logout_token={token}")
        )
        .await
        .0,
        400,
        "two tokens"
    );
    let huge = format!("logout_token={}", "a".repeat(20_000));
    assert_eq!(
        post(&app, "auth0", "application/x-www-form-urlencoded", huge)
            .await
            .0,
        413
    );
    let get = reqwest::get(format!("http://{}/backchannel-logout/auth0", app.http_addr))
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(verdict(&app, &dave).await, VALID, "still nothing revoked");
    // The genuine one, at last.
    assert_eq!(logout(&app, &token).await.0, 200);
    assert_eq!(verdict(&app, &dave).await, REVOKED);
}

/// Two replicas on one Redis: a logout taken by one is seen by the other within a second,
/// and a replica started afterwards loads it.
#[tokio::test]
async fn a_logout_reaches_every_replica_within_a_second() {
    let redis = RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let a = Setup::new()
        .toml(&toml(&idp, "legacy"))
        .redis(&redis)
        .spawn()
        .await;
    let b = Setup::new()
        .toml(&toml(&idp, "legacy"))
        .redis(&redis)
        .spawn()
        .await;
    let erin = access(&idp, "auth0|erin", "op-7", now() - 60);
    assert_eq!(verdict(&b, &erin).await, VALID, "cached on B");
    let token = logout_token(&idp, &logout_claims(&idp, Some("auth0|erin"), None, "lo-r"));
    let r = logout(&a, &token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(1), || async {
        (verdict(&b, &erin).await == REVOKED).then_some(())
    })
    .await;
    println!(
        "back-channel logout visible on replica B after {:?}",
        started.elapsed()
    );
    let c = Setup::new()
        .toml(&toml(&idp, "legacy"))
        .redis(&redis)
        .spawn()
        .await;
    assert_eq!(verdict(&c, &erin).await, REVOKED, "a replica started later");
    // The replay on another replica is recognised too.
    assert_eq!(logout(&b, &token).await.0, 200);
}

/// An opaque token the provider vouched for (its answer cached) is revoked by a logout of its
/// user too, without waiting for the cached answer to expire.
#[tokio::test]
async fn a_logout_revokes_cached_opaque_tokens_of_the_user() {
    let idp = FakeIdp::start().await;
    let toml = upgrade_toml(
        &idp,
        &format!("token_format = \"both\"\nbackchannel_logout_audiences = [\"{CLIENT_ID}\"]"),
    );
    let app = Setup::new().toml(&toml).spawn().await;
    let opaque = "opaque-olive-0123456789abcdef";
    idp.on_userinfo(opaque, UserInfoReply::Json(json!({"sub": "auth0|olive"})));
    assert_eq!(verdict(&app, opaque).await, VALID);
    let token = logout_token(
        &idp,
        &logout_claims(&idp, Some("auth0|olive"), None, "lo-o"),
    );
    let r = logout(&app, &token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(verdict(&app, opaque).await, REVOKED);
    assert_eq!(
        idp.userinfo_hits(),
        1,
        "decided without asking the provider again"
    );
}
