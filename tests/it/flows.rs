//! ResolveFlow and RolloutAdminService through gRPC: account stickiness, admin updates that
//! reach another replica within a second, admin validation, events, and a store outage
//! (LEGACY/ERROR, never a failed call).

use std::time::{Duration, Instant};

use sessiongate::grpc::pb;

use crate::support::{RedisServer, Setup, bearer, eventually, reason, sha};

const FLOW_KEY: &str = "flows-test-flow-key";
const ADMIN_KEY: &str = "flows-test-admin-key";
const ISSUE_KEY: &str = "flows-test-issue-key";
const COOKIE_KEY: &str = "flows-test-cookie-key-0123456789abcdef";

fn setup(flows: &str) -> Setup {
    Setup::new()
        .toml(&format!(
            "[flow_cookie]\nkeys = [\"env:FLOW_COOKIE_KEY\"]\n\
             [[clients]]\nname = \"login-page\"\nkey_sha256 = \"{}\"\nscopes = [\"flow\"]\n\
             [[clients]]\nname = \"ops-alice\"\nkey_sha256 = \"{}\"\nscopes = [\"admin\"]\n\
             [[clients]]\nname = \"signup\"\nkey_sha256 = \"{}\"\nscopes = [\"issue\"]\n{flows}",
            sha(FLOW_KEY),
            sha(ADMIN_KEY),
            sha(ISSUE_KEY)
        ))
        .var("FLOW_COOKIE_KEY", COOKIE_KEY)
}

const LOGIN_AT_0: &str = "[[flows]]\nname = \"login\"\npercentage = 0\nstickiness = \"default\"\n";

fn device(id: &str) -> pb::ResolveFlowRequest {
    pb::ResolveFlowRequest {
        flow: "login".into(),
        device_id: id.into(),
        ..Default::default()
    }
}

async fn resolve(
    app: &crate::support::TestApp,
    req: pb::ResolveFlowRequest,
) -> pb::ResolveFlowResponse {
    app.session()
        .resolve_flow(bearer(req, FLOW_KEY))
        .await
        .expect("ResolveFlow answers")
        .into_inner()
}

