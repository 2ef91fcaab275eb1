//! Events out: signed deliveries to a real receiver on loopback, retried with the same
//! `webhook-id`, in order per user, buried as dead letters past their window and redelivered
//! by an admin; two replicas sharing a Redis deliver each event once.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use sessiongate::clock::ManualClock;
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::webhook_admin_service_client::WebhookAdminServiceClient;
use tonic::Code;

use crate::support::receiver::Receiver;
use crate::support::{
    RedisServer, Setup, TestApp, bearer, new_user_request, new_user_session, reason,
};

const KEY: &str = "webhook-test-key";

fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    )
}

fn config(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[webhooks]]\nname = \"backfill\"\nurl = \"{}\"\nsecrets = [\"env:WH_SECRET\"]\n\
         first_retry_ms = 20\nmax_retry_seconds = 1\n{extra}\n",
        receiver.url()
    )
}

fn setup(receiver: &Receiver, extra: &str) -> Setup {
    Setup::new()
        .toml(&config(receiver, extra))
        .var("WH_SECRET", &secret())
        .caller_key(KEY)
}

fn admin(app: &TestApp) -> WebhookAdminServiceClient<tonic::transport::Channel> {
    WebhookAdminServiceClient::new(app.channel.clone())
}

/// The signature a receiver holding the secret expects.
fn expected_signature(id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7u8; 32]);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD
            .encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref())
    )
}

async fn session_for(app: &TestApp, user_id: &str) -> pb::CreateSessionResponse {
    app.session()
        .create_session(bearer(
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::UserId(user_id.into())),
                ..Default::default()
            },
            KEY,
        ))
        .await
        .expect("CreateSession")
        .into_inner()
}

