//! Criterion micro-benchmarks of the hot pure functions (the targets of docs/performance.md are measured end to end by
//! `benches/loadgen.rs`; these say where the time inside a request goes):
//! token classification and decoding, native JWT verification (signature + claims), and flow
//! bucketing and decisions.
//!
//! `cargo bench --bench micro` (two shared cores are good for relative numbers only).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sessiongate::config::{FlowConfig, FlowRules, KeySource, Secret, Stickiness};
use sessiongate::flow::cookie::CookieKeys;
use sessiongate::flow::engine;
use sessiongate::flow::model::{Effective, Overrides};
use sessiongate::flow::resolve::{Early, Request, Resolver};
use sessiongate::keys::{KeyKind, SigningKeys};
use sessiongate::session::model::{AuthFactor, Session};
use sessiongate::session::native::NativeIssuer;
use sessiongate::session::token;

fn native() -> (NativeIssuer, String, i64) {
    let dir = tempfile::tempdir().unwrap();
    let pem = sessiongate::keys::signing::generate_pem(KeyKind::Rs256).unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, pem).unwrap();
    let keys = Arc::new(SigningKeys::load_or_generate(&[KeySource::File(path)]).unwrap());
    let cfg = sessiongate::config::load(
        &std::collections::HashMap::<String, String>::new(),
        dir.path(),
        None,
    )
    .unwrap();
    let issuer = NativeIssuer::new(cfg.env, &cfg.native, keys);
    let now_ms = 1_800_000_000_000;
    let session = Session {
        session_id: "session-test-8b0c6a8e-5f0e-4b7e-9a43-1f1d3d4c5b6a".into(),
        user_id: "user-test-0e4b6f2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b".into(),
        started_at_ms: now_ms,
        last_accessed_at_ms: now_ms,
        expires_at_ms: now_ms + 3_600_000,
        factors: vec![AuthFactor {
            kind: "passkey".into(),
            ..Default::default()
        }],
        attributes: Default::default(),
        custom_claims: Default::default(),
    };
    let jwt = issuer.mint(&session, now_ms).unwrap();
    (issuer, jwt, now_ms / 1000)
}

fn tokens(c: &mut Criterion) {
    let (issuer, jwt, now) = native();
    // Every ValidateSession pays it, cache hits included: a pass over every byte.
    c.bench_function("token: classify", |b| {
        b.iter(|| black_box(token::classify(black_box(&jwt)).is_ok()))
    });
    c.bench_function("token: classify + decode header and payload", |b| {
        b.iter(|| {
            let token::Shape::Jws(jws) = token::classify(black_box(&jwt)).unwrap() else {
                unreachable!()
            };
            let h = token::header(&jws).unwrap();
            let p = token::payload(&jws).unwrap();
            black_box((h, p))
        })
    });
    let token::Shape::Jws(jws) = token::classify(&jwt).unwrap() else {
        unreachable!()
    };
    let header = token::header(&jws).unwrap();
    let claims = token::payload(&jws).unwrap();
    c.bench_function("native JWT: RS256 signature + claims", |b| {
        b.iter(|| black_box(issuer.verify(&jws, &header, claims.clone(), now).unwrap()))
    });
}

fn flows(c: &mut Criterion) {
    c.bench_function("flow: Unleash bucket (murmur3)", |b| {
        b.iter(|| {
            black_box(engine::bucket(
                "login",
                black_box("3f2b7c1e-9a4d-4e8b-8c2f-5d6e7a8b9c0d"),
            ))
        })
    });
    let cfg = FlowConfig {
        name: "login".into(),
        kill_switch: false,
        rollback_epoch: 0,
        allow_users: vec![],
        deny_users: vec![],
        allow_devices: vec![],
        deny_devices: vec![],
        allow_cidrs: vec!["10.20.0.0/16".parse().unwrap()],
        deny_cidrs: vec![],
        countries: vec!["NO".into(), "SE".into()],
        min_app_versions: BTreeMap::new(),
        rules: FlowRules::Percentage {
            percentage: 50,
            stickiness: Stickiness::Device,
        },
        ramp: None,
    };
    let eff = Effective::compile(&cfg, &Overrides::default());
    let keys = CookieKeys::load(&[KeySource::Env {
        var: "K".into(),
        value: Secret::new("bench-flow-cookie-key-0123456789abcdef"),
    }])
    .unwrap();
    let r = Resolver {
        flow: &eff,
        cookies: &keys,
        cookie_name: "__Host-sg_flow",
        cookie_max_age_secs: 34_560_000,
    };
    let req = Request {
        flow: "login".into(),
        device_id: Some("3f2b7c1e-9a4d-4e8b-8c2f-5d6e7a8b9c0d".into()),
        country: Some("NO".into()),
        ..Default::default()
    };
    c.bench_function("flow: full decision with a signed cookie", |b| {
        b.iter(|| match r.early(black_box(&req)) {
            Early::Decided(d) => black_box(d),
            Early::Continue(p) => black_box(r.late(&req, p, false)),
        })
    });
}

/// A cached native JWT through the domain and the response conversion and encoding: what
/// ValidateSession costs beyond the gRPC stack (the load generator measures the whole).
fn cached_validation(c: &mut Criterion) {
    use prost::Message as _;
    use sessiongate::session::{ValidateRequest, View};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sessiongate::config::load(
        &std::collections::HashMap::<String, String>::new(),
        dir.path(),
        None,
    )
    .unwrap();
    let keys = Arc::new(SigningKeys::load_or_generate(&[]).unwrap());
    let store: Arc<dyn sessiongate::store::Store> =
        Arc::new(sessiongate::store::memory::MemoryStore::new(cfg.env));
    let clock: Arc<dyn sessiongate::clock::Clock> = Arc::new(sessiongate::clock::SystemClock);
    let sessions = sessiongate::session::SessionService::new(&cfg, store, clock, keys);
    let (created, _) = rt
        .block_on(sessions.create(
            &sessiongate::caller::Caller::anonymous(),
            sessiongate::session::CreateRequest {
                who: Some(sessiongate::session::Who::NewUser {
                    email: "bench@example.com".into(),
                    email_verified: true,
                    name: String::new(),
                }),
                factors: vec![],
                duration_minutes: 0,
                custom_claims: Default::default(),
                client: Default::default(),
                request_id: None,
            },
        ))
        .unwrap();
    let caller: Arc<str> = Arc::from("bench");
    let req = |view: View| ValidateRequest {
        caller: caller.clone(),
        token: created.session_jwt.clone(),
        max_token_age_seconds: 0,
        session_duration_minutes: 0,
        client: Default::default(),
        may_extend_by_jwt: false,
        view,
    };
    rt.block_on(sessions.validate(req(View::Full))).unwrap();
    for (view, name) in [(View::Full, "FULL"), (View::Basic, "BASIC")] {
        c.bench_function(
            &format!("ValidateSession: cached JWT, {name}, domain only"),
            |b| b.iter(|| black_box(rt.block_on(sessions.validate(req(view))).unwrap())),
        );
        c.bench_function(
            &format!("ValidateSession: cached JWT, {name}, domain + response + encode"),
            |b| {
                b.iter(|| {
                    let v = rt.block_on(sessions.validate(req(view))).unwrap();
                    let resp = sessiongate::grpc::convert::verdict_out(v, view);
                    black_box(resp.encode_to_vec())
                })
            },
        );
    }
}

criterion_group!(benches, tokens, flows, cached_validation);
criterion_main!(benches);
