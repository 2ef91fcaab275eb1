//! The real binary's traces and logs: spans reach an OTLP collector (an in-process one on
//! loopback) and continue the caller's trace; and with every RPC driven with canary secrets —
//! tokens, legacy tokens, cookies, API keys, the session credentials it mints — no canary and
//! no minted credential reaches a log line, a span or an error message (threat: secrets in
//! telemetry).

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::rollout_admin_service_client::RolloutAdminServiceClient;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use tonic::Request;

use crate::support::binary::Binary;
use crate::support::idp::{FakeIdp, UserInfoReply};
use crate::support::{RedisServer, sha};

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    raw: Arc<Mutex<String>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{req:?}\n"));
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_collector() -> (Collector, std::net::SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    (collector, addr)
}

fn with<T>(msg: T, key: &str, traceparent: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", tp.parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_no_secret_reaches_logs_spans_or_errors() {
    let (collector, collector_addr) = start_collector().await;
    let mut redis = RedisServer::start().await;
    let idp = FakeIdp::start().await;
    let canary = format!("CANARY{}", uuid::Uuid::new_v4().simple());
    let key = format!("key-{canary}");
    // A legacy opaque token the provider accepts, one it refuses, both canaries.
    let legacy_ok = format!("legacy-ok-{canary}");
    let legacy_bad = format!("legacy-bad-{canary}");
    idp.on_userinfo(
        &legacy_ok,
        UserInfoReply::Json(json!({"sub": "canary-user", "email": "c@example.com"})),
    );
    let toml = format!(
        "[[clients]]\nname = \"observer\"\nkey_sha256 = \"{}\"\n\
         scopes = [\"validate\", \"migrate\", \"flow\", \"issue\", \"revoke\", \"admin\"]\n\
         [[providers]]\nname = \"legacy\"\nkind = \"legacy\"\nissuer = \"{}\"\n\
         token_format = \"opaque\"\nuserinfo_url = \"{}\"\n\
         [[flows]]\nname = \"login\"\npercentage = 50\n",
        sha(&key),
        idp.issuer(),
        idp.userinfo_url()
    );
    let bin = Binary::start(
        &toml,
        &[
            ("REDIS_URL", redis.url()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_addr}"),
            ),
            ("OTEL_SERVICE_NAME", "sessiongate-under-test".into()),
        ],
    );
    let channel = bin.channel().await;
    let mut api = SessionGateServiceClient::new(channel.clone());
    let mut admin = RolloutAdminServiceClient::new(channel);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let tp = Some(traceparent.as_str());
    let mut errors = Vec::new();
    let mut secrets = vec![canary.clone()];

    // Every RPC, with canaries wherever a secret goes.
    let created = api
        .create_session(with(
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                    email: "observer@example.com".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            &key,
            tp,
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(created.session_token.clone());
    secrets.push(created.session_jwt.clone());
    for token in [
        created.session_token.clone(),
        created.session_jwt.clone(),
        format!("sgs_{canary}"),
        format!("eyJhbGciOiJSUzI1NiJ9.{canary}.{canary}"),
        legacy_ok.clone(),
        legacy_bad.clone(),
    ] {
        let r = api
            .validate_session(with(
                pb::ValidateSessionRequest {
                    token,
                    ..Default::default()
                },
                &key,
                tp,
            ))
            .await;
        if let Err(e) = r {
            errors.push(format!("{e:?}"));
        }
    }
    let migrated = api
        .migrate_session(with(
            pb::MigrateSessionRequest {
                legacy_token: legacy_ok.clone(),
                ..Default::default()
            },
            &key,
            tp,
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(migrated.session_token.clone());
    secrets.push(migrated.session_jwt.clone());
    let e = api
        .migrate_session(with(
            pb::MigrateSessionRequest {
                legacy_token: legacy_bad.clone(),
                ..Default::default()
            },
            &key,
            tp,
        ))
        .await
        .unwrap_err();
    errors.push(format!("{e:?}"));
    let flow = api
        .resolve_flow(with(
            pb::ResolveFlowRequest {
                flow_cookie: format!("v1.{canary}.N.0.kid.{canary}"),
                ..Default::default()
            },
            &key,
            tp,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(flow.set_cookie.is_some());
    admin
        .update_rollout(with(
            pb::UpdateRolloutRequest {
                flow: "login".into(),
                percentage: Some(60),
                ..Default::default()
            },
            &key,
            tp,
        ))
        .await
        .unwrap();
    for target in [
        pb::revoke_session_request::Target::SessionToken(format!("sgs_{canary}")),
        pb::revoke_session_request::Target::LegacyToken(legacy_ok.clone()),
        pb::revoke_session_request::Target::SessionJwt(created.session_jwt.clone()),
        pb::revoke_session_request::Target::SessionToken(migrated.session_token.clone()),
    ] {
        if let Err(e) = api
            .revoke_session(with(
                pb::RevokeSessionRequest {
                    target: Some(target),
                    ..Default::default()
                },
                &key,
                tp,
            ))
            .await
        {
            errors.push(format!("{e:?}"));
        }
    }
    // A wrong API key carrying the canary.
    let e = api
        .validate_session(with(
            pb::ValidateSessionRequest::default(),
            &format!("wrong-{canary}"),
            None,
        ))
        .await
        .unwrap_err();
    errors.push(format!("{e:?}"));

    // The store gone: an opaque session cannot be judged — UNAVAILABLE, the server's fault.
    redis.kill().await;
    let e = api
        .validate_session(with(
            pb::ValidateSessionRequest {
                token: created.session_token.clone(),
                ..Default::default()
            },
            &key,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    errors.push(format!("{e:?}"));

    drop((api, admin));
    // Waiting for the exit blocks: off the runtime, which serves the collector meanwhile.
    let logs = tokio::task::spawn_blocking(move || bin.stop())
        .await
        .unwrap();
    let spans = collector.spans.lock().unwrap().clone();
    let raw_spans = collector.raw.lock().unwrap().clone();

    // The caller's trace continues in sessiongate's spans, down to its Redis calls.
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == trace_id)
        .collect();
    let rpc = in_trace
        .iter()
        .find(|s| s.name == "sessiongate.v1.SessionGateService/ValidateSession")
        .unwrap_or_else(|| panic!("no ValidateSession span in trace {trace_id}: {spans:#?}"));
    // OpenTelemetry's RPC conventions: kind SERVER, the method fully qualified, the status
    // code by name; the resource says what runs where.
    let attr = |s: &Span, k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| format!("{v:?}"))
    };
    assert_eq!(rpc.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        attr(rpc, "rpc.system.name").as_deref(),
        Some("StringValue(\"grpc\")")
    );
    assert_eq!(
        attr(rpc, "rpc.method").as_deref(),
        Some("StringValue(\"sessiongate.v1.SessionGateService/ValidateSession\")")
    );
    assert_eq!(
        attr(rpc, "rpc.response.status_code").as_deref(),
        Some("StringValue(\"OK\")")
    );
    assert!(raw_spans.contains("service.version") && raw_spans.contains(env!("CARGO_PKG_VERSION")));
    assert!(raw_spans.contains("deployment.environment.name"));
    // A call that failed for the server's reasons (the store down: UNAVAILABLE) is an error span.
    let failed = spans
        .iter()
        .find(|s| {
            attr(s, "rpc.response.status_code").as_deref() == Some("StringValue(\"UNAVAILABLE\")")
        })
        .expect("the UNAVAILABLE call's span");
    assert_eq!(
        failed.status.as_ref().map(|st| st.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    assert_eq!(
        attr(failed, "error.type").as_deref(),
        Some("StringValue(\"UNAVAILABLE\")")
    );
    // A refusal of the caller (UNAUTHENTICATED) is not the server's fault: no error status.
    let refused = spans
        .iter()
        .find(|s| {
            attr(s, "rpc.response.status_code").as_deref()
                == Some("StringValue(\"UNAUTHENTICATED\")")
        })
        .expect("the wrong key's span");
    assert_ne!(refused.status.as_ref().map(|st| st.code), Some(2));
    assert_eq!(
        hex::encode(&rpc.parent_span_id),
        parent,
        "the caller's span is the parent"
    );
    assert!(
        in_trace.iter().any(|s| s.name == "MGET"),
        "a Redis span in the caller's trace"
    );
    assert!(
        in_trace.iter().any(|s| s.name == "userinfo"),
        "a UserInfo span"
    );
    assert!(raw_spans.contains("sessiongate-under-test"), "service.name");

    // Log lines written during a traced call name its trace and span at the top level, as
    // log stores expect, so that a line leads to its trace.
    let span_ids: Vec<String> = in_trace.iter().map(|s| hex::encode(&s.span_id)).collect();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let traced: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["trace_id"] == *trace_id)
        .collect();
    assert!(
        !traced.is_empty(),
        "no log line names the caller's trace {trace_id}"
    );
    for l in &traced {
        let span_id = l["span_id"]
            .as_str()
            .expect("a span_id beside the trace_id");
        assert!(
            span_ids.iter().any(|s| s == span_id),
            "{span_id} is none of the trace's exported spans: {l}"
        );
    }
    for l in &lines {
        if let Some(t) = l.get("trace_id") {
            let t = t.as_str().unwrap();
            assert!(
                t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
                "{l}"
            );
        }
    }

    // No secret anywhere.
    assert!(!logs.is_empty() && !raw_spans.is_empty() && errors.len() >= 3);
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret in the logs: {secret}"
        );
        assert!(
            !raw_spans.contains(secret.as_str()),
            "a secret in the spans: {secret}"
        );
        for e in &errors {
            assert!(!e.contains(secret.as_str()), "a secret in an error: {e}");
        }
    }
    assert!(
        !logs.contains(&key) && !raw_spans.contains(&key),
        "the API key leaked"
    );
}
