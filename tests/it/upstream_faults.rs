//! Reliability when the *issuers* fail (issue #9, reliability.md §7.2 J1–J5 and U1–U5):
//! scenarios under concurrent load against fake issuers on loopback, each asserting its
//! invariant and printing its figures (`cargo test upstream_faults -- --nocapture`).
//!
//! Several rows are single-behaviour checks already proven elsewhere, and are not repeated:
//! J2 (a hanging JWKS costs one fetch and no more than the caller's deadline) →
//! `providers::a_hanging_issuer_costs_one_fetch_and_no_more_than_the_callers_deadline`;
//! J3 (JWKS down at start: `KEYS_UNAVAILABLE`, then recovers without restart) →
//! `providers::issuer_down_at_start_is_unavailable_then_recovers_and_outages_keep_last_keys`;
//! U2, U3, U5 (429, 401, 5xx, another `sub`, no `sub`, not JSON) →
//! `migrate::threat_29_refusals_map_to_the_contract_codes_and_foreign_tokens_never_reach_userinfo`,
//! slow, oversize and redirecting answers →
//! `migrate::slow_oversize_and_redirecting_userinfo_answers_are_unavailable_and_bounded`;
//! U4 (100 concurrent identical migrations over two replicas: one UserInfo call, one session) →
//! `migrate::a_hundred_concurrent_migrations_over_two_replicas_make_one_userinfo_call_one_user_one_session`.
//! Here: J1, J4 and J5 under load, and U1–U5 together as one ledger scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiongate::grpc::pb;
use sessiongate::keys::{KeyKind, SigningKey};

use crate::support::idp::{FakeIdp, UserInfoReply, sign};
use crate::support::{RedisServer, Setup, TestApp, eventually, reason};

const API: &str = "https://api.example.com";

fn provider(idp: &FakeIdp) -> String {
    format!(
        "[migration]\nper_identity_per_minute = 1000\nper_caller_per_minute = 100000\n\
         [[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\nuserinfo_url = \"{}\"\n\
         audiences = [\"{API}\"]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nuserinfo_timeout_ms = 300\n",
        idp.issuer(),
        idp.jwks_url(),
        idp.userinfo_url()
    )
}

/// A token never seen before (a distinct subject), signed with `key`: it is verified, not
/// answered from the cache.
fn fresh(idp: &FakeIdp, key: &SigningKey, n: usize) -> String {
    let mut claims = idp.claims(API);
    claims["sub"] = json!(format!("auth0|user-{n}"));
    sign(key, json!({}), &claims)
}

/// Waits until the app has the issuer's keys.
async fn warm(app: &TestApp, idp: &FakeIdp) {
    warm_with(app, idp, &idp.key(KeyKind::Rs256)).await;
}

