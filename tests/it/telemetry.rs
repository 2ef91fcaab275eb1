//! What operators watch: `/metrics` shows the migration's progress (VALID verdicts by calling
//! client, provider and side) and the rollout's decisions, and the figures move as traffic
//! flows. (The recorder is process-wide: each test uses its own client names.)

use std::time::Duration;

use serde_json::json;
use sessiongate::grpc::pb;
use sessiongate::keys::KeyKind;

use crate::support::idp::{FakeIdp, sign};
use crate::support::{Setup, TestApp, bearer, eventually, sha};

const API: &str = "https://api.example.com";

/// The value of the sample of `metric` whose labels include all of `labels`, or 0.
async fn sample(app: &TestApp, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_the_migration_progress_by_client_and_provider() {
    let legacy = FakeIdp::start().await;
    let app = Setup::new()
        .toml(&format!(
            "[[clients]]\nname = \"progress-web\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\", \"issue\"]\n\
             [[clients]]\nname = \"progress-mobile\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\"]\n\
             [[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\naudiences = [\"{API}\"]\n",
            sha("web-key"),
            sha("mobile-key"),
            legacy.issuer(),
            legacy.jwks_url()
        ))
        .spawn()
        .await;
    let created = crate::support::new_user_session(&mut app.session(), "web-key").await;
    let legacy_jwt = sign(&legacy.key(KeyKind::Rs256), json!({}), &legacy.claims(API));
    let validate = |token: String, key: &'static str| {
        let app = &app;
        async move {
            app.session()
                .validate_session(bearer(
                    pb::ValidateSessionRequest {
                        token,
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    // The legacy issuer's keys load in the background.
    eventually(Duration::from_secs(5), || async {
        (validate(legacy_jwt.clone(), "mobile-key").await.verdict() == pb::Verdict::Valid)
            .then_some(())
    })
    .await;

    let web_new = [
        ("client", "progress-web"),
        ("provider", "native"),
        ("origin", "new"),
    ];
    let mobile_legacy = [
        ("client", "progress-mobile"),
        ("provider", "auth0"),
        ("origin", "legacy"),
    ];
    let metric = "sessiongate_migration_validations_total";
    let before = (
        sample(&app, metric, &web_new).await,
        sample(&app, metric, &mobile_legacy).await,
    );
    for _ in 0..3 {
        assert_eq!(
            validate(created.session_jwt.clone(), "web-key")
                .await
                .verdict(),
            pb::Verdict::Valid
        );
    }
    assert_eq!(
        validate(created.session_token.clone(), "web-key")
            .await
            .verdict(),
        pb::Verdict::Valid
    );
    for _ in 0..2 {
        assert_eq!(
            validate(legacy_jwt.clone(), "mobile-key").await.verdict(),
            pb::Verdict::Valid
        );
    }
    // An INVALID verdict is not progress.
    assert_eq!(
        validate("garbage".into(), "mobile-key").await.verdict(),
        pb::Verdict::Invalid
    );

    let after = (
        sample(&app, metric, &web_new).await,
        sample(&app, metric, &mobile_legacy).await,
    );
    assert_eq!(
        after.0 - before.0,
        4.0,
        "web: 3 JWTs + 1 opaque token, all NEW"
    );
    assert_eq!(after.1 - before.1, 2.0, "mobile: 2 legacy JWTs");
    assert_eq!(
        sample(
            &app,
            metric,
            &[("client", "progress-web"), ("origin", "legacy")]
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn metrics_count_rollout_decisions_by_flow_result_and_reason() {
    let app = Setup::new()
        .toml("[[flows]]\nname = \"metrics-flow\"\npercentage = 100\ncountries = [\"NO\"]\n")
        .spawn()
        .await;
    let labels_in = [
        ("flow", "metrics-flow"),
        ("result", "new"),
        ("reason", "rollout_in"),
    ];
    let labels_gate = [
        ("flow", "metrics-flow"),
        ("result", "legacy"),
        ("reason", "not_eligible"),
    ];
    let metric = "sessiongate_flow_decisions_total";
    let (in0, gate0) = (
        sample(&app, metric, &labels_in).await,
        sample(&app, metric, &labels_gate).await,
    );
    for country in ["NO", "NO", "SE"] {
        app.session()
            .resolve_flow(pb::ResolveFlowRequest {
                flow: "metrics-flow".into(),
                country: country.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // A flow nobody configured is counted without its (request-chosen) name.
    app.session()
        .resolve_flow(pb::ResolveFlowRequest {
            flow: "made-up-by-a-caller".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sample(&app, metric, &labels_in).await - in0, 2.0);
    assert_eq!(sample(&app, metric, &labels_gate).await - gate0, 1.0);
    let (_, text) = app.http_get("/metrics").await;
    assert!(!text.contains("made-up-by-a-caller"));
    assert!(text.contains("flow=\"(unknown)\""));
}
