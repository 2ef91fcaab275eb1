//! The paths measured, what each sends, and one measurement of one path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sessiongate::grpc::pb;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::run::Run;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Path {
    Baseline,
    /// The FULL view (claims, session), as callers that do not ask for a view get it.
    JwtCached,
    JwtCachedBasic,
    JwtUncached,
    LegacyRs256,
    LegacyEs256,
    LegacyEdDsa,
    Opaque,
    OpaqueBasic,
    ResolveFlow,
    /// A tiny malformed token: the fixed cost of a ValidateSession call (auth, layers,
    /// metrics, a small response), for comparison.
    Malformed,
    /// A malformed token as long as the cached JWT, BASIC: what carrying such a token through
    /// HTTP/2, gRPC and the layers costs, without any verification — the floor of a cached
    /// BASIC validation.
    MalformedJwtSized,
    /// Envoy's `Authorization/Check` of a request carrying the cached JWT: the edge's path.
    EnvoyCheck,
    /// The same Check with a malformed bearer token as long as the JWT, denied without any
    /// verification: what reading Envoy's request and writing an answer costs, the floor of
    /// [`Path::EnvoyCheck`] as [`Path::MalformedJwtSized`] is of a BASIC validation.
    EnvoyCheckFloor,
    /// HTTP forward-auth (`GET /auth`, as nginx `auth_request` asks it) of a request carrying
    /// the cached JWT, over HTTP/1.1 keep-alive connections on the HTTP port.
    ForwardAuth,
}

impl Path {
    /// Paths that need a never-seen token per request.
    pub(crate) fn fresh(self) -> bool {
        matches!(
            self,
            Path::JwtUncached | Path::LegacyRs256 | Path::LegacyEs256 | Path::LegacyEdDsa
        )
    }

    /// Paths whose verdict is INVALID.
    pub(crate) fn malformed(self) -> bool {
        matches!(
            self,
            Path::Malformed | Path::MalformedJwtSized | Path::EnvoyCheckFloor
        )
    }

    /// The token of a malformed path (`jwt`: the cached JWT, whose length it takes).
    pub(crate) fn malformed_token(self, jwt: &str) -> String {
        match self {
            Path::MalformedJwtSized | Path::EnvoyCheckFloor => "!".repeat(jwt.len()),
            _ => std::env::var("MALFORMED").unwrap_or("not-a-token".to_owned()),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Path::Baseline => "Health/Check (baseline)",
            Path::JwtCached => "ValidateSession native JWT, cache hit, FULL",
            Path::JwtCachedBasic => "ValidateSession native JWT, cache hit, BASIC",
            Path::JwtUncached => "ValidateSession native JWT, uncached RS256",
            Path::LegacyRs256 => "ValidateSession legacy JWT, uncached RS256",
            Path::LegacyEs256 => "ValidateSession legacy JWT, uncached ES256",
            Path::LegacyEdDsa => "ValidateSession legacy JWT, uncached EdDSA",
            Path::Opaque => "ValidateSession native opaque via Redis, FULL",
            Path::OpaqueBasic => "ValidateSession native opaque via Redis, BASIC",
            Path::ResolveFlow => "ResolveFlow, device id, 50% rollout",
            Path::Malformed => "ValidateSession, malformed token (fixed cost)",
            Path::MalformedJwtSized => "ValidateSession, malformed JWT-sized token, BASIC (floor)",
            Path::EnvoyCheck => "Envoy Authorization/Check, native JWT, cache hit",
            Path::EnvoyCheckFloor => "Envoy Authorization/Check, malformed JWT-sized token (floor)",
            Path::ForwardAuth => "HTTP/1.1 forward-auth /auth, native JWT, cache hit",
        }
    }
    /// The view a ValidateSession path asks for.
    pub(crate) fn view(self) -> pb::ValidateView {
        match self {
            Path::JwtCachedBasic | Path::OpaqueBasic | Path::MalformedJwtSized => {
                pb::ValidateView::Basic
            }
            _ => pb::ValidateView::Unspecified,
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Path::Baseline => "baseline",
            Path::JwtCached => "jwt_cached",
            Path::JwtCachedBasic => "jwt_cached_basic",
            Path::JwtUncached => "jwt_uncached",
            Path::LegacyRs256 => "legacy_rs256",
            Path::LegacyEs256 => "legacy_es256",
            Path::LegacyEdDsa => "legacy_eddsa",
            Path::Opaque => "opaque",
            Path::OpaqueBasic => "opaque_basic",
            Path::ResolveFlow => "resolve_flow",
            Path::Malformed => "malformed",
            Path::MalformedJwtSized => "malformed_jwt_sized",
            Path::EnvoyCheck => "envoy_check",
            Path::EnvoyCheckFloor => "envoy_check_floor",
            Path::ForwardAuth => "forward_auth",
        }
    }
    /// The targets of docs/performance.md: minimum throughput ratio and p99 allowance over baseline (µs).
    pub(crate) fn target(self) -> Option<(f64, f64)> {
        match self {
            Path::Baseline => None,
            Path::JwtCachedBasic => Some((0.85, 20.0)),
            Path::JwtCached => Some((0.6, 20.0)),
            Path::JwtUncached | Path::LegacyRs256 => Some((0.28, 40.0)),
            // No target of their own (docs/performance.md): reported for comparison.
            Path::LegacyEs256
            | Path::LegacyEdDsa
            | Path::Malformed
            | Path::MalformedJwtSized
            | Path::EnvoyCheckFloor
            | Path::ForwardAuth => None,
            Path::Opaque | Path::OpaqueBasic => Some((0.6, 50.0)),
            Path::ResolveFlow => Some((0.85, 20.0)),
            Path::EnvoyCheck => Some((0.8, 20.0)),
        }
    }
}

