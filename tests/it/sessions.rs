//! Native sessions over gRPC: CreateSession, ValidateSession, RevokeSession — with a real
//! redis-server where sharing or outages matter.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sessiongate::grpc::pb;
use sessiongate::keys::{KeyKind, SigningKey};
use tonic::Request;

use crate::support::{ManualClock, RedisServer, Setup, TestApp, eventually, reason};

const ISSUE_KEY: &str = "sessions-test-key";

/// A signing key on disk, so that several replicas (and the test) share it.
struct KeyFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pem: String,
}

impl KeyFile {
    fn new(kind: KeyKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pem = sessiongate::keys::signing::generate_pem(kind).unwrap();
        let path = dir.path().join("signing.pem");
        std::fs::write(&path, &pem).unwrap();
        Self {
            _dir: dir,
            path,
            pem,
        }
    }

    fn key(&self) -> SigningKey {
        SigningKey::from_pem(self.pem.as_bytes(), &self.path).unwrap()
    }
}

fn setup(key: &KeyFile) -> Setup {
    let hash = sessiongate::store::keys::Digest::of(ISSUE_KEY.as_bytes()).to_hex();
    Setup::new().toml(&format!(
        "[native]\nsigning_keys = [\"{}\"]\n\
         [[clients]]\nname = \"login\"\nkey_sha256 = \"{hash}\"\nscopes = [\"validate\", \"issue\", \"revoke\"]\n",
        key.path.display()
    ))
}

/// `setup`, with store calls failing after 300 ms: for outages.
fn quick_to_fail(key: &KeyFile) -> Setup {
    setup(key).toml(&format!(
        "{}[redis]\ncommand_timeout_ms = 300\n",
        setup(key).toml
    ))
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {ISSUE_KEY}").parse().unwrap(),
    );
    r
}

async fn create(app: &TestApp, minutes: u32) -> pb::CreateSessionResponse {
    app.session()
        .create_session(authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                email: "ada@example.com".into(),
                email_verified: true,
                name: "Ada".into(),
            })),
            authentication_factors: vec![pb::AuthenticationFactor {
                r#type: "passkey".into(),
                ..Default::default()
            }],
            session_duration_minutes: minutes,
            session_custom_claims: Some(prost_types::Struct {
                fields: [(
                    "tier".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("gold".into())),
                    },
                )]
                .into(),
            }),
            client: Some(pb::ClientInfo {
                ip_address: "192.0.2.1".into(),
                user_agent: "test".into(),
            }),
            ..Default::default()
        }))
        .await
        .expect("CreateSession")
        .into_inner()
}

async fn validate(
    app: &TestApp,
    token: &str,
) -> Result<pb::ValidateSessionResponse, tonic::Status> {
    validate_with(
        app,
        pb::ValidateSessionRequest {
            token: token.into(),
            ..Default::default()
        },
    )
    .await
}

async fn validate_with(
    app: &TestApp,
    req: pb::ValidateSessionRequest,
) -> Result<pb::ValidateSessionResponse, tonic::Status> {
    app.session()
        .validate_session(authed(req))
        .await
        .map(|r| r.into_inner())
}

fn verdict(r: &pb::ValidateSessionResponse) -> (pb::Verdict, pb::Reason) {
    (r.verdict(), r.reason())
}

const VALID: (pb::Verdict, pb::Reason) = (pb::Verdict::Valid, pb::Reason::Unspecified);

fn invalid(reason: pb::Reason) -> (pb::Verdict, pb::Reason) {
    (pb::Verdict::Invalid, reason)
}

