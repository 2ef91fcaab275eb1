//! The server around the RPCs: health, reflection, caller auth, errors, metrics, shutdown.

use std::collections::BTreeSet;

use futures::StreamExt;
use sessiongate::grpc::pb;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Setup, bearer, reason, sha, spawn_app};

// sha256("test-validate-key") and sha256("test-admin-key")
const VALIDATE_KEY: &str = "test-validate-key";
const ADMIN_KEY: &str = "test-admin-key";

fn with_keys() -> Setup {
    Setup::new().toml(&format!(
        "[[clients]]\nname = \"checkout\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n\
         [[clients]]\nname = \"ops\"\nkey_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
        sha(VALIDATE_KEY),
        sha(ADMIN_KEY)
    ))
}

#[tokio::test]
async fn health_is_serving_overall_and_for_the_service() {
    let app = spawn_app().await;
    let mut h = app.health();
    for service in ["", "sessiongate.v1.SessionGateService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    // An unknown service is NOT_FOUND (a probe misconfigured that way fails loudly).
    let e = h
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// The services a reflection client of version `$v` (v1 or v1alpha: same messages, other
/// package) lists.
macro_rules! reflected_services {
    ($v:ident, $app:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new($app.channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        match stream.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<BTreeSet<String>>(),
            other => panic!("unexpected {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_only_the_public_services() {
    // Reflection needs no key even when keys are configured.
    let app = with_keys().spawn().await;
    let want: BTreeSet<String> = [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "sessiongate.v1.RolloutAdminService",
        "sessiongate.v1.SessionGateService",
        "sessiongate.v1.WebhookAdminService",
    ]
    .map(String::from)
    .into();
    assert_eq!(reflected_services!(v1, app), want);
    assert_eq!(reflected_services!(v1alpha, app), want);
}

#[tokio::test]
async fn scoped_rpcs_need_a_key_with_the_scope() {
    let app = with_keys().spawn().await;
    let mut admin = app.admin();
    let req = || pb::ListRolloutsRequest {};

    let e = admin.list_rollouts(req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&e), "CALLER_UNAUTHENTICATED");

    let e = admin
        .list_rollouts(bearer(req(), "not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let e = admin
        .list_rollouts(bearer(req(), VALIDATE_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&e), "SCOPE_MISSING");
    assert!(
        e.message().contains("checkout") && e.message().contains("admin"),
        "{}",
        e.message()
    );

    // The right key gets through the auth layer to the handler.
    let r = admin
        .list_rollouts(bearer(req(), ADMIN_KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(r.rollouts.is_empty(), "no flows configured: {r:?}");

    // Health stays open.
    app.health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn open_test_mode_never_opens_issue_or_admin() {
    let app = spawn_app().await;
    let e = app
        .session()
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = app
        .admin()
        .list_rollouts(pb::ListRolloutsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let app = spawn_app().await;
    let e = app
        .session()
        .migrate_session(pb::MigrateSessionRequest {
            legacy_token: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
}

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code() {
    let app = with_keys().spawn().await;
    app.health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let _ = app
        .admin()
        .get_rollout(pb::GetRolloutRequest::default())
        .await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"sessiongate_grpc_requests_total{method="Health/Check",code="OK"}"#),
        "{body}"
    );
    assert!(
        body.contains(r#"sessiongate_grpc_requests_total{method="RolloutAdminService/GetRollout",code="UNAUTHENTICATED"}"#),
        "{body}"
    );
    assert!(
        body.contains("sessiongate_grpc_request_duration_seconds_bucket"),
        "{body}"
    );
    // Every call counts, not only the first of its method and code (the handles are cached).
    // Other tests share the process' recorder and may add calls of their own: at least.
    let series = [
        r#"sessiongate_grpc_requests_total{method="RolloutAdminService/GetRollout",code="UNAUTHENTICATED"}"#,
        r#"sessiongate_grpc_request_duration_seconds_count{method="RolloutAdminService/GetRollout"}"#,
    ];
    let value = |body: &str, series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {body}"))
    };
    let before = series.map(|s| value(&body, s));
    for _ in 0..3 {
        let _ = app
            .admin()
            .get_rollout(pb::GetRolloutRequest::default())
            .await;
    }
    let (_, after) = app.http_get("/metrics").await;
    for (s, b) in series.iter().zip(before) {
        assert!(
            value(&after, s) >= b + 3.0,
            "{s}: {b} -> {}",
            value(&after, s)
        );
    }
    // Stock tools read every family's help and type, and the build's identity.
    let families: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| l.starts_with("sessiongate_") || l.starts_with("process_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    assert!(families.len() > 3, "{families:?}");
    for f in &families {
        assert!(body.contains(&format!("# HELP {f} ")), "no HELP for {f}");
        assert!(body.contains(&format!("# TYPE {f} ")), "no TYPE for {f}");
    }
    // The process' own, as stock dashboards name them, with live values.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_threads") >= 1.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The test process' start (the app runs inside it): before now, within the day.
    let started = value("process_start_time_seconds");
    assert!(
        started <= now && started > now - 86_400.0,
        "{started} vs {now}"
    );
    assert!(
        body.contains(&format!(
            "sessiongate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_flips_health_first_then_drains_within_the_grace() {
    let app = Setup::new()
        .toml("[server]\ndrain_grace_seconds = 1\n")
        .spawn()
        .await;
    let mut watch = app
        .health()
        .watch(HealthCheckRequest {
            service: "sessiongate.v1.SessionGateService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let stopped = tokio::spawn(app.stop());
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // The open Watch stream is an in-flight call that never ends by itself: the drain
    // grace bounds it, and the stop is still clean.
    let started = std::time::Instant::now();
    stopped.await.unwrap().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn the_status_page_shows_rollouts_the_share_on_new_and_providers() {
    let app = Setup::new()
        .toml(
            "[[flows]]\nname = \"login\"\npercentage = 0\nstickiness = \"device\"\n\
             [[flows.ramp]]\npercentage = 10\nhold_minutes = 60\n\
             [[flows.ramp]]\npercentage = 100\n\
             [[flows]]\nname = \"checkout\"\npercentage = 30\nkill_switch = true\n",
        )
        .caller_key("status-key")
        .spawn()
        .await;
    let created = crate::support::new_user_session(&mut app.session(), "status-key").await;
    let v = app
        .session()
        .validate_session(crate::support::validate_as(
            created.session_token,
            "status-key",
        ))
        .await
        .unwrap();
    assert_eq!(v.get_ref().verdict, pb::Verdict::Valid as i32);
    // The ramp starts by itself within a tick.
    let page = crate::support::eventually(std::time::Duration::from_secs(10), || async {
        let (status, body) = app.http_get("/status").await;
        assert_eq!(status, 200);
        body.contains("step 1 of 2").then_some(body)
    })
    .await;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<td>login</td><td>10 %</td>"), "{page}");
    assert!(
        page.contains("<td>checkout</td><td>30 %</td><td class=\"bad\">on</td>"),
        "{page}"
    );
    assert!(page.contains("id=\"new-share\">1 (100.0 %)"), "{page}");
    assert!(page.contains("no providers configured"), "{page}");
    assert!(!page.contains("<script"), "no script");
}
