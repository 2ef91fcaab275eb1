//! A flow's ramp on two replicas sharing a Redis and one manual clock: it starts, advances as
//! the clock passes each hold — one replica moving each step, never both — pauses itself when
//! a guard trips on the fleet's counts, resumes on an admin's word, and skips a step.

use std::time::Duration;

use serde_json::json;
use sessiongate::clock::ManualClock;
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::rollout_admin_service_client::RolloutAdminServiceClient;

use crate::support::{RedisServer, Setup, TestApp, bearer, eventually, reason};

const KEY: &str = "ramp-test-key";

const RAMP: &str = "[[flows]]\nname = \"login\"\npercentage = 0\nstickiness = \"device\"\n\
    [[flows.ramp]]\npercentage = 10\nhold_minutes = 10\n\
    [[flows.ramp]]\npercentage = 25\nhold_minutes = 10\n\
    [[flows.ramp]]\npercentage = 50\nhold_minutes = 10\n\
    [[flows.ramp]]\npercentage = 100\n\
    [flows.guards]\nwindow_minutes = 5\nmin_samples = 20\nnew_invalid_ratio = 0.2\n";

async fn rollout(app: &TestApp) -> pb::Rollout {
    RolloutAdminServiceClient::new(app.channel.clone())
        .get_rollout(bearer(
            pb::GetRolloutRequest {
                flow: "login".into(),
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

/// Waits until `app` reports the ramp at `step` with `percentage`.
async fn at_step(app: &TestApp, step: u32, percentage: u32) -> pb::Rollout {
    eventually(Duration::from_secs(15), || async {
        let r = rollout(app).await;
        let ramp = r.ramp.clone().unwrap();
        (ramp.started && ramp.current_step == step && r.percentage == percentage).then_some(r)
    })
    .await
}

async fn act(app: &TestApp, action: pb::RampAction) -> Result<pb::Rollout, tonic::Status> {
    RolloutAdminServiceClient::new(app.channel.clone())
        .update_rollout(bearer(
            pb::UpdateRolloutRequest {
                flow: "login".into(),
                ramp: action as i32,
                ..Default::default()
            },
            KEY,
        ))
        .await
        .map(|r| r.into_inner().rollout.unwrap())
}

/// The `ramp_step` changes among the rollout.updated events, in order.
async fn step_events(app: &TestApp) -> Vec<serde_json::Value> {
    app.store
        .recent_events(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e["type"] == "rollout.updated")
        .filter_map(|e| e["changes"].get("ramp_step").cloned())
        .collect()
}

#[tokio::test]
async fn a_ramp_advances_by_itself_pauses_on_a_guard_and_resumes_and_skips_on_an_admins_word() {
    let redis = RedisServer::start().await;
    let clock = ManualClock::new();
    let replica = || {
        Setup::new()
            .toml(RAMP)
            .caller_key(KEY)
            .redis(&redis)
            .clock(&clock)
            .spawn()
    };
    let (a, b) = (replica().await, replica().await);

    // It starts by itself, at its first step, on both replicas.
    let r = at_step(&a, 0, 10).await;
    let ramp = r.ramp.unwrap();
    assert_eq!(
        ramp.steps
            .iter()
            .map(|s| (s.percentage, s.hold_minutes))
            .collect::<Vec<_>>(),
        [(10, 10), (25, 10), (50, 10), (100, 0)]
    );
    assert!(!ramp.paused && !ramp.complete);
    let due = ramp.next_step_at.unwrap();
    let started = ramp.step_started_at.unwrap();
    assert_eq!(due.seconds - started.seconds, 600);
    at_step(&b, 0, 10).await;

    // Ten minutes on: the next step, made once across the two replicas.
    clock.advance(Duration::from_secs(600));
    at_step(&b, 1, 25).await;
    at_step(&a, 1, 25).await;
    assert_eq!(step_events(&a).await, [json!([null, 0]), json!([0, 1])]);

    // A guard: more than 20 % of NEW validations INVALID (forged session JWTs: a signature
    // that does not verify), counted on both replicas, pauses the ramp.
    let jwt = crate::support::new_user_session(&mut a.session(), KEY)
        .await
        .session_jwt;
    let sig_at = jwt.rfind('.').unwrap() + 2;
    for (i, app) in [&a, &b].into_iter().cycle().take(30).enumerate() {
        let mut forged = jwt.clone().into_bytes();
        let at = sig_at + i;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let v = app
            .session()
            .validate_session(bearer(
                pb::ValidateSessionRequest {
                    token: String::from_utf8(forged).unwrap(),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.verdict, pb::Verdict::Invalid as i32);
        assert_eq!(v.origin, pb::Origin::New as i32, "{:?}", v.reason);
    }
    let paused = eventually(Duration::from_secs(15), || async {
        let r = rollout(&a).await;
        r.ramp.clone().filter(|x| x.paused).map(|x| (r, x))
    })
    .await;
    assert!(
        paused.1.paused_reason.contains("INVALID NEW validations")
            && paused.1.paused_reason.contains("(100.0 %)"),
        "{}",
        paused.1.paused_reason
    );
    assert_eq!(paused.0.percentage, 25);
    assert!(
        paused.1.next_step_at.is_none(),
        "nothing is due while paused"
    );
    let pause_event = a
        .store
        .recent_events(1000)
        .await
        .unwrap()
        .into_iter()
        .rfind(|e| e["type"] == "rollout.updated")
        .unwrap();
    assert_eq!(pause_event["by"], "ramp");
    assert!(
        pause_event["changes"]["ramp_paused"]
            .as_str()
            .unwrap()
            .starts_with("guard:")
    );

    // Resumed by an admin (on the other replica): the hold starts over and the guards forget
    // what tripped them; ten minutes on, the next step.
    let r = act(&b, pb::RampAction::Resume).await.unwrap();
    let ramp = r.ramp.unwrap();
    assert!(!ramp.paused && ramp.paused_reason.is_empty());
    assert_eq!(
        ramp.next_step_at.unwrap().seconds - ramp.step_started_at.unwrap().seconds,
        600
    );
    clock.advance(Duration::from_secs(600));
    at_step(&a, 2, 50).await;

    // Skipped to the last step by an admin: complete, nothing more is due.
    let r = act(&a, pb::RampAction::Skip).await.unwrap();
    let ramp = r.ramp.unwrap();
    assert_eq!((ramp.current_step, r.percentage), (3, 100));
    assert!(ramp.complete && ramp.next_step_at.is_none());
    at_step(&b, 3, 100).await;
    assert_eq!(
        step_events(&b).await,
        [
            json!([null, 0]),
            json!([0, 1]),
            json!([1, 2]),
            json!([2, 3])
        ],
        "each step once"
    );

    // An action the contract does not know is refused.
    let mut admin = RolloutAdminServiceClient::new(a.channel.clone());
    let e = admin
        .update_rollout(bearer(
            pb::UpdateRolloutRequest {
                flow: "login".into(),
                ramp: 9,
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_ROLLOUT");
}

#[tokio::test]
async fn a_flow_without_a_ramp_refuses_ramp_actions() {
    let app = Setup::new()
        .toml("[[flows]]\nname = \"login\"\npercentage = 5\n")
        .caller_key(KEY)
        .spawn()
        .await;
    let e = act(&app, pb::RampAction::Resume).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::InvalidArgument, "INVALID_ROLLOUT")
    );
    assert!(rollout(&app).await.ramp.is_none());
}