#[tokio::test]
async fn create_then_validate_token_and_jwt() {
    let key = KeyFile::new(KeyKind::Rs256);
    let app = setup(&key).spawn().await;
    let created = create(&app, 60).await;
    assert!(created.user_created);
    assert!(created.user_id.starts_with("user-test-"));
    assert!(created.session_token.starts_with("sgs_"));
    let session = created.session.clone().unwrap();
    assert!(session.session_id.starts_with("session-test-"));

    // The opaque token: VALID from the store, with the session and a fresh JWT.
    let r = validate(&app, &created.session_token).await.unwrap();
    assert_eq!(verdict(&r), VALID);
    assert_eq!(r.origin(), pb::Origin::New);
    assert_eq!(r.provider, "native");
    assert_eq!(r.source(), pb::DecisionSource::Store);
    assert_eq!(r.user_id, created.user_id);
    assert_eq!(r.session.as_ref().unwrap().session_id, session.session_id);
    assert_eq!(
        r.session
            .as_ref()
            .unwrap()
            .attributes
            .as_ref()
            .unwrap()
            .ip_address,
        "192.0.2.1"
    );
    assert!(!r.session_jwt.is_empty());
    assert_eq!(r.action(), pb::Action::None);

    // The JWT: verified locally, then from the in-process cache.
    let r = validate(&app, &created.session_jwt).await.unwrap();
    assert_eq!(verdict(&r), VALID);
    assert_eq!(r.source(), pb::DecisionSource::LocalVerify);
    assert_eq!(r.subject, created.user_id);
    let claims = r.claims.as_ref().unwrap();
    assert!(claims.fields.contains_key("sid") && claims.fields.contains_key("session"));
    let s = r.session.as_ref().unwrap();
    assert_eq!(s.session_id, session.session_id);
    assert_eq!(s.authentication_factors[0].r#type, "passkey");
    assert!(
        s.custom_claims
            .as_ref()
            .unwrap()
            .fields
            .contains_key("tier")
    );
    let r = validate(&app, &created.session_jwt).await.unwrap();
    assert_eq!(verdict(&r), VALID);
    assert_eq!(r.source(), pb::DecisionSource::Cache);

    // The JWT has the claims of a native session JWT (README, "Native sessions").
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(created.session_jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["iss"], "urn:sessiongate:test");
    assert_eq!(payload["sub"], created.user_id);
    assert_eq!(payload["sid"], session.session_id);
    assert_eq!(payload["tier"], "gold");
    assert_eq!(
        payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(),
        300
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(created.session_jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], key.key().kid());

    // An existing user gets another session.
    let again = app
        .session()
        .create_session(authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::UserId(
                created.user_id.clone(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.user_created);
    assert_eq!(again.user.unwrap().email, "ada@example.com");
}

#[tokio::test]
async fn jwks_publishes_the_public_key_only() {
    let key = KeyFile::new(KeyKind::Es256);
    let app = setup(&key).spawn().await;
    let (status, body) = app.http_get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let jwks: Value = serde_json::from_str(&body).unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(k["kid"], key.key().kid());
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert!(k.get("d").is_none(), "private key published: {k}");
}

#[tokio::test]
async fn create_session_refuses_bad_requests() {
    let key = KeyFile::new(KeyKind::Es256);
    let app = setup(&key).spawn().await;
    let mut c = app.session();
    let base = || pb::CreateSessionRequest {
        who: Some(pb::create_session_request::Who::NewUser(
            pb::NewUser::default(),
        )),
        ..Default::default()
    };
    let cases: Vec<(pb::CreateSessionRequest, tonic::Code, &str)> = vec![
        (
            pb::CreateSessionRequest::default(),
            tonic::Code::InvalidArgument,
            "WHO_REQUIRED",
        ),
        (
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::UserId(
                    "user-test-nobody".into(),
                )),
                ..Default::default()
            },
            tonic::Code::NotFound,
            "USER_NOT_FOUND",
        ),
        (
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::UserId(
                    "user-live-0000".into(),
                )),
                ..Default::default()
            },
            tonic::Code::NotFound,
            "USER_NOT_FOUND",
        ),
        (
            pb::CreateSessionRequest {
                session_duration_minutes: 4,
                ..base()
            },
            tonic::Code::InvalidArgument,
            "SESSION_DURATION_OUT_OF_RANGE",
        ),
        (
            pb::CreateSessionRequest {
                session_duration_minutes: 527_041,
                ..base()
            },
            tonic::Code::InvalidArgument,
            "SESSION_DURATION_OUT_OF_RANGE",
        ),
        (
            pb::CreateSessionRequest {
                session_custom_claims: Some(prost_types::Struct {
                    fields: [("sub".to_string(), prost_types::Value::default())].into(),
                }),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "RESERVED_CLAIM",
        ),
        (
            pb::CreateSessionRequest {
                session_custom_claims: Some(prost_types::Struct {
                    fields: [(
                        "blob".to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue("x".repeat(5000))),
                        },
                    )]
                    .into(),
                }),
                ..base()
            },
            tonic::Code::InvalidArgument,
            "FIELD_TOO_LARGE",
        ),
    ];
    // A request id is a UUID in its usual form, nothing else: not a name a client might
    // reuse, not a UUID with something after it, not a huge string.
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let mut cases = cases;
    for id in [
        "login-42".to_string(),
        "0f8fad5bd9cb469fa16570867728950e".to_string(),
        format!("{{{uuid}}}"),
        format!("urn:uuid:{uuid}"),
        format!("{uuid}\n"),
        format!("{uuid} "),
        "0f8fad5b-d9cb-469f-a165-70867728950é".to_string(),
        "x".repeat(10_000),
    ] {
        cases.push((
            pb::CreateSessionRequest {
                request_id: id,
                ..base()
            },
            tonic::Code::InvalidArgument,
            "INVALID_REQUEST_ID",
        ));
    }
    for (req, code, why) in cases {
        let e = c.create_session(authed(req)).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{e:?}");
    }
    // The boundaries themselves are fine.
    for minutes in [5, 527_040] {
        c.create_session(authed(pb::CreateSessionRequest {
            session_duration_minutes: minutes,
            ..base()
        }))
        .await
        .unwrap();
    }
}

