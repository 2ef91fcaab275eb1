//! MigrateSession against a fake legacy provider (first slice: verification, UserInfo,
//! identity linking, session).

use serde_json::{Value, json};
use sessiongate::grpc::pb;
use sessiongate::keys::KeyKind;

use crate::support::idp::{FakeIdp, UserInfoReply, sign};
use crate::support::{Setup, TestApp, eventually, reason};

pub(crate) const API: &str = "https://api.example.com";

async fn app_for(idp: &FakeIdp) -> TestApp {
    app_with(idp, "token_format = \"both\"").await
}

/// JWTs only, of one allowed client (an allow-list cannot hold for opaque tokens).
async fn app_for_one_client(idp: &FakeIdp) -> TestApp {
    app_with(
        idp,
        "token_format = \"jwt\"\nallowed_client_ids = [\"client-web\"]",
    )
    .await
}

async fn app_with(idp: &FakeIdp, extra: &str) -> TestApp {
    Setup::new().toml(&upgrade_toml(idp, extra)).spawn().await
}

/// `idp` as a legacy provider whose policy is `upgrade` (tokens valid, and to be migrated),
/// with `extra` provider keys, and migration limits out of a test's way.
pub(crate) fn upgrade_toml(idp: &FakeIdp, extra: &str) -> String {
    format!(
        "[migration]\nper_identity_per_minute = 100\n\
         [[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\nuserinfo_url = \"{}\"\n\
         audiences = [\"{API}\"]\nalgorithms = [\"RS256\"]\n{extra}\npolicy = \"upgrade\"\nuserinfo_timeout_ms = 300\n",
        idp.issuer(),
        idp.jwks_url(),
        idp.userinfo_url()
    )
}

#[tokio::test]
async fn a_legacy_jwt_becomes_a_native_session_and_the_identity_is_linked_once() {
    let idp = FakeIdp::start().await;
    let app = app_for(&idp).await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    idp.on_userinfo(
        &token,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1", "email": "ada@example.com", "email_verified": true, "name": "Ada"})),
    );
    let first = eventually(std::time::Duration::from_secs(5), || async {
        app.migrate(&token).await.ok()
    })
    .await;
    assert!(first.user_created);
    assert!(first.user_id.starts_with("user-test-"));
    let user = first.user.clone().unwrap();
    assert_eq!(
        (user.email.as_str(), user.email_verified, user.name.as_str()),
        ("ada@example.com", true, "Ada")
    );
    assert_eq!(user.legacy_identities[0].subject, "auth0|legacy-user-1");
    let factor = &first.session.as_ref().unwrap().authentication_factors[0];
    assert_eq!(
        (factor.r#type.as_str(), factor.delivery.as_str()),
        ("legacy_migration", "auth0")
    );

    // The new session validates as NEW.
    let r = app
        .session()
        .validate_session(pb::ValidateSessionRequest {
            token: first.session_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.verdict(), r.origin(), r.user_id.as_str()),
        (pb::Verdict::Valid, pb::Origin::New, first.user_id.as_str())
    );

    // The legacy token itself now validates with the migrated user's id.
    let r = app
        .session()
        .validate_session(pb::ValidateSessionRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.verdict(), r.origin(), r.action()),
        (pb::Verdict::Valid, pb::Origin::Legacy, pb::Action::Migrate)
    );
    assert_eq!(r.user_id, first.user_id);

    // The same token again, within the replay window: the same session, replayed, and no
    // second UserInfo call.
    let calls = idp.userinfo_hits();
    let replay = app.migrate(&token).await.unwrap();
    assert!(replay.replayed && !first.replayed);
    assert_eq!(
        (replay.session_token.as_str(), replay.user_id.as_str()),
        (first.session_token.as_str(), first.user_id.as_str())
    );
    assert_eq!(idp.userinfo_hits(), calls);

    // Another token of the same identity: the same user, not a new one, and a new session.
    let mut claims = idp.claims(API);
    claims["jti"] = json!("second-login");
    let second = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    idp.on_userinfo(
        &second,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1"})),
    );
    let again = app.migrate(&second).await.unwrap();
    assert_eq!(again.user_id, first.user_id);
    assert!(!again.user_created && !again.replayed);
    assert_ne!(again.session_token, first.session_token);

    let events = app.store.recent_events(100).await.unwrap();
    let created: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "user.created")
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["created_via"], "migration");
    // The identity moved once: one `user.migrated`, with the legacy subject a receiver needs
    // to mark the legacy account.
    let migrated: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "user.migrated")
        .collect();
    assert_eq!(migrated.len(), 1, "{events:?}");
    assert_eq!(migrated[0]["user_id"], first.user_id.as_str());
    assert_eq!(migrated[0]["legacy_subject"], "auth0|legacy-user-1");
    assert_eq!(migrated[0]["new_user"], true);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "session.created" && e["created_via"] == "migration")
    );
}