/// What the paths send.
pub(crate) struct Fixtures {
    /// The server's HTTP port (forward-auth).
    pub(crate) http_addr: String,
    pub(crate) cached_jwt: String,
    pub(crate) opaque: Vec<String>,
    /// Fresh tokens per path, consumed front to back across rounds.
    pub(crate) fresh: HashMap<&'static str, std::sync::Mutex<std::vec::IntoIter<String>>>,
}

/// Runs `path` with `concurrency` requests in flight for `dur`, or until `limit` requests.
pub(crate) async fn measure(
    path: Path,
    channel: &Channel,
    fx: &Arc<Fixtures>,
    concurrency: usize,
    dur: Duration,
    limit: Option<usize>,
) -> Run {
    let deadline = Instant::now() + dur;
    let issued = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let channel = channel.clone();
            let fx = fx.clone();
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut run = Run::new();
                let mut health = HealthClient::new(channel.clone());
                let mut session = tonic::client::Grpc::new(channel);
                let http = reqwest::Client::new();
                let mut i = w;
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if limit.map_or(Instant::now() >= deadline, |l| n >= l) {
                        break;
                    }
                    if matches!(path, Path::EnvoyCheck | Path::EnvoyCheckFloor) {
                        let (token, want) = if path.malformed() {
                            (path.malformed_token(&fx.cached_jwt), tonic::Code::Unauthenticated)
                        } else {
                            (fx.cached_jwt.clone(), tonic::Code::Ok)
                        };
                        let mut req = tonic::Request::new(envoy_check(&token));
                        req.metadata_mut()
                            .insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer loadgen-key"));
                        let t0 = Instant::now();
                        let good = matches!(
                            check_lean(&mut session, req).await,
                            Ok(CheckStatusOnly { status: Some(s) }) if s.code == want as i32
                        );
                        run.record(good, t0.elapsed());
                        continue;
                    }
                    if path == Path::ForwardAuth {
                        let t0 = Instant::now();
                        let r = http
                            .get(format!("http://{}/auth", fx.http_addr))
                            .bearer_auth(&fx.cached_jwt)
                            .header(FORWARD_AUTH_CALLER, crate::API_KEY)
                            .send()
                            .await;
                        run.record(r.is_ok_and(|r| r.status() == 200), t0.elapsed());
                        continue;
                    }
                    if path == Path::ResolveFlow {
                        i += concurrency;
                        let mut req = tonic::Request::new(pb::ResolveFlowRequest {
                            flow: "login".into(),
                            device_id: format!("device-{}", i % 100_000),
                            country: "NO".into(),
                            ..Default::default()
                        });
                        req.metadata_mut()
                            .insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer loadgen-key"));
                        let t0 = Instant::now();
                        let good = matches!(resolve_lean(&mut session, req).await, Ok(f) if f.flow != 0);
                        run.record(good, t0.elapsed());
                        continue;
                    }
                    let token = match path {
                        Path::Baseline | Path::ResolveFlow | Path::EnvoyCheck | Path::EnvoyCheckFloor => None,
                        Path::JwtCached | Path::JwtCachedBasic => Some(fx.cached_jwt.clone()),
                        Path::Malformed | Path::MalformedJwtSized => Some(path.malformed_token(&fx.cached_jwt)),
                        Path::Opaque | Path::OpaqueBasic => Some(fx.opaque[i % fx.opaque.len()].clone()),
                        p => match fx.fresh.get(p.key()).and_then(|m| m.lock().expect("lock").next()) {
                            Some(t) => Some(t),
                            None => break,
                        },
                    };
                    i += concurrency;
                    let t0 = Instant::now();
                    let good = match token {
                        None => health
                            .check(HealthCheckRequest { service: String::new() })
                            .await
                            .is_ok(),
                        Some(token) => {
                            let mut req = tonic::Request::new(pb::ValidateSessionRequest {
                                token,
                                view: path.view() as i32,
                                ..Default::default()
                            });
                            req.metadata_mut()
                                .insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer loadgen-key"));
                            let want = if path.malformed() { pb::Verdict::Invalid } else { pb::Verdict::Valid };
                            matches!(validate_lean(&mut session, req).await, Ok(v) if v.verdict == want as i32)
                        }
                    };
                    run.record(good, t0.elapsed());
                }
                run
            })
        })
        .collect();
    Run::gather(tasks, start).await
}