fn update(flow: &str) -> pb::UpdateRolloutRequest {
    pb::UpdateRolloutRequest {
        flow: flow.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_user_with_an_account_is_sticky_new() {
    let app = setup(LOGIN_AT_0).spawn().await;
    let created = app
        .session()
        .create_session(bearer(
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                    email: "new@example.com".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            ISSUE_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    let r = resolve(
        &app,
        pb::ResolveFlowRequest {
            user_id: created.user_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.flow(), pb::Flow::New);
    assert_eq!(
        (r.reason(), r.rule.as_str()),
        (pb::FlowReason::Sticky, "account")
    );
    // Any other id at 0%: LEGACY, outside the percentage.
    let r = resolve(
        &app,
        pb::ResolveFlowRequest {
            user_id: "user-test-00000000-0000-4000-8000-000000000000".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (r.flow(), r.reason()),
        (pb::Flow::Legacy, pb::FlowReason::RolloutOut)
    );
    assert_eq!(r.percentage, 0);
}

#[tokio::test]
async fn an_unknown_flow_is_legacy_and_bad_input_is_refused() {
    let app = setup(LOGIN_AT_0).spawn().await;
    let r = resolve(
        &app,
        pb::ResolveFlowRequest {
            flow: "checkout".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (r.flow(), r.reason()),
        (pb::Flow::Legacy, pb::FlowReason::FlowNotFound)
    );
    assert!(r.set_cookie.is_none());

    let e = app
        .session()
        .resolve_flow(bearer(device(&"d".repeat(300)), FLOW_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&e), "INVALID_FLOW_REQUEST");
    // An unparsable IP or country is unknown, not an error.
    let mut req = device("d1");
    req.ip = "not-an-ip".into();
    req.country = "T1".into();
    assert_eq!(
        resolve(&app, req).await.reason(),
        pb::FlowReason::RolloutOut
    );
}

#[tokio::test]
async fn an_update_on_one_replica_changes_decisions_on_another_within_a_second() {
    let redis = RedisServer::start().await;
    let a = setup(LOGIN_AT_0).redis(&redis).spawn().await;
    let b = setup(LOGIN_AT_0).redis(&redis).spawn().await;
    let devices: Vec<String> = (0..50).map(|i| format!("device-{i:04}")).collect();
    for d in &devices {
        assert_eq!(resolve(&b, device(d)).await.flow(), pb::Flow::Legacy);
    }

    let t0 = Instant::now();
    let updated = a
        .admin()
        .update_rollout(bearer(
            pb::UpdateRolloutRequest {
                percentage: Some(100),
                ..update("login")
            },
            ADMIN_KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(updated.percentage, 100);
    let acked = t0.elapsed();
    let seen = eventually(Duration::from_secs(1), || async {
        let r = resolve(&b, device(&devices[0])).await;
        (r.flow() == pb::Flow::New).then(|| t0.elapsed())
    })
    .await;
    eprintln!("update acknowledged after {acked:?}, effective on the other replica after {seen:?}");
    for d in &devices {
        let r = resolve(&b, device(d)).await;
        assert_eq!(
            (r.flow(), r.reason()),
            (pb::Flow::New, pb::FlowReason::RolloutIn)
        );
        assert_eq!(r.config_version, updated.config_version);
    }
    let on_b = b
        .admin()
        .get_rollout(bearer(
            pb::GetRolloutRequest {
                flow: "login".into(),
            },
            ADMIN_KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(
        on_b, updated,
        "both replicas report the same effective settings"
    );

    // A replica started later loads the override at start.
    let c = setup(LOGIN_AT_0).redis(&redis).spawn().await;
    assert_eq!(resolve(&c, device(&devices[1])).await.flow(), pb::Flow::New);

    // The change is an event with the caller's name and no ids.
    let events = a.store.recent_events(10).await.unwrap();
    let e = events
        .iter()
        .find(|e| e["type"] == "rollout.updated")
        .expect("a rollout.updated event");
    assert_eq!(e["by"], "ops-alice");
    assert_eq!(e["flow"], "login");
    assert_eq!(e["changes"]["percentage"], serde_json::json!([0, 100]));
}

#[tokio::test]
async fn admin_updates_are_validated_and_can_be_cleared() {
    let app = setup(
        "[[flows]]\nname = \"login\"\npercentage = 10\nallow_users = [\"qa-1\"]\n\
         [[flows]]\nname = \"checkout\"\n[[flows.strategies]]\nname = \"default\"\n",
    )
    .spawn()
    .await;
    let mut admin = app.admin();
    let call = |u: pb::UpdateRolloutRequest| {
        let mut admin = admin.clone();
        async move { admin.update_rollout(bearer(u, ADMIN_KEY)).await }
    };

    let e = call(pb::UpdateRolloutRequest {
        percentage: Some(101),
        ..update("login")
    })
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::InvalidArgument, "INVALID_ROLLOUT")
    );
    let e = call(update("nope")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::NotFound, "FLOW_NOT_FOUND")
    );
    let e = call(pb::UpdateRolloutRequest {
        percentage: Some(50),
        ..update("checkout")
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = call(pb::UpdateRolloutRequest {
        allow_cidrs: Some(pb::ListEdit {
            add: vec!["10.0.0.0/33".into()],
            remove: vec![],
        }),
        ..update("login")
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let r = call(pb::UpdateRolloutRequest {
        rollback_epoch: Some(3),
        kill_switch: Some(true),
        allow_users: Some(pb::ListEdit {
            add: vec!["qa-2".into()],
            remove: vec!["qa-1".into()],
        }),
        deny_cidrs: Some(pb::ListEdit {
            add: vec!["2001:db8::/32".into()],
            remove: vec![],
        }),
        ..update("login")
    })
    .await
    .unwrap()
    .into_inner()
    .rollout
    .unwrap();
    assert_eq!((r.rollback_epoch, r.kill_switch), (3, true));
    assert_eq!(r.allow_users, ["qa-2"]);
    assert_eq!(r.deny_cidrs, ["2001:db8::/32"]);
    assert!(r.updated_at.is_some());
    let e = call(pb::UpdateRolloutRequest {
        rollback_epoch: Some(2),
        ..update("login")
    })
    .await
    .unwrap_err();
    assert!(e.message().contains("must not go down"), "{}", e.message());

    // Clearing goes back to the file's settings (and still applies the rest of the request),
    // except the rollback epoch, which never goes down.
    let r = call(pb::UpdateRolloutRequest {
        clear_overrides: true,
        percentage: Some(20),
        ..update("login")
    })
    .await
    .unwrap()
    .into_inner()
    .rollout
    .unwrap();
    assert_eq!(
        (r.percentage, r.kill_switch, r.rollback_epoch),
        (20, false, 3)
    );
    assert_eq!(r.allow_users, ["qa-1"]);

    let all = admin
        .list_rollouts(bearer(pb::ListRolloutsRequest {}, ADMIN_KEY))
        .await
        .unwrap()
        .into_inner()
        .rollouts;
    let names: Vec<&str> = all.iter().map(|r| r.flow.as_str()).collect();
    assert_eq!(names, ["checkout", "login"]);
    assert_eq!(all[0].stickiness, "strategies");
}

#[tokio::test]
async fn with_redis_down_resolve_flow_still_answers() {
    let mut redis = RedisServer::start().await;
    let app = setup("[[flows]]\nname = \"login\"\npercentage = 100\n")
        .redis(&redis)
        .spawn()
        .await;
    redis.kill().await;
    // No store needed: decided by the percentage.
    let r = resolve(&app, device("d-1")).await;
    assert_eq!(
        (r.flow(), r.reason()),
        (pb::Flow::New, pb::FlowReason::RolloutIn)
    );
    // The account check needs the store: LEGACY, the known-good path, with the reason.
    let r = resolve(
        &app,
        pb::ResolveFlowRequest {
            user_id: "user-test-00000000-0000-4000-8000-000000000001".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (r.flow(), r.reason()),
        (pb::Flow::Legacy, pb::FlowReason::Error)
    );
    // An admin update cannot be stored: UNAVAILABLE, not a silent local change.
    let e = app
        .admin()
        .update_rollout(bearer(
            pb::UpdateRolloutRequest {
                kill_switch: Some(true),
                ..update("login")
            },
            ADMIN_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(resolve(&app, device("d-1")).await.flow(), pb::Flow::New);
}