#[tokio::test]
async fn threat_29_refusals_map_to_the_contract_codes_and_foreign_tokens_never_reach_userinfo() {
    let idp = FakeIdp::start().await;
    let app = app_for_one_client(&idp).await;
    let key = idp.key(KeyKind::Rs256);
    let warm = sign(&key, json!({}), &idp.claims(API));
    eventually(std::time::Duration::from_secs(5), || async {
        app.session()
            .validate_session(pb::ValidateSessionRequest {
                token: warm.clone(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;

    // Issued to a client that is not allowed: refused locally, 0 UserInfo calls.
    let mut other_client = idp.claims(API);
    other_client["azp"] = json!("client-evil");
    let t = sign(&key, json!({}), &other_client);
    let e = app.migrate(&t).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::Unauthenticated, "LEGACY_TOKEN_REJECTED")
    );
    assert_eq!(idp.userinfo_hits(), 0);

    // UserInfo refuses (401), rate-limits (429), fails (503), answers another subject or none.
    let cases: Vec<(UserInfoReply, tonic::Code, &str)> = vec![
        (
            UserInfoReply::Status(401),
            tonic::Code::Unauthenticated,
            "LEGACY_TOKEN_REJECTED",
        ),
        (
            UserInfoReply::RateLimited(5),
            tonic::Code::ResourceExhausted,
            "LEGACY_RATE_LIMITED",
        ),
        (
            UserInfoReply::Status(503),
            tonic::Code::Unavailable,
            "LEGACY_PROVIDER_UNAVAILABLE",
        ),
        (
            UserInfoReply::Json(json!({"sub": "auth0|somebody-else"})),
            tonic::Code::Unauthenticated,
            "LEGACY_TOKEN_REJECTED",
        ),
        (
            UserInfoReply::Json(json!({"email": "x@example.com"})),
            tonic::Code::FailedPrecondition,
            "USERINFO_MISSING_SUBJECT",
        ),
        (
            UserInfoReply::NotJson,
            tonic::Code::Unavailable,
            "LEGACY_PROVIDER_UNAVAILABLE",
        ),
    ];
    for (i, (reply, code, why)) in cases.into_iter().enumerate() {
        let mut c = idp.claims(API);
        c["jti"] = json!(format!("case-{i}"));
        let t = sign(&key, json!({}), &c);
        idp.on_userinfo(&t, reply);
        let e = app.migrate(&t).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "case {i}");
    }

    // An opaque legacy token the provider does not know.
    let e = app.migrate("opaque-unknown").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = app.migrate("").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        app.store.recent_events(100).await.unwrap().is_empty(),
        "a refused migration left traces"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_migrations_over_two_replicas_make_one_userinfo_call_one_user_one_session()
 {
    let redis = crate::support::RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let toml = format!(
        "[[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\nuserinfo_url = \"{}\"\n\
         audiences = [\"{API}\"]\nalgorithms = [\"RS256\"]\n",
        idp.issuer(),
        idp.jwks_url(),
        idp.userinfo_url()
    );
    let a = Setup::new().toml(&toml).redis(&redis).spawn().await;
    let b = Setup::new().toml(&toml).redis(&redis).spawn().await;
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    // A slow provider widens the race.
    idp.on_userinfo(
        &token,
        UserInfoReply::SlowJson(
            std::time::Duration::from_millis(300),
            json!({"sub": "auth0|legacy-user-1"}),
        ),
    );
    // Both replicas have the issuer's keys before the race starts.
    for app in [&a, &b] {
        eventually(std::time::Duration::from_secs(5), || async {
            app.session()
                .validate_session(pb::ValidateSessionRequest {
                    token: token.clone(),
                    ..Default::default()
                })
                .await
                .ok()
        })
        .await;
    }
    let calls = (0..100).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let token = token.clone();
        async move { app.migrate(&token).await }
    });
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("migration"))
        .collect();
    assert_eq!(idp.userinfo_hits(), 1, "UserInfo calls");
    let users: std::collections::BTreeSet<_> = results.iter().map(|r| r.user_id.clone()).collect();
    let sessions: std::collections::BTreeSet<_> = results
        .iter()
        .map(|r| r.session.as_ref().unwrap().session_id.clone())
        .collect();
    assert_eq!((users.len(), sessions.len()), (1, 1));
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1);
}