/// AIP-155: a CreateSession with a request id mints one session however often, and on
/// however many replicas, it is sent. The id never reaches another client's session nor
/// stands for another request, and the store keeps neither the id nor the session's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_makes_create_session_mint_once_across_retries_and_replicas() {
    const OTHER_KEY: &str = "signup-test-key";
    let redis = RedisServer::start().await;
    let key = KeyFile::new(KeyKind::Es256);
    let toml = format!(
        "{}[[clients]]\nname = \"signup\"\nkey_sha256 = \"{}\"\nscopes = [\"issue\"]\n",
        setup(&key).toml,
        sessiongate::store::keys::Digest::of(OTHER_KEY.as_bytes()).to_hex()
    );
    let a = setup(&key).toml(&toml).redis(&redis).spawn().await;
    let b = setup(&key).toml(&toml).redis(&redis).spawn().await;
    let id = uuid::Uuid::new_v4().to_string();
    let req = |email: &str, id: &str| pb::CreateSessionRequest {
        who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
            email: email.into(),
            email_verified: true,
            name: "Grace".into(),
        })),
        authentication_factors: vec![pb::AuthenticationFactor {
            r#type: "passkey".into(),
            ..Default::default()
        }],
        request_id: id.into(),
        ..Default::default()
    };

    // Eight attempts at once, on two replicas: one session, seven replays of it.
    let attempts = (0..8).map(|i| {
        let mut c = if i % 2 == 0 { a.session() } else { b.session() };
        let r = req("grace@example.com", &id);
        async move { c.create_session(authed(r)).await.map(|r| r.into_inner()) }
    });
    let answers: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("CreateSession with a request id"))
        .collect();
    let first = answers
        .iter()
        .find(|r| !r.replayed)
        .expect("one attempt ran");
    assert_eq!(answers.iter().filter(|r| !r.replayed).count(), 1);
    for r in &answers {
        assert_eq!(
            (&r.session_token, &r.session_jwt, &r.user_id),
            (&first.session_token, &first.session_jwt, &first.user_id)
        );
        assert!(r.user_created, "the replay says what the first call did");
    }
    // A retry later — the id upper-cased, as some clients print UUIDs — is the same request.
    let later = b
        .session()
        .create_session(authed(req("grace@example.com", &id.to_uppercase())))
        .await
        .unwrap()
        .into_inner();
    assert!(later.replayed);
    assert_eq!(later.session_token, first.session_token);
    let listed = a
        .session()
        .list_sessions(authed(pb::ListSessionsRequest {
            user_id: first.user_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        listed.len(),
        1,
        "one session for eight attempts and a retry"
    );

    // The same id for another request: refused, nothing minted.
    let e = a
        .session()
        .create_session(authed(req("mallory@example.com", &id)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::InvalidArgument, "REQUEST_ID_REUSED")
    );
    // The same request with the same id from another client: that client's own session,
    // never this one's.
    let theirs = req("grace@example.com", &id);
    let other = a
        .session()
        .create_session(crate::support::bearer(theirs, OTHER_KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.replayed);
    assert_ne!(other.session_token, first.session_token);
    // Without an id, every call mints.
    let mut no_id = req("ada@example.com", "");
    no_id.request_id.clear();
    let one = a
        .session()
        .create_session(authed(no_id.clone()))
        .await
        .unwrap();
    let two = a.session().create_session(authed(no_id)).await.unwrap();
    assert_ne!(one.get_ref().session_token, two.get_ref().session_token);
    assert!(!one.get_ref().replayed && !two.get_ref().replayed);

    // What the store holds: neither the id (in a key's name or a value) nor the token.
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let names: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    let replays: Vec<&String> = names.iter().filter(|k| k.contains("{c:")).collect();
    assert_eq!(
        replays.len(),
        2,
        "one record per client and id: {replays:?}"
    );
    for name in &names {
        assert!(!name.contains(&id) && !name.contains(&first.session_token));
        let kind: String = ::redis::cmd("TYPE")
            .arg(name)
            .query_async(&mut con)
            .await
            .unwrap();
        if kind == "string" {
            let value: Vec<u8> = ::redis::cmd("GET")
                .arg(name)
                .query_async(&mut con)
                .await
                .unwrap();
            let value = String::from_utf8_lossy(&value);
            assert!(!value.contains(&id), "{name} holds the request id");
            assert!(
                !value.contains(&first.session_token),
                "{name} holds the token"
            );
        }
    }
}

/// A store outage fails a CreateSession with a request id as UNAVAILABLE and remembers
/// nothing: the retry after it mints the session, once.
#[tokio::test]
async fn a_request_id_survives_a_store_outage_without_a_second_session() {
    let mut redis = RedisServer::start().await;
    let key = KeyFile::new(KeyKind::Es256);
    let app = quick_to_fail(&key).redis(&redis).spawn().await;
    let req = pb::CreateSessionRequest {
        who: Some(pb::create_session_request::Who::NewUser(
            pb::NewUser::default(),
        )),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    redis.kill().await;
    let e = app
        .session()
        .create_session(authed(req.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    redis.restart().await;
    let first = eventually(Duration::from_secs(3), || {
        let mut c = app.session();
        let req = req.clone();
        async move { c.create_session(authed(req)).await.ok() }
    })
    .await
    .into_inner();
    assert!(!first.replayed, "the failed attempt recorded nothing");
    let again = app
        .session()
        .create_session(authed(req))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.session_token, first.session_token);
}

#[tokio::test]
async fn expiry_refresh_and_sliding_follow_the_clock() {
    let key = KeyFile::new(KeyKind::Eddsa);
    let clock = ManualClock::new();
    let app = setup(&key).clock(&clock).spawn().await;
    let short = create(&app, 5).await;
    let long = create(&app, 60).await;

    // Six minutes later: the short session is over, the long one is not.
    clock.advance(Duration::from_secs(6 * 60));
    let r = validate(&app, &short.session_token).await.unwrap();
    assert_eq!(verdict(&r), invalid(pb::Reason::Expired));
    let r = validate(&app, &short.session_jwt).await.unwrap();
    assert_eq!(verdict(&r), invalid(pb::Reason::Expired));

    // The long session's JWT has expired (5 min TTL) but its session is active: VALID with a
    // fresh JWT, and the session is not extended.
    let r = validate(&app, &long.session_jwt).await.unwrap();
    assert_eq!(verdict(&r), VALID);
    assert_eq!(r.source(), pb::DecisionSource::Store);
    assert!(!r.session_jwt.is_empty() && r.session_jwt != long.session_jwt);
    let expires = r.session.as_ref().unwrap().expires_at.unwrap();
    assert_eq!(expires, long.session.as_ref().unwrap().expires_at.unwrap());
    // last_accessed_at moved (more than a minute passed).
    assert!(
        r.session
            .as_ref()
            .unwrap()
            .last_accessed_at
            .unwrap()
            .seconds
            > long
                .session
                .as_ref()
                .unwrap()
                .last_accessed_at
                .unwrap()
                .seconds
    );
    let fresh = r.session_jwt.clone();
    let r = validate(&app, &fresh).await.unwrap();
    assert_eq!(verdict(&r), VALID);

    // Sliding: extend to now + 120 minutes.
    let r = validate_with(
        &app,
        pb::ValidateSessionRequest {
            token: long.session_token.clone(),
            session_duration_minutes: 120,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(verdict(&r), VALID);
    let now = clock_secs(&clock);
    assert_eq!(
        r.session.as_ref().unwrap().expires_at.unwrap().seconds,
        now + 120 * 60
    );
    // 100 minutes later the original hour would be over; the extension holds.
    clock.advance(Duration::from_secs(100 * 60));
    assert_eq!(
        verdict(&validate(&app, &long.session_token).await.unwrap()),
        VALID
    );

    // max_token_age_seconds: a JWT older than asked is re-checked in the store.
    let fresh = validate(&app, &long.session_token)
        .await
        .unwrap()
        .session_jwt;
    clock.advance(Duration::from_secs(20));
    let r = validate_with(
        &app,
        pb::ValidateSessionRequest {
            token: fresh.clone(),
            max_token_age_seconds: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (verdict(&r), r.source()),
        (VALID, pb::DecisionSource::Store)
    );
    assert!(
        r.session_jwt.is_empty(),
        "a re-checked, unexpired JWT needs no replacement"
    );
}

fn clock_secs(c: &ManualClock) -> i64 {
    use sessiongate::clock::Clock as _;
    c.now_secs()
}

#[tokio::test]
async fn hostile_and_foreign_tokens_are_invalid_with_the_right_reason() {
    let key = KeyFile::new(KeyKind::Rs256);
    let app = setup(&key).spawn().await;
    let created = create(&app, 60).await;
    let jwt = created.session_jwt.clone();
    let parts: Vec<&str> = jwt.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signing = key.key();
    // Signs with the real key: only the claims are wrong.
    let sign = |header: Value, claims: Value| {
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            signing.encoding_key(),
            signing.algorithm(),
        )
        .unwrap();
        format!("{input}.{sig}")
    };
    let good_header = json!({"alg": "RS256", "kid": signing.kid(), "typ": "JWT"});
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let now = claims["iat"].as_i64().unwrap();
    let hs256_with_public_key = {
        let h = json!({"alg": "HS256", "kid": signing.kid(), "typ": "JWT"});
        let input = format!("{}.{}", b64(&h), b64(&claims));
        let (_, jwks) = app.http_get("/.well-known/jwks.json").await;
        let k = jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, jsonwebtoken::Algorithm::HS256)
            .unwrap();
        format!("{input}.{sig}")
    };
    let mut flipped_sig = parts[2].to_string();
    let last = flipped_sig.pop().unwrap();
    flipped_sig.push(if last == 'A' { 'B' } else { 'A' });

    let cases: Vec<(&str, String, pb::Reason)> = vec![
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with("sub", json!("user-test-mallory"))),
                parts[2]
            ),
            pb::Reason::BadSignature,
        ),
        (
            "tampered signature",
            format!("{}.{}.{}", parts[0], parts[1], flipped_sig),
            pb::Reason::BadSignature,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
            pb::Reason::UnsupportedAlgorithm,
        ),
        (
            "HS256 with the public key",
            hs256_with_public_key,
            pb::Reason::UnsupportedAlgorithm,
        ),
        (
            "crit header",
            sign(
                json!({"alg": "RS256", "kid": signing.kid(), "crit": ["exp"]}),
                claims.clone(),
            ),
            pb::Reason::Malformed,
        ),
        (
            "jwk header",
            sign(
                json!({"alg": "RS256", "kid": signing.kid(), "jwk": {"kty": "RSA"}}),
                claims.clone(),
            ),
            pb::Reason::Malformed,
        ),
        (
            "unknown kid",
            sign(json!({"alg": "RS256", "kid": "nope"}), claims.clone()),
            pb::Reason::UnknownKey,
        ),
        (
            "wrong audience",
            sign(good_header.clone(), with("aud", json!("someone-else"))),
            pb::Reason::WrongAudience,
        ),
        (
            "not yet valid",
            sign(good_header.clone(), with("nbf", json!(now + 600))),
            pb::Reason::NotYetValid,
        ),
        (
            "lifetime too long",
            sign(good_header.clone(), with("exp", json!(now + 86_400))),
            pb::Reason::InvalidClaims,
        ),
        (
            "no sub",
            sign(good_header.clone(), without("sub")),
            pb::Reason::InvalidClaims,
        ),
        (
            "no exp",
            sign(good_header.clone(), without("exp")),
            pb::Reason::InvalidClaims,
        ),
        (
            "other env issuer",
            sign(
                good_header.clone(),
                with("iss", json!("urn:sessiongate:live")),
            ),
            pb::Reason::WrongEnv,
        ),
        (
            "other env subject",
            sign(good_header.clone(), with("sub", json!("user-live-1"))),
            pb::Reason::WrongEnv,
        ),
        (
            "unknown issuer",
            sign(
                good_header.clone(),
                with("iss", json!("https://evil.example/")),
            ),
            pb::Reason::UnknownIssuer,
        ),
        ("oversize", "a".repeat(9000), pb::Reason::TooLarge),
        (
            "JWE-like five parts",
            "a.b.c.d.e".into(),
            pb::Reason::Malformed,
        ),
        (
            "garbage",
            "not a token at all".into(),
            pb::Reason::Malformed,
        ),
        (
            "bad base64 header",
            format!("!!.{}.{}", parts[1], parts[2]),
            pb::Reason::Malformed,
        ),
        (
            "sgs_ of the wrong shape",
            "sgs_short".into(),
            pb::Reason::Malformed,
        ),
        (
            "unknown opaque token",
            sessiongate::session::token::new_native_token(),
            pb::Reason::NotFound,
        ),
    ];
    for (name, token, want) in cases {
        let r = validate(&app, &token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(verdict(&r), invalid(want), "{name}");
        assert!(
            r.session.is_none() && r.session_jwt.is_empty(),
            "{name}: leaked a session"
        );
    }
    // Still fine after all that.
    assert_eq!(verdict(&validate(&app, &jwt).await.unwrap()), VALID);

    let e = validate(&app, "").await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::InvalidArgument, "TOKEN_REQUIRED")
    );
}

#[tokio::test]
async fn revocation_reaches_another_replica_within_a_second_even_when_cached() {
    let redis = RedisServer::start().await;
    let key = KeyFile::new(KeyKind::Rs256);
    let a = setup(&key).redis(&redis).spawn().await;
    let b = setup(&key).redis(&redis).spawn().await;
    let created = create(&a, 60).await;

    // B knows the session from the shared store, and has the JWT cached.
    assert_eq!(
        verdict(&validate(&b, &created.session_token).await.unwrap()),
        VALID
    );
    assert_eq!(
        verdict(&validate(&b, &created.session_jwt).await.unwrap()),
        VALID
    );
    assert_eq!(
        validate(&b, &created.session_jwt).await.unwrap().source(),
        pb::DecisionSource::Cache
    );

    let revoked = a
        .session()
        .revoke_session(authed(pb::RevokeSessionRequest {
            target: Some(pb::revoke_session_request::Target::SessionToken(
                created.session_token.clone(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);

    let started = std::time::Instant::now();
    eventually(Duration::from_secs(1), || async {
        let r = validate(&b, &created.session_jwt).await.unwrap();
        (verdict(&r) == invalid(pb::Reason::Revoked)).then_some(())
    })
    .await;
    println!(
        "revocation visible on replica B after {:?}",
        started.elapsed()
    );
    let r = validate(&b, &created.session_token).await.unwrap();
    assert_eq!(verdict(&r), invalid(pb::Reason::Revoked));

    // Revoking again is idempotent.
    let again = b
        .session()
        .revoke_session(authed(pb::RevokeSessionRequest {
            target: Some(pb::revoke_session_request::Target::SessionId(
                created.session.unwrap().session_id,
            )),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked, 0);

    // A replica started after the revocation learns it from the store.
    let c = setup(&key).redis(&redis).spawn().await;
    assert_eq!(
        verdict(&validate(&c, &created.session_jwt).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );
}

#[tokio::test]
async fn revoke_by_jwt_by_user_and_events_without_token_material() {
    let key = KeyFile::new(KeyKind::Es256);
    let app = setup(&key).spawn().await;
    let one = create(&app, 60).await;
    let two = app
        .session()
        .create_session(authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::UserId(one.user_id.clone())),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut c = app.session();
    let revoke = |t| {
        authed(pb::RevokeSessionRequest {
            target: Some(t),
            ..Default::default()
        })
    };
    use pb::revoke_session_request::Target;

    let r = c
        .revoke_session(revoke(Target::SessionJwt(one.session_jwt.clone())))
        .await
        .unwrap();
    assert_eq!(r.into_inner().revoked, 1);
    assert_eq!(
        verdict(&validate(&app, &one.session_token).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );
    assert_eq!(
        verdict(&validate(&app, &two.session_token).await.unwrap()),
        VALID
    );

    let r = c
        .revoke_session(revoke(Target::UserId(one.user_id.clone())))
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().revoked,
        1,
        "only the second session was still active"
    );
    assert_eq!(
        verdict(&validate(&app, &two.session_jwt).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );

    for (t, code) in [
        (
            Target::SessionId("session-test-unknown".into()),
            tonic::Code::NotFound,
        ),
        (
            Target::SessionToken("not-a-token".into()),
            tonic::Code::InvalidArgument,
        ),
        (
            Target::SessionJwt("a.b.c".into()),
            tonic::Code::InvalidArgument,
        ),
    ] {
        assert_eq!(c.revoke_session(revoke(t)).await.unwrap_err().code(), code);
    }
    // Revoking is never open, whatever the target, and needs the revoke scope.
    let open = Setup::new().spawn().await;
    for target in [
        Target::UserId(one.user_id.clone()),
        Target::SessionId(one.session.as_ref().unwrap().session_id.clone()),
        Target::SessionToken(one.session_token.clone()),
        Target::LegacyToken("a-legacy-token".into()),
    ] {
        let e = open
            .session()
            .revoke_session(pb::RevokeSessionRequest {
                target: Some(target),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (tonic::Code::Unauthenticated, "CALLER_UNAUTHENTICATED")
        );
    }

    let events = app.store.recent_events(100).await.unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "user.created",
            "session.created",
            "session.created",
            "session.revoked",
            "session.revoked"
        ]
    );
    let text = serde_json::to_string(&events).unwrap();
    for secret in [
        &one.session_token,
        &two.session_token,
        &one.session_jwt,
        &two.session_jwt,
    ] {
        assert!(!text.contains(secret.as_str()), "token material in events");
    }
    assert!(!text.contains("sgs_"));
}

#[tokio::test]
async fn redis_outage_keeps_jwts_working_and_opaque_tokens_unavailable_never_invalid() {
    // `always`: the session below is created just before the kill, and must survive it (with
    // `everysec` the last second of writes may be lost — seen on a slow disk).
    let mut redis = RedisServer::start_with_aof_always().await;
    let key = KeyFile::new(KeyKind::Rs256);
    let app = quick_to_fail(&key).redis(&redis).spawn().await;
    let created = create(&app, 60).await;
    let fresh_jwt = create(&app, 60).await.session_jwt; // never validated before the outage

    redis.kill().await;
    // JWTs: verified locally, no store needed.
    for jwt in [&created.session_jwt, &fresh_jwt] {
        let r = validate(&app, jwt).await.unwrap();
        assert_eq!(verdict(&r), VALID);
    }
    // Opaque tokens: the store decides, and it is down: UNAVAILABLE, quickly.
    let started = std::time::Instant::now();
    let e = validate(&app, &created.session_token).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::Unavailable, "STORE_UNAVAILABLE")
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // Minting needs the store too.
    let e = app
        .session()
        .create_session(authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::NewUser(
                pb::NewUser::default(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    // Redis comes back with its AOF: the session created before the crash is still there,
    // and sessiongate recovers without a restart.
    redis.restart().await;
    let r = eventually(Duration::from_secs(3), || async {
        validate(&app, &created.session_token).await.ok()
    })
    .await;
    assert_eq!(verdict(&r), VALID);
}

#[tokio::test]
async fn random_garbage_is_always_a_verdict_never_an_internal_error() {
    use rand::{Rng, SeedableRng};
    let key = KeyFile::new(KeyKind::Rs256);
    let app = setup(&key).spawn().await;
    let created = create(&app, 60).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5e55_1064);
    let alphabet: Vec<char> = "ABCxyz019-_.=+/ {}\":,\\\u{0}\u{7f}é😀".chars().collect();
    for i in 0..1000 {
        let token: String = match i % 3 {
            // Arbitrary characters.
            0 => (0..rng.random_range(1..200))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect(),
            // A real JWT with one byte flipped somewhere.
            1 => {
                let mut b = created.session_jwt.clone().into_bytes();
                let at = rng.random_range(0..b.len());
                b[at] = b"AZaz09-_."[rng.random_range(0..9)];
                String::from_utf8(b).unwrap()
            }
            // A real opaque token, truncated or extended.
            _ => {
                let t = &created.session_token;
                let cut = rng.random_range(1..t.len() + 3).min(t.len());
                format!("{}{}", &t[..cut], "x".repeat(rng.random_range(0..3)))
            }
        };
        match validate(&app, &token).await {
            Ok(_) => {}
            Err(e) => assert_eq!(e.code(), tonic::Code::InvalidArgument, "token #{i}: {e:?}"),
        }
    }
}

#[tokio::test]
async fn an_old_jwt_refreshes_only_within_its_window_and_no_session_outlives_its_absolute_lifetime()
{
    const READER: &str = "a-key-that-only-validates";
    let key = KeyFile::new(KeyKind::Rs256);
    let clock = ManualClock::new();
    let app = Setup::new()
        .toml(&format!(
            "[native]\nsigning_keys = [\"{}\"]\nrefresh_window_seconds = 3600\nabsolute_lifetime_minutes = 600\n\
             [[clients]]\nname = \"login\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\", \"issue\", \"revoke\"]\n\
             [[clients]]\nname = \"api\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n",
            key.path.display(),
            crate::support::sha(ISSUE_KEY),
            crate::support::sha(READER),
        ))
        .clock(&clock)
        .spawn()
        .await;
    let s = create(&app, 480).await;
    let started = clock_secs(&clock);

    // Extending by the JWT alone needs `issue`: a JWT travels through every service.
    let extend = |token: &str, minutes: u32| pb::ValidateSessionRequest {
        token: token.into(),
        session_duration_minutes: minutes,
        ..Default::default()
    };
    let e = app
        .session()
        .validate_session(crate::support::bearer(extend(&s.session_jwt, 60), READER))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::PermissionDenied, "SCOPE_MISSING")
    );
    let r = validate_with(&app, extend(&s.session_jwt, 60))
        .await
        .unwrap();
    assert_eq!(verdict(&r), VALID);

    // An expired JWT is refreshed within an hour of its expiry, not after.
    clock.advance(Duration::from_secs(300 + 30 + 3000));
    let r = validate(&app, &s.session_jwt).await.unwrap();
    assert_eq!(verdict(&r), VALID);
    assert!(!r.session_jwt.is_empty(), "a fresh JWT");
    clock.advance(Duration::from_secs(700));
    assert_eq!(
        verdict(&validate(&app, &s.session_jwt).await.unwrap()),
        invalid(pb::Reason::Expired)
    );

    // Extensions stop at the absolute lifetime (600 minutes from the start)...
    let r = validate_with(&app, extend(&s.session_token, 10_000))
        .await
        .unwrap();
    assert_eq!(
        r.session.unwrap().expires_at.unwrap().seconds,
        started + 600 * 60
    );
    // ...and past it the session is over, whatever its record says.
    clock.advance(Duration::from_secs(600 * 60));
    assert_eq!(
        verdict(&validate(&app, &s.session_token).await.unwrap()),
        invalid(pb::Reason::Expired)
    );
}

#[tokio::test]
async fn sessions_survive_a_rolling_upgrade_to_binary_records_and_back() {
    let redis = RedisServer::start().await;
    let key = KeyFile::new(KeyKind::Es256);
    let with_format = |format: &str| {
        let mut s = setup(&key).redis(&redis);
        s.toml = format!("[redis]\nsession_format = \"{format}\"\n{}", s.toml);
        s
    };
    let record = |app: &TestApp, token: &str| {
        let key = app
            .keys
            .session(&sessiongate::store::keys::Digest::of(token.as_bytes()));
        let store = app.store.clone();
        async move { store.get(&key).await.unwrap().expect("a session record") }
    };
    // Step one of the upgrade: replicas that read both formats but still write JSON, beside
    // (here: after) an older one.
    let json = with_format("json").spawn().await;
    let old = create(&json, 60).await;
    assert_eq!(record(&json, &old.session_token).await[0], b'{');
    // Step two: binary writers. The JSON session is still valid there, and theirs is valid
    // on the JSON writer (which reads both), with every field intact.
    let binary = with_format("binary").spawn().await;
    let new = create(&binary, 60).await;
    let stored = record(&binary, &new.session_token).await;
    assert_eq!(stored[0], 1, "a binary record");
    for (app, token, other) in [
        (&binary, &old.session_token, &json),
        (&json, &new.session_token, &binary),
    ] {
        let here = validate(app, token).await.unwrap();
        let there = validate(other, token).await.unwrap();
        assert_eq!(verdict(&here), VALID);
        assert_eq!(here.session, there.session);
        assert_eq!(here.claims, there.claims);
    }
    let s = validate(&json, &new.session_token)
        .await
        .unwrap()
        .session
        .unwrap();
    assert_eq!(s.user_id, new.user_id);
    assert_eq!(s.authentication_factors[0].r#type, "passkey");
    // Revocation works across formats: the JSON writer revokes the binary record.
    json.session()
        .revoke_session(authed(pb::RevokeSessionRequest {
            target: Some(pb::revoke_session_request::Target::SessionToken(
                new.session_token.clone(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        verdict(&validate(&binary, &new.session_token).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );
    // What the record costs in Redis, as `benches/memory.rs` measures it.
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let another = create(&binary, 60).await;
    let k = binary.keys.session(&sessiongate::store::keys::Digest::of(
        another.session_token.as_bytes(),
    ));
    let bytes: usize = ::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(k.as_str())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    println!(
        "binary session record: {} bytes of value, {bytes} bytes in Redis",
        stored.len()
    );
    assert!(bytes <= 300, "{bytes}");
}

/// ListSessions shows a user's live sessions, newest first, with their factors, client and
/// origin; RevokeSession of a user "but one" keeps exactly that one; the scopes hold.
#[tokio::test]
async fn list_sessions_and_sign_out_everywhere_else() {
    let key = KeyFile::new(KeyKind::Es256);
    let reader = "list-reader-key";
    let admin = "list-admin-key";
    let mut s = setup(&key);
    s.toml.push_str(&format!(
        "[[clients]]\nname = \"reader\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n\
         [[clients]]\nname = \"support\"\nkey_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
        crate::support::sha(reader),
        crate::support::sha(admin)
    ));
    let app = s.spawn().await;
    let first = create(&app, 60).await;
    let mut c = app.session();
    let mut more = Vec::new();
    for ua in ["phone", "laptop"] {
        more.push(
            c.create_session(authed(pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::UserId(
                    first.user_id.clone(),
                )),
                authentication_factors: vec![pb::AuthenticationFactor {
                    r#type: "otp".into(),
                    delivery: "sms".into(),
                    acr: "urn:example:loa:2".into(),
                    ..Default::default()
                }],
                client: Some(pb::ClientInfo {
                    ip_address: "198.51.100.7".into(),
                    user_agent: ua.into(),
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner(),
        );
    }
    let list = |key: &'static str| {
        let mut c = app.session();
        let user_id = first.user_id.clone();
        async move {
            c.list_sessions(crate::support::bearer(
                pb::ListSessionsRequest { user_id },
                key,
            ))
            .await
        }
    };

    let listed = list(ISSUE_KEY).await.unwrap().into_inner().sessions;
    assert_eq!(listed.len(), 3);
    let ids: Vec<&str> = listed.iter().map(|s| s.session_id.as_str()).collect();
    assert!(
        listed.windows(2).all(|w| {
            w[0].started_at.as_ref().unwrap().seconds >= w[1].started_at.as_ref().unwrap().seconds
        }),
        "newest first"
    );
    for c in [&first, &more[0], &more[1]] {
        assert!(ids.contains(&c.session.as_ref().unwrap().session_id.as_str()));
    }
    let phone = listed
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().user_agent == "phone")
        .unwrap();
    assert_eq!(phone.created_via, "native");
    assert_eq!(phone.authentication_factors[0].acr, "urn:example:loa:2");
    // `admin` will do as well as `revoke`; `validate` will not.
    assert_eq!(list(admin).await.unwrap().into_inner().sessions.len(), 3);
    let refused = list(reader).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("`revoke` or `admin`"),
        "{}",
        refused.message()
    );

    // Sign out everywhere else: the laptop's session stays.
    let keep = more[1].session.as_ref().unwrap().session_id.clone();
    let revoke = |except: &str, target| {
        authed(pb::RevokeSessionRequest {
            target: Some(target),
            except_session_id: except.into(),
        })
    };
    use pb::revoke_session_request::Target;
    // A session of nobody's, or `except` with another target: refused, nothing revoked.
    let e = c
        .revoke_session(revoke(
            "session-test-00000000-0000-4000-8000-000000000000",
            Target::UserId(first.user_id.clone()),
        ))
        .await
        .unwrap_err();
    assert_eq!(crate::support::reason(&e), "INVALID_EXCEPT");
    let e = c
        .revoke_session(revoke(&keep, Target::SessionId(keep.clone())))
        .await
        .unwrap_err();
    assert_eq!(crate::support::reason(&e), "INVALID_EXCEPT");
    assert_eq!(
        list(ISSUE_KEY).await.unwrap().into_inner().sessions.len(),
        3
    );

    let r = c
        .revoke_session(revoke(&keep, Target::UserId(first.user_id.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 2);
    let left = list(ISSUE_KEY).await.unwrap().into_inner().sessions;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].session_id, keep);
    assert_eq!(
        verdict(&validate(&app, &more[1].session_token).await.unwrap()),
        VALID
    );
    assert_eq!(
        verdict(&validate(&app, &first.session_token).await.unwrap()),
        invalid(pb::Reason::Revoked)
    );

    // An unknown user, and no user at all.
    let mut c2 = app.session();
    let e = c2
        .list_sessions(authed(pb::ListSessionsRequest {
            user_id: "user-test-00000000-0000-4000-8000-000000000000".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c2
        .list_sessions(authed(pb::ListSessionsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // `legacy_migration` is MigrateSession's own factor.
    let e = c2
        .create_session(authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::UserId(
                first.user_id.clone(),
            )),
            authentication_factors: vec![pb::AuthenticationFactor {
                r#type: "legacy_migration".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(crate::support::reason(&e), "RESERVED_FACTOR");
}