/// How a validation ended, for counting.
fn outcome(r: &Result<pb::ValidateSessionResponse, tonic::Status>) -> String {
    match r {
        Ok(v) => format!("{:?}/{:?}", v.verdict(), v.reason()),
        Err(e) => format!("{:?}/{}", e.code(), reason(e)),
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j1_jwks_failing_keeps_known_keys_and_a_rotation_is_unavailable_never_invalid() {
    let idp = FakeIdp::start().await;
    let app = Setup::new().toml(&provider(&idp)).spawn().await;
    warm(&app, &idp).await;
    let before = idp.jwks_hits();

    // The issuer's JWKS starts failing, and meanwhile it rotates: tokens with the new kid
    // cannot be checked yet.
    idp.set_status(500);
    let rotated_key = idp.rotate(KeyKind::Es256);
    let known_key = idp.key(KeyKind::Rs256);
    let outage = Instant::now();
    let counts = Arc::new(Mutex::new(BTreeMap::<(bool, String), usize>::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..4).map(|w| {
        let (app, idp, counts, latencies) = (&app, &idp, counts.clone(), latencies.clone());
        let (known_key, rotated_key) = (known_key.clone(), rotated_key.clone());
        async move {
            let mut i = 0;
            // A phase of 1.5 s of load during the outage.
            while outage.elapsed() < Duration::from_millis(1500) {
                i += 1;
                let n = 1000 * (w + 1) + i;
                // Every fifth call, starting with the first: each worker tries the new kid.
                let rotated = i % 5 == 1;
                let key = if rotated { &rotated_key } else { &known_key };
                let t0 = Instant::now();
                let r = app.validate(&fresh(idp, key, n)).await;
                latencies.lock().unwrap().push(t0.elapsed());
                *counts
                    .lock()
                    .unwrap()
                    .entry((rotated, outcome(&r)))
                    .or_default() += 1;
            }
        }
    });
    futures::future::join_all(workers).await;
    let during = idp.jwks_hits() - before;
    let counts = counts.lock().unwrap().clone();

    // The issuer is back: the rotated kid is picked up by the next on-demand refresh (its
    // cooldown backs off from 1 s while the issuer fails).
    idp.set_status(200);
    let back = Instant::now();
    let mut n = 90_000;
    let recovered = eventually(Duration::from_secs(3), || {
        n += 1;
        let t = fresh(&idp, &rotated_key, n);
        let app = &app;
        async move {
            app.validate(&t)
                .await
                .ok()
                .filter(|r| r.verdict() == pb::Verdict::Valid)
                .map(|_| back.elapsed())
        }
    })
    .await;
    let p99 = p99(latencies.lock().unwrap().clone());
    eprintln!(
        "J1: JWKS 500 for 1.5 s under load: {counts:?}; {during} JWKS fetches meanwhile; p99 {p99:?}; \
         the rotated kid VALID {recovered:?} after the issuer came back"
    );
    for ((rotated, what), n) in &counts {
        let want = if *rotated {
            "Unavailable/KEYS_UNAVAILABLE"
        } else {
            "Valid/Unspecified"
        };
        assert_eq!(what, want, "{n} tokens (rotated kid: {rotated})");
    }
    assert!(
        counts.keys().any(|(rotated, _)| *rotated),
        "no rotated-kid token was tried"
    );
    // One on-demand fetch at the first unknown kid, one more after the 1 s backoff step.
    assert!(during <= 2, "{during} JWKS fetches during a 1.5 s outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j4_a_rotation_under_load_never_refuses_a_current_token() {
    let idp = FakeIdp::start().await;
    let app = Setup::new().toml(&provider(&idp)).spawn().await;
    warm(&app, &idp).await;
    let old = idp.key(KeyKind::Rs256);
    // What the issuer signs with right now; swapped mid-load.
    let current = Arc::new(Mutex::new(old.clone()));
    let results = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let before = idp.jwks_hits();
    // 4 workers × 30 validations; whichever worker starts the 40th publishes a new key and
    // signs with it from then on (counted, not timed: the other workers are mid-call).
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..4).map(|w| {
        let (app, idp) = (&app, &idp);
        let (current, results, started) = (current.clone(), results.clone(), started.clone());
        async move {
            for i in 0..30 {
                if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 40 {
                    // Before any scheduled refresh could have seen it.
                    let new = idp.rotate(KeyKind::Rs256);
                    *current.lock().unwrap() = new;
                }
                let key = current.lock().unwrap().clone();
                let r = app.validate(&fresh(idp, &key, 10_000 * (w + 1) + i)).await;
                *results.lock().unwrap().entry(outcome(&r)).or_default() += 1;
            }
        }
    });
    futures::future::join_all(workers).await;
    let results = results.lock().unwrap().clone();
    let fetches = idp.jwks_hits() - before;
    eprintln!("J4: rotation under load: {results:?}; {fetches} JWKS fetch(es) for it");
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        ["Valid/Unspecified"],
        "a correctly signed current token was refused"
    );
    assert_eq!(fetches, 1, "the new kid is seen with exactly one refresh");

    // The old key is retired at the issuer. This replica keeps it until its next refresh
    // (retiring a key is not a revocation); a replica that loads the set now refuses it.
    idp.retire(old.kid());
    let later = Setup::new().toml(&provider(&idp)).spawn().await;
    let new = current.lock().unwrap().clone();
    warm_with(&later, &idp, &new).await;
    let r = later.validate(&fresh(&idp, &old, 99_999)).await.unwrap();
    assert_eq!(
        (r.verdict(), r.reason()),
        (pb::Verdict::Invalid, pb::Reason::UnknownKey)
    );
}

/// Waits until a token signed with `key` validates.
async fn warm_with(app: &TestApp, idp: &FakeIdp, key: &SigningKey) {
    let t = fresh(idp, key, 1);
    eventually(Duration::from_secs(5), || async {
        app.validate(&t)
            .await
            .ok()
            .filter(|r| r.verdict() == pb::Verdict::Valid)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j5_hostile_jwks_answers_keep_the_last_good_keys() {
    let idp = FakeIdp::start().await;
    // A listener a redirect points at: it must never be contacted.
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary_addr = canary.local_addr().unwrap();
    let contacted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let contacted = contacted.clone();
        tokio::spawn(async move {
            while canary.accept().await.is_ok() {
                contacted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let good = serde_json::to_value(idp.key(KeyKind::Rs256).public_jwk()).unwrap();
    let weak_rsa = json!({"keys": [rsa_1024_public_jwk()]});
    let many: Vec<_> = (0..10_000)
        .map(|i| {
            let mut k = good.clone();
            k["kid"] = json!(format!("k{i}"));
            k
        })
        .collect();
    // Another real RSA key published under the same kid.
    let mut dup =
        serde_json::to_value(SigningKey::generate(KeyKind::Rs256).unwrap().public_jwk()).unwrap();
    dup["kid"] = good["kid"].clone();
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let location = format!("http://{canary_addr}/jwks.json");
    // (what, status, headers, body, the answer on a token with an unknown kid)
    type Case<'a> = (&'a str, u16, Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "10 MB body",
            200,
            json_ct.to_vec(),
            format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(10 << 20)).into_bytes(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "10 000 keys",
            200,
            json_ct.to_vec(),
            json!({ "keys": many }).to_string().into_bytes(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "invalid JSON",
            200,
            json_ct.to_vec(),
            b"{\"keys\": [".to_vec(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "an HTML page",
            200,
            vec![("content-type", "text/html")],
            b"<html><body>maintenance</body></html>".to_vec(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "301 to another port",
            301,
            vec![("location", location.as_str())],
            Vec::new(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "only an oct key",
            200,
            json_ct.to_vec(),
            json!({"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]})
                .to_string()
                .into_bytes(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            "only a 1024-bit RSA key",
            200,
            json_ct.to_vec(),
            weak_rsa.to_string().into_bytes(),
            "Unavailable/KEYS_UNAVAILABLE",
        ),
        (
            // A usable document in which two keys share the token's kid: that kid is
            // ambiguous, so it is dropped — the set itself is accepted.
            "a duplicate kid",
            200,
            json_ct.to_vec(),
            json!({"keys": [good, dup, serde_json::to_value(idp.key(KeyKind::Es256).public_jwk()).unwrap()]})
                .to_string()
                .into_bytes(),
            "Invalid/UnknownKey",
        ),
    ];
    for (name, status, headers, body, unknown_kid_answer) in cases {
        let app = Setup::new().toml(&provider(&idp)).spawn().await;
        warm(&app, &idp).await;
        idp.serve_jwks_raw(status, &headers, body);
        // A token with a kid the app does not know makes it refresh into the hostile answer.
        let mut claims = idp.claims(API);
        claims["sub"] = json!(format!("auth0|{name}"));
        let unknown = sign(&idp.key(KeyKind::Es256), json!({"kid": "next"}), &claims);
        let r = app.validate(&unknown).await;
        assert_eq!(outcome(&r), unknown_kid_answer, "{name}");
        if name == "a duplicate kid" {
            // The new set is in use: its unambiguous key verifies, the ambiguous kid does not.
            let es = app
                .validate(&fresh(&idp, &idp.key(KeyKind::Es256), 7))
                .await
                .unwrap();
            assert_eq!(es.verdict(), pb::Verdict::Valid, "{name}");
            let rs = app
                .validate(&fresh(&idp, &idp.key(KeyKind::Rs256), 8))
                .await
                .unwrap();
            assert_eq!(
                (rs.verdict(), rs.reason()),
                (pb::Verdict::Invalid, pb::Reason::UnknownKey),
                "{name}"
            );
        } else {
            // The last good keys are still in use for tokens never seen before.
            for kind in [KeyKind::Rs256, KeyKind::Eddsa] {
                let known = app.validate(&fresh(&idp, &idp.key(kind), 7)).await.unwrap();
                assert_eq!(known.verdict(), pb::Verdict::Valid, "{name}");
            }
        }
        idp.serve_real_jwks();
        eprintln!("J5: {name}: unknown kid → {unknown_kid_answer}");
    }
    assert_eq!(
        contacted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a JWKS redirect was followed"
    );
}

/// The public JWK of a 1024-bit RSA key (below the 2048-bit floor; aws-lc will not generate
/// one, and only the modulus length matters to the check).
fn rsa_1024_public_jwk() -> serde_json::Value {
    use base64::Engine as _;
    let mut modulus = vec![0xc3u8; 128];
    modulus[127] |= 1;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    json!({"kty": "RSA", "kid": "weak", "alg": "RS256", "n": b64.encode(modulus), "e": "AQAB"})
}

/// U1–U5 as one scenario: 4 workers migrate legacy tokens whose UserInfo answers are slow
/// (past the 300 ms timeout), rate-limited, refused, failing or fine — each fine token asked
/// by several workers at once. A ledger keeps every acknowledged migration; afterwards each
/// acknowledged session validates, no legacy token has two sessions, refusals minted
/// nothing, and UserInfo was asked at most once per fine token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_to_u5_migrations_under_userinfo_trouble_lose_nothing_and_duplicate_nothing() {
    let redis = RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&provider(&idp))
        .redis(&redis)
        .spawn()
        .await;
    warm(&app, &idp).await;
    let key = idp.key(KeyKind::Rs256);
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Kind {
        Fine,
        Slow,
        RateLimited,
        Refused,
        Failing,
        OtherSubject,
    }
    let kinds = [
        Kind::Fine,
        Kind::Slow,
        Kind::Fine,
        Kind::RateLimited,
        Kind::Refused,
        Kind::Fine,
        Kind::Failing,
        Kind::OtherSubject,
    ];
    let subject = |i: usize| format!("auth0|migrating-{i}");
    let tokens: Vec<(Kind, String)> = (0..48)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let mut c = idp.claims(API);
            let sub = subject(i);
            c["sub"] = json!(sub);
            c["jti"] = json!(format!("u-{i}"));
            let t = sign(&key, json!({}), &c);
            let reply = match kind {
                Kind::Fine => UserInfoReply::Json(json!({"sub": sub})),
                Kind::Slow => {
                    UserInfoReply::SlowJson(Duration::from_millis(600), json!({"sub": sub}))
                }
                Kind::RateLimited => UserInfoReply::RateLimited(30),
                Kind::Refused => UserInfoReply::Status(401),
                Kind::Failing => UserInfoReply::Status(503),
                Kind::OtherSubject => UserInfoReply::Json(json!({"sub": "auth0|someone-else"})),
            };
            idp.on_userinfo(&t, reply);
            (kind, t)
        })
        .collect();

    // Every token is migrated by 3 of the 4 workers, concurrently.
    type Ack = (Kind, String, String, String);
    let ledger: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let outcomes = Arc::new(Mutex::new(BTreeMap::<(Kind, String), usize>::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..4).map(|w| {
        let (app, tokens) = (&app, &tokens);
        let (ledger, outcomes, latencies) = (ledger.clone(), outcomes.clone(), latencies.clone());
        async move {
            for (i, (kind, token)) in tokens.iter().enumerate() {
                if i % 4 == w {
                    continue;
                }
                let t0 = Instant::now();
                let r = app.migrate(token).await;
                latencies.lock().unwrap().push(t0.elapsed());
                let what = match &r {
                    Ok(_) => "OK".to_owned(),
                    Err(e) => format!("{:?}/{}", e.code(), reason(e)),
                };
                *outcomes.lock().unwrap().entry((*kind, what)).or_default() += 1;
                if let Ok(m) = r {
                    ledger.lock().unwrap().push((
                        *kind,
                        token.clone(),
                        m.session.unwrap().session_id,
                        m.session_token,
                    ));
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let outcomes = outcomes.lock().unwrap().clone();
    let ledger = ledger.lock().unwrap().clone();
    let p99 = p99(latencies.lock().unwrap().clone());

    // Every refusal is the contract's answer for its cause; only fine tokens were acknowledged.
    for ((kind, what), n) in &outcomes {
        let allowed: &[&str] = match kind {
            Kind::Fine => &["OK"],
            // Past the UserInfo timeout: retryable. (A loser of the single-flight race may
            // also be told the migration is in progress.)
            Kind::Slow => &[
                "Unavailable/LEGACY_PROVIDER_UNAVAILABLE",
                "Unavailable/MIGRATION_IN_PROGRESS",
            ],
            Kind::RateLimited => &["ResourceExhausted/LEGACY_RATE_LIMITED"],
            Kind::Refused | Kind::OtherSubject => &["Unauthenticated/LEGACY_TOKEN_REJECTED"],
            Kind::Failing => &[
                "Unavailable/LEGACY_PROVIDER_UNAVAILABLE",
                "Unavailable/MIGRATION_IN_PROGRESS",
            ],
        };
        assert!(
            allowed.contains(&what.as_str()),
            "{n} × {kind:?} answered {what}"
        );
    }
    // One session per legacy token, however many callers asked.
    let mut per_token: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (_, token, session, _) in &ledger {
        per_token.entry(token).or_default().insert(session);
    }
    assert!(
        per_token.values().all(|s| s.len() == 1),
        "a legacy token got two sessions"
    );
    let fine = tokens.iter().filter(|(k, _)| *k == Kind::Fine).count();
    assert_eq!(per_token.len(), fine, "every fine token was migrated");
    // Each acknowledged session is VALID afterwards.
    let mut lost = 0;
    for (_, _, _, session_token) in &ledger {
        let v = app.validate(session_token).await.unwrap();
        if v.verdict() != pb::Verdict::Valid {
            lost += 1;
        }
    }
    // U1: a slow token retried once the provider answers in time gets one session, never two.
    let i = tokens.iter().position(|(k, _)| *k == Kind::Slow).unwrap();
    let slow = &tokens[i].1;
    idp.on_userinfo(slow, UserInfoReply::Json(json!({"sub": subject(i)})));
    let retried = eventually(Duration::from_secs(3), || async {
        app.migrate(slow).await.ok()
    })
    .await;
    let again = app.migrate(slow).await.unwrap();
    assert_eq!(
        retried.session.as_ref().unwrap().session_id,
        again.session.as_ref().unwrap().session_id
    );
    assert!(again.replayed);
    // UserInfo: one call per fine or refused token (single-flight, then the replay record);
    // a transient failure is not remembered, so each of its 3 callers may ask once; +1 for
    // the U1 retry. Anything above is a retry storm.
    let hits = idp.userinfo_hits();
    let count = |k: &[Kind]| tokens.iter().filter(|(kind, _)| k.contains(kind)).count();
    let budget = count(&[
        Kind::Fine,
        Kind::RateLimited,
        Kind::Refused,
        Kind::OtherSubject,
    ]) + 3 * count(&[Kind::Slow, Kind::Failing])
        + 1;
    eprintln!(
        "U1–U5: {} migration calls: {outcomes:?}; {} acknowledged for {fine} fine tokens, lost {lost}; \
         {hits} UserInfo calls for {} tokens (budget {budget}); p99 {p99:?}",
        outcomes.values().sum::<usize>(),
        ledger.len(),
        tokens.len()
    );
    assert_eq!(lost, 0, "an acknowledged migration does not validate");
    assert!(hits <= budget, "{hits} UserInfo calls (budget {budget})");
}