#[tokio::test]
async fn a_refusal_is_replayed_briefly_without_asking_the_provider_again() {
    let idp = FakeIdp::start().await;
    let app = app_for(&idp).await;
    idp.on_userinfo("opaque-refused", UserInfoReply::Status(401));
    for _ in 0..3 {
        let e = app.migrate("opaque-refused").await.unwrap_err();
        assert_eq!(reason(&e), "LEGACY_TOKEN_REJECTED");
    }
    assert_eq!(idp.userinfo_hits(), 1);
}

#[tokio::test]
async fn verified_emails_link_to_existing_users_unverified_ones_never_and_conflicts_are_refused() {
    let idp = FakeIdp::start().await;
    let key = "migrate-test-key";
    let hash = sessiongate::store::keys::Digest::of(key.as_bytes()).to_hex();
    let app = Setup::new()
        .toml(&format!(
            "[[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\nuserinfo_url = \"{}\"\ntoken_format = \"opaque\"\nlink_verified_email = true\n\
             [[clients]]\nname = \"edge\"\nkey_sha256 = \"{hash}\"\nscopes = [\"issue\", \"migrate\"]\n",
            idp.issuer(),
            idp.userinfo_url()
        ))
        .spawn()
        .await;
    let authed = |t: &str| {
        let mut r = tonic::Request::new(pb::MigrateSessionRequest {
            legacy_token: t.into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    // A user who signed up through the NEW flow with a verified email.
    let mut req = tonic::Request::new(pb::CreateSessionRequest {
        who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
            email: "grace@example.com".into(),
            email_verified: true,
            name: "Grace".into(),
        })),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let grace = app
        .session()
        .create_session(req)
        .await
        .unwrap()
        .into_inner();

    idp.on_userinfo(
        "t-verified",
        UserInfoReply::Json(
            json!({"sub": "auth0|g1", "email": "Grace@Example.com", "email_verified": true}),
        ),
    );
    idp.on_userinfo(
        "t-unverified",
        UserInfoReply::Json(
            json!({"sub": "auth0|g2", "email": "grace@example.com", "email_verified": false}),
        ),
    );
    idp.on_userinfo(
        "t-conflict",
        UserInfoReply::Json(
            json!({"sub": "auth0|g3", "email": "grace@example.com", "email_verified": true}),
        ),
    );

    let linked = app
        .session()
        .migrate_session(authed("t-verified"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(linked.user_id, grace.user_id);
    assert!(!linked.user_created);
    assert_eq!(
        linked.user.unwrap().legacy_identities[0].subject,
        "auth0|g1"
    );
    // Linking to a user who signed up another way is a migration too, of no new user.
    let events = app.store.recent_events(100).await.unwrap();
    let migrated: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "user.migrated")
        .collect();
    assert_eq!(migrated.len(), 1, "{events:?}");
    assert_eq!(migrated[0]["user_id"], grace.user_id.as_str());
    assert_eq!(migrated[0]["new_user"], false);

    let unverified = app
        .session()
        .migrate_session(authed("t-unverified"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(unverified.user_id, grace.user_id);
    assert!(unverified.user_created);

    let e = app
        .session()
        .migrate_session(authed("t-conflict"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::FailedPrecondition, "IDENTITY_CONFLICT")
    );
    // The refused identity was not left linked: once the conflict is resolved elsewhere it
    // can still migrate (here: it simply stays unlinked).
    let index_free = app
        .store
        .get(&app.keys.identity(&sessiongate::store::keys::Digest::of(
            format!("{}\0auth0|g3", idp.issuer()).as_bytes(),
        )))
        .await
        .unwrap();
    assert!(index_free.is_none());
}

#[tokio::test]
async fn migrations_are_rate_limited_per_legacy_identity_and_per_caller() {
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&format!(
            "[migration]\nper_identity_per_minute = 2\nper_caller_per_minute = 4\n\
             [[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\nuserinfo_url = \"{}\"\naudiences = [\"{API}\"]\n",
            idp.issuer(),
            idp.jwks_url(),
            idp.userinfo_url()
        ))
        .spawn()
        .await;
    let key = idp.key(KeyKind::Rs256);
    let token_for = |sub: &str, n: u32| {
        let mut c = idp.claims(API);
        c["sub"] = json!(sub);
        c["jti"] = json!(format!("{sub}-{n}"));
        let t = sign(&key, json!({}), &c);
        idp.on_userinfo(&t, UserInfoReply::Json(json!({"sub": sub})));
        t
    };
    let warm = token_for("warm", 0);
    eventually(std::time::Duration::from_secs(5), || async {
        app.session()
            .validate_session(pb::ValidateSessionRequest {
                token: warm.clone(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    // The same legacy user logging in with three different tokens within a minute.
    app.migrate(&token_for("alice", 1)).await.unwrap();
    app.migrate(&token_for("alice", 2)).await.unwrap();
    let e = app.migrate(&token_for("alice", 3)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::ResourceExhausted, "RATE_LIMITED")
    );
    let after: u64 = e
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "{after}");
    // The (anonymous) caller has made 3 attempts; the 4th passes, the 5th does not.
    app.migrate(&token_for("bob", 1)).await.unwrap();
    let e = app.migrate(&token_for("carol", 1)).await.unwrap_err();
    assert_eq!(reason(&e), "RATE_LIMITED");
    assert!(e.message().contains("caller"), "{}", e.message());
}

#[tokio::test]
async fn slow_oversize_and_redirecting_userinfo_answers_are_unavailable_and_bounded() {
    let idp = FakeIdp::start().await;
    let app = app_for(&idp).await;
    let key = idp.key(KeyKind::Rs256);
    let token = |n: &str, reply: UserInfoReply| {
        let mut c = idp.claims(API);
        c["jti"] = json!(n);
        let t = sign(&key, json!({}), &c);
        idp.on_userinfo(&t, reply);
        t
    };
    let warm = token("warm", UserInfoReply::Status(401));
    eventually(std::time::Duration::from_secs(5), || async {
        app.session()
            .validate_session(pb::ValidateSessionRequest {
                token: warm.clone(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    let cases = [
        (
            "slow",
            UserInfoReply::Slow(std::time::Duration::from_secs(2)),
        ),
        ("oversize", UserInfoReply::Oversize),
        (
            "redirect",
            UserInfoReply::Redirect(format!("http://{}/userinfo-elsewhere", idp.addr)),
        ),
    ];
    for (name, reply) in cases {
        let t = token(name, reply);
        let started = std::time::Instant::now();
        let e = app.migrate(&t).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (tonic::Code::Unavailable, "LEGACY_PROVIDER_UNAVAILABLE"),
            "{name}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    // The caller's own deadline bounds the call too; the migration is not left half done: a
    // retry with a provider that answers completes it.
    let t = token(
        "deadline",
        UserInfoReply::SlowJson(
            std::time::Duration::from_millis(250),
            json!({"sub": "auth0|legacy-user-1"}),
        ),
    );
    let mut req = tonic::Request::new(pb::MigrateSessionRequest {
        legacy_token: t.clone(),
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_millis(100));
    let e = app.session().migrate_session(req).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{e:?}"
    );
    let done = eventually(std::time::Duration::from_secs(3), || async {
        app.migrate(&t).await.ok()
    })
    .await;
    assert!(
        done.replayed,
        "the retry found the migration the cancelled call had started"
    );
    assert_eq!(
        idp.userinfo_hits(),
        3 + 1,
        "one UserInfo call per case, one for the cancelled migration"
    );
}

/// Two legacy providers (JWTs) that link by verified email, on a real Redis.
async fn two_linking_providers(
    a: &FakeIdp,
    b: &FakeIdp,
    redis: &crate::support::RedisServer,
) -> TestApp {
    let provider = |name: &str, idp: &FakeIdp| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\n\
             userinfo_url = \"{}\"\naudiences = [\"{API}\"]\nalgorithms = [\"RS256\"]\nlink_verified_email = true\n",
            idp.issuer(),
            idp.jwks_url(),
            idp.userinfo_url()
        )
    };
    Setup::new()
        .toml(&format!(
            "[migration]\nper_identity_per_minute = 1000\nper_caller_per_minute = 1000\n{}{}",
            provider("first", a),
            provider("second", b)
        ))
        .caller_key("linker")
        .redis(redis)
        .spawn()
        .await
}

async fn migrate_from(
    app: &TestApp,
    provider: &str,
    token: &str,
) -> Result<pb::MigrateSessionResponse, tonic::Status> {
    app.session()
        .migrate_session(app.authed(pb::MigrateSessionRequest {
            legacy_token: token.into(),
            provider: provider.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn identities_linked_at_once_to_one_user_are_all_kept() {
    let redis = crate::support::RedisServer::start().await;
    let (a, b) = (FakeIdp::start().await, FakeIdp::start().await);
    let app = two_linking_providers(&a, &b, &redis).await;
    for idp in [&a, &b] {
        let warm = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
        eventually(std::time::Duration::from_secs(5), || async {
            app.validate(&warm).await.ok()
        })
        .await;
    }
    for round in 0..10 {
        let email = format!("person-{round}@example.com");
        let owner = app
            .session()
            .create_session(app.authed(pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                    email: email.clone(),
                    email_verified: true,
                    name: String::new(),
                })),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let token = |idp: &FakeIdp, sub: &str| {
            let mut c = idp.claims(API);
            c["sub"] = json!(sub);
            let t = sign(&idp.key(KeyKind::Rs256), json!({}), &c);
            idp.on_userinfo(
                &t,
                UserInfoReply::Json(json!({"sub": sub, "email": email, "email_verified": true})),
            );
            t
        };
        let (ta, tb) = (
            token(&a, &format!("a|{round}")),
            token(&b, &format!("b|{round}")),
        );
        let (ra, rb) = tokio::join!(
            migrate_from(&app, "first", &ta),
            migrate_from(&app, "second", &tb)
        );
        assert_eq!(ra.unwrap().user_id, owner.user_id);
        assert_eq!(rb.unwrap().user_id, owner.user_id);
        let record = app
            .store
            .get(&app.keys.user(&owner.user_id))
            .await
            .unwrap()
            .unwrap();
        let user: Value = serde_json::from_slice(&record).unwrap();
        let linked = user.to_string();
        assert!(
            linked.contains(&format!("a|{round}")) && linked.contains(&format!("b|{round}")),
            "round {round}: an identity linked at the same time was lost: {linked}"
        );
    }
}

#[tokio::test]
async fn an_identity_index_the_user_record_does_not_list_is_no_link() {
    let redis = crate::support::RedisServer::start().await;
    let (a, b) = (FakeIdp::start().await, FakeIdp::start().await);
    let app = two_linking_providers(&a, &b, &redis).await;
    let someone = app
        .session()
        .create_session(app.authed(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::NewUser(
                pb::NewUser::default(),
            )),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // What a migration that claimed the index and then failed leaves behind.
    let token = sign(&a.key(KeyKind::Rs256), json!({}), &a.claims(API));
    let index = app.keys.identity(&sessiongate::store::keys::Digest::of(
        format!("{}\0auth0|legacy-user-1", a.issuer()).as_bytes(),
    ));
    app.store
        .write(vec![sessiongate::store::Write::Put {
            key: index,
            value: someone.user_id.clone().into_bytes(),
            ttl: None,
        }])
        .await
        .unwrap();
    let r = eventually(std::time::Duration::from_secs(5), || async {
        app.validate(&token).await.ok()
    })
    .await;
    assert_eq!(r.verdict(), pb::Verdict::Valid);
    assert_eq!(r.user_id, "", "a link the user record does not list");
}

fn auto(token: &str) -> pb::ValidateSessionRequest {
    pb::ValidateSessionRequest {
        token: token.into(),
        auto_migrate: true,
        view: pb::ValidateView::Basic as i32,
        ..Default::default()
    }
}

/// ValidateSession with `auto_migrate`: a legacy token to migrate comes back VALID with its new
/// session, made by MigrateSession's path (a repeat gets the same session, replayed); tokens
/// with nothing to migrate get none; a failed migration leaves the verdict VALID LEGACY; the
/// caller needs scope `migrate`.
#[tokio::test]
async fn validate_with_auto_migrate_moves_the_user_in_the_same_call() {
    let idp = FakeIdp::start().await;
    let validate_only = "validate-only-key";
    let toml = format!(
        "{}\n[[clients]]\nname = \"reader\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n",
        upgrade_toml(&idp, "token_format = \"both\""),
        crate::support::sha(validate_only)
    );
    let app = Setup::new()
        .toml(&toml)
        .caller_key("full-key")
        .spawn()
        .await;
    let claims_of = |sub: &str| {
        let mut c = idp.claims(API);
        c["sub"] = json!(sub);
        c
    };
    let token = sign(
        &idp.key(KeyKind::Rs256),
        json!({}),
        &claims_of("auth0|auto-1"),
    );
    idp.on_userinfo(
        &token,
        UserInfoReply::Json(
            json!({"sub": "auth0|auto-1", "email": "auto@example.com", "email_verified": true}),
        ),
    );

    let first = eventually(std::time::Duration::from_secs(5), || async {
        let r = app
            .session()
            .validate_session(app.authed(auto(&token)))
            .await
            .ok()?
            .into_inner();
        r.migration.is_some().then_some(r)
    })
    .await;
    assert_eq!(first.verdict, pb::Verdict::Valid as i32);
    assert_eq!(
        first.origin,
        pb::Origin::Legacy as i32,
        "the verdict is the token's"
    );
    assert_eq!(first.action, pb::Action::Migrate as i32);
    let m = first.migration.unwrap();
    assert!(m.user_created && !m.replayed);
    assert_eq!(m.session.as_ref().unwrap().created_via, "migration");
    assert_eq!(
        m.user.as_ref().unwrap().legacy_identities[0].subject,
        "auth0|auto-1"
    );
    let new = app.validate(&m.session_token).await.unwrap();
    assert_eq!(
        (new.verdict, new.origin, new.user_id.as_str()),
        (
            pb::Verdict::Valid as i32,
            pb::Origin::New as i32,
            m.user_id.as_str()
        )
    );

    // Again: the same session, replayed; UserInfo asked once in all.
    let again = app
        .session()
        .validate_session(app.authed(auto(&token)))
        .await
        .unwrap()
        .into_inner()
        .migration
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        again.session.unwrap().session_id,
        m.session.unwrap().session_id
    );
    assert_eq!(idp.userinfo_hits(), 1);

    // A native token has nothing to migrate.
    let native = app
        .session()
        .validate_session(app.authed(auto(&m.session_jwt)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(native.verdict, pb::Verdict::Valid as i32);
    assert!(native.migration.is_none());

    // UserInfo refusing: still VALID LEGACY, ACTION_MIGRATE, no migration.
    let other = sign(
        &idp.key(KeyKind::Rs256),
        json!({}),
        &claims_of("auth0|auto-2"),
    );
    idp.on_userinfo(&other, UserInfoReply::Status(503));
    let failed = app
        .session()
        .validate_session(app.authed(auto(&other)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (failed.verdict, failed.origin, failed.action),
        (
            pb::Verdict::Valid as i32,
            pb::Origin::Legacy as i32,
            pb::Action::Migrate as i32
        )
    );
    assert!(failed.migration.is_none());

    // Without scope `migrate`: refused before anything is validated.
    let refused = app
        .session()
        .validate_session(crate::support::bearer(auto(&token), validate_only))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&refused), "SCOPE_MISSING");
    // ... and without asking, the same caller validates as ever.
    let plain = app
        .session()
        .validate_session(crate::support::bearer(
            pb::ValidateSessionRequest {
                token: token.clone(),
                ..Default::default()
            },
            validate_only,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.verdict, pb::Verdict::Valid as i32);
    assert!(plain.migration.is_none());
}

/// A legacy login's `amr`, `acr` and `auth_time` become the migrated session's factors, in
/// the stored session and in its JWT: a step-up rule sees the MFA done at the legacy provider.
#[tokio::test]
async fn what_the_legacy_login_proved_is_kept_in_the_migrated_session() {
    let idp = FakeIdp::start().await;
    let app = app_for(&idp).await;
    let auth_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 600;
    let mut claims = idp.claims(API);
    claims["amr"] = json!(["pwd", "mfa", "otp"]);
    claims["acr"] = json!("urn:example:loa:2");
    claims["auth_time"] = json!(auth_time);
    let token = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    idp.on_userinfo(
        &token,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1", "email": "mfa@example.com", "email_verified": true})),
    );
    let m = eventually(std::time::Duration::from_secs(5), || async {
        app.migrate(&token).await.ok()
    })
    .await;
    let factors = m.session.unwrap().authentication_factors;
    let kinds: Vec<&str> = factors.iter().map(|f| f.r#type.as_str()).collect();
    assert_eq!(kinds, ["legacy_migration", "pwd", "mfa", "otp"]);
    for f in &factors[1..] {
        assert_eq!(f.delivery, "auth0");
        assert_eq!(f.acr, "urn:example:loa:2");
        assert_eq!(f.last_authenticated_at.as_ref().unwrap().seconds, auth_time);
    }

    // The same in what a later validation reads back (the store) and in the session's JWT.
    let full = app.validate(&m.session_token).await.unwrap();
    let stored = full.session.unwrap().authentication_factors;
    assert_eq!(stored, factors);
    let payload = m.session_jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let jwt: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let in_jwt = &jwt["session"]["authentication_factors"];
    assert_eq!(in_jwt[2]["type"], "mfa", "{jwt}");
    assert_eq!(in_jwt[2]["acr"], "urn:example:loa:2");
    assert_eq!(in_jwt[2]["last_authenticated_at"], auth_time);
}