#[tokio::test]
async fn events_reach_the_receiver_signed_in_order_and_a_refusal_is_retried_with_the_same_id() {
    let receiver = Receiver::start().await;
    // The first two attempts are refused (a 500, then a 503).
    receiver.answer_next(&[500, 503]);
    let app = setup(
        &receiver,
        "events = [\"user.created\", \"session.created\"]",
    )
    .spawn()
    .await;
    let first = new_user_session(&mut app.session(), KEY).await;
    let second = session_for(&app, &first.user_id).await;
    // Not asked for: a revocation goes to the stream, not to this receiver.
    app.session()
        .revoke_session(bearer(
            pb::RevokeSessionRequest {
                target: Some(pb::revoke_session_request::Target::SessionId(
                    second.session.as_ref().unwrap().session_id.clone(),
                )),
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap();
    let third = session_for(&app, &first.user_id).await;

    // user.created, then three session.created: four events, one user, one lane.
    let got = receiver.until_delivered(4).await;
    assert_eq!(got.len(), 6, "two refusals and four deliveries: {got:?}");
    assert_eq!(got[0].id, got[1].id, "a retry keeps the webhook-id");
    assert_eq!(got[1].id, got[2].id);
    assert_eq!(
        (got[0].status, got[1].status, got[2].status),
        (500, 503, 200)
    );
    for d in &got {
        assert_eq!(
            d.signature,
            expected_signature(&d.id, &d.timestamp, &d.body),
            "every attempt is signed for its own timestamp"
        );
    }
    let delivered: Vec<_> = got.iter().filter(|d| d.status == 200).collect();
    let kinds: Vec<_> = delivered
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "user.created",
            "session.created",
            "session.created",
            "session.created"
        ]
    );
    let sessions: Vec<_> = delivered[1..]
        .iter()
        .map(|d| d.json()["data"]["session_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<_> = [&first, &second, &third]
        .iter()
        .map(|r| r.session.as_ref().unwrap().session_id.clone())
        .collect();
    assert_eq!(sessions, want, "a user's events arrive in order");
    // The envelope: ids and facts, never a token.
    for d in &delivered {
        let text = String::from_utf8(d.body.clone()).unwrap();
        for r in [&first, &second, &third] {
            assert!(!text.contains(&r.session_token) && !text.contains(&r.session_jwt));
        }
        let body = d.json();
        assert_eq!(body["data"]["id"], d.id.as_str());
        assert_eq!(body["data"]["user_id"], first.user_id.as_str());
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn past_its_window_a_delivery_is_a_dead_letter_that_an_admin_redelivers() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let clock = ManualClock::new();
    let app = setup(&receiver, "retry_for_seconds = 60")
        .clock(&clock)
        .spawn()
        .await;
    let created = new_user_session(&mut app.session(), KEY).await;
    let refused = receiver.next().await;
    assert_eq!(refused.json()["type"], "user.created");
    // A minute later (by the clock the event is dated with) the next refusal buries it.
    clock.advance(Duration::from_secs(61));
    let list = || async {
        admin(&app)
            .list_dead_letters(bearer(
                pb::ListDeadLettersRequest {
                    webhook: "backfill".into(),
                    page_size: 0,
                },
                KEY,
            ))
            .await
            .unwrap()
            .into_inner()
            .dead_letters
    };
    let of =
        |letters: Vec<pb::DeadLetter>, id: &str| letters.into_iter().find(|l| l.event_id == id);
    let dead = crate::support::eventually(Duration::from_secs(20), || async {
        of(list().await, &refused.id)
    })
    .await;
    assert_eq!(dead.event_type, "user.created");
    assert_eq!(dead.last_error, "HTTP 500");
    assert!(dead.attempts >= 1);
    let event = dead.event.as_ref().unwrap();
    assert!(event.fields.contains_key("user_id"));

    // Redelivery while the receiver still refuses: an error, and the letter stays.
    let redeliver = |event_id: &str, all: bool| {
        let mut api = admin(&app);
        let req = bearer(
            pb::RedeliverDeadLetterRequest {
                webhook: "backfill".into(),
                event_id: event_id.into(),
                all,
            },
            KEY,
        );
        async move { api.redeliver_dead_letter(req).await }
    };
    let e = redeliver(&refused.id, false).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unavailable, "WEBHOOK_UNDELIVERED")
    );
    assert_eq!(
        of(list().await, &refused.id).unwrap().attempts,
        dead.attempts + 1
    );

    // The receiver is back: redelivered with its original id, and no longer a dead letter.
    receiver.answer(200);
    let n = redeliver(&refused.id, false).await.unwrap().into_inner();
    assert_eq!(n.redelivered, 1);
    let mut again = receiver.next().await;
    while again.id != refused.id || again.status != 200 {
        again = receiver.next().await;
    }
    assert_eq!(again.body, refused.body, "the same event");
    assert!(of(list().await, &refused.id).is_none());

    // Hostile and mistaken requests.
    let e = redeliver(&refused.id, false).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "DEAD_LETTER_NOT_FOUND")
    );
    for bad in ["../../x", "sg:test:{wh:backfill}:lease", &"a".repeat(5000)] {
        let e = redeliver(bad, false).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{bad}");
    }
    let e = redeliver(&refused.id, true).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "one or all, not both");
    let e = admin(&app)
        .list_dead_letters(bearer(
            pb::ListDeadLettersRequest {
                webhook: "nope".into(),
                page_size: 0,
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "WEBHOOK_NOT_FOUND")
    );
    // Without a key: refused before anything is read.
    let e = admin(&app)
        .list_dead_letters(pb::ListDeadLettersRequest {
            webhook: "backfill".into(),
            page_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(created.session.is_some());
}

#[tokio::test]
async fn two_replicas_sharing_a_redis_deliver_each_event_once_and_one_takes_over_from_the_other() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let a = setup(&receiver, "").redis(&redis).spawn().await;
    let b = setup(&receiver, "").redis(&redis).spawn().await;
    let mut users = Vec::new();
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        users.push(new_user_session(&mut app.session(), KEY).await.user_id);
    }
    // Each user: user.created + session.created.
    let got = receiver.until_delivered(20).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &got {
        *per_id.entry(d.id.clone()).or_default() += 1;
    }
    assert!(
        per_id.values().all(|n| *n == 1),
        "each event once: {per_id:?}"
    );

    // One replica stops (whichever held the lease, the other holds it next).
    a.stop().await.unwrap();
    for _ in 0..5 {
        users.push(new_user_session(&mut b.session(), KEY).await.user_id);
    }
    let got = receiver.until_delivered(10).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &got {
        *per_id.entry(d.id.clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 10);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    let kinds: Vec<_> = got
        .iter()
        .map(|d| d.json()["data"]["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.iter().all(|u| users[10..].contains(u)));
}

/// A Redis outage while events wait: the deliverer cannot read, acknowledge or renew, and
/// delivers everything once Redis answers again.
#[tokio::test]
async fn a_redis_outage_delays_deliveries_and_loses_none() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let app = setup(&receiver, "").redis(&redis).spawn().await;
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(new_user_session(&mut app.session(), KEY).await.user_id);
    }
    redis.pause();
    // The outage is real: the store refuses (fast) what needs it.
    let e = app
        .session()
        .create_session(new_user_request(KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    redis.resume();
    for _ in 0..5 {
        users.push(new_user_session(&mut app.session(), KEY).await.user_id);
    }
    // Every acknowledged user's two events (user.created, session.created) arrive; the one
    // whose creation failed may add two more.
    let acknowledged: std::collections::BTreeSet<String> = users.into_iter().collect();
    let mut events: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    while !acknowledged
        .iter()
        .all(|u| events.get(u).is_some_and(|kinds| kinds.len() == 2))
    {
        let d = receiver.next().await;
        if d.status == 200 {
            let body = d.json();
            events
                .entry(body["data"]["user_id"].as_str().unwrap().to_owned())
                .or_default()
                .insert(body["type"].as_str().unwrap().to_owned());
        }
    }
    let delivered: std::collections::BTreeSet<_> = events.keys().cloned().collect();
    // The call that failed with UNAVAILABLE may still have been applied once Redis woke up
    // (its outcome was unknown, not negative): then its event is delivered too, and the user
    // does exist — an event always describes what the store holds.
    for extra in delivered.difference(&acknowledged) {
        assert!(
            app.store
                .get(&app.keys.user(extra))
                .await
                .unwrap()
                .is_some()
        );
    }
}

/// Events written before the deliverer first holds the lease (another replica held it, then
/// went away without delivering) are still delivered: a webhook's consumer group starts at
/// the process' start, not when it happens to be created.
#[tokio::test]
async fn events_from_before_the_first_lease_are_delivered() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A replica that holds the lease and never delivers.
    let _: () = ::redis::cmd("SET")
        .arg("sg:test:wh:backfill:lease")
        .arg("another-replica")
        .query_async(&mut con)
        .await
        .unwrap();
    let app = setup(&receiver, "").redis(&redis).spawn().await;
    let users: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(new_user_session(&mut app.session(), KEY).await.user_id);
        }
        v
    };
    // It goes away; this replica takes over.
    let _: () = ::redis::cmd("DEL")
        .arg("sg:test:wh:backfill:lease")
        .query_async(&mut con)
        .await
        .unwrap();
    let got = receiver.until_delivered(6).await;
    let delivered: std::collections::BTreeSet<_> = got
        .iter()
        .map(|d| d.json()["data"]["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, users.into_iter().collect());
}