/// The first two fields of `ValidateSessionResponse`. The load generator shares the server's
/// two cores, so it decodes only what it checks (as a gateway that only needs the verdict
/// would): the rest of the response is skipped by prost as unknown fields. The server still
/// builds and sends the whole response.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct VerdictOnly {
    #[prost(int32, tag = "1")]
    pub(crate) verdict: i32,
    #[prost(int32, tag = "2")]
    pub(crate) reason: i32,
}

pub(crate) async fn validate_lean(
    grpc: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<pb::ValidateSessionRequest>,
) -> Result<VerdictOnly, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<pb::ValidateSessionRequest, VerdictOnly>::default();
    let path =
        http::uri::PathAndQuery::from_static("/sessiongate.v1.SessionGateService/ValidateSession");
    grpc.unary(req, path, codec).await.map(|r| r.into_inner())
}

/// The first two fields of `ResolveFlowResponse` (flow, reason), decoded lean for the same
/// reason as [`VerdictOnly`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FlowOnly {
    #[prost(int32, tag = "1")]
    pub(crate) flow: i32,
    #[prost(int32, tag = "2")]
    pub(crate) reason: i32,
}

pub(crate) async fn resolve_lean(
    grpc: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<pb::ResolveFlowRequest>,
) -> Result<FlowOnly, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<pb::ResolveFlowRequest, FlowOnly>::default();
    let path =
        http::uri::PathAndQuery::from_static("/sessiongate.v1.SessionGateService/ResolveFlow");
    grpc.unary(req, path, codec).await.map(|r| r.into_inner())
}

/// The status of a `CheckResponse` (`google.rpc.Status`'s code), decoded lean for the same
/// reason as [`VerdictOnly`]: Envoy's own types would also build the answer's headers and
/// dynamic metadata (a map of `Value`s) on the load generator's core.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CheckStatusOnly {
    #[prost(message, optional, tag = "1")]
    pub(crate) status: Option<StatusCodeOnly>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatusCodeOnly {
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
}

pub(crate) async fn check_lean(
    grpc: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
) -> Result<CheckStatusOnly, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<
        envoy_types::ext_authz::v3::pb::CheckRequest,
        CheckStatusOnly,
    >::default();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    grpc.unary(req, path, codec).await.map(|r| r.into_inner())
}

/// The header a forward-auth proxy sends its caller key in.
pub(crate) const FORWARD_AUTH_CALLER: &str = "x-sessiongate-caller";

/// What Envoy asks about a `GET /orders` that carries `token` as its bearer token.
pub(crate) fn envoy_check(token: &str) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    host: "shop.example.com".into(),
                    headers: [
                        ("authorization".to_owned(), format!("Bearer {token}")),
                        (":authority".to_owned(), "shop.example.com".to_owned()),
                        ("user-agent".to_owned(), "Mozilla/5.0".to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
