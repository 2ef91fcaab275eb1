//! Tower layers in front of every RPC: caller authentication and per-RPC metrics/tracing.
//!
//! They work on HTTP requests (the path names the RPC), before any message is decoded, so an
//! unauthenticated caller costs no protobuf decoding and no domain work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{Either, Ready, ready};
use http::header::AUTHORIZATION;
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::method;
use crate::auth::CallerKeys;
use crate::telemetry::RpcMetrics;

// === Auth ===

/// Checks the caller's API key against the RPC's scope and puts the [`crate::caller::Caller`]
/// into the request's extensions. Health and reflection pass untouched.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<CallerKeys>,
}

impl AuthLayer {
    pub fn new(keys: Arc<CallerKeys>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<CallerKeys>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let m = method(req.uri().path());
        if let Some(scope) = m.scope {
            let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            let forwarded_cert = req
                .headers()
                .get(crate::auth::FORWARDED_CLIENT_CERT)
                .map(|v| v.as_bytes());
            match self.keys.authorize_call(header, forwarded_cert, scope) {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(e) => {
                    metrics::counter!("sessiongate_caller_rejections_total", "method" => m.name, "reason" => e.reason.as_str())
                        .increment(1);
                    return Either::Left(ready(Ok(tonic::Status::from(e).into_http())));
                }
            }
        }
        Either::Right(self.inner.call(req))
    }
}

// === Observe ===

/// Counts every RPC by method and status code, records its latency, and runs it inside a
/// `grpc` span that carries the method name.
#[derive(Clone, Default)]
pub struct ObserveLayer {
    metrics: Arc<RpcMetrics>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let m = method(req.uri().path());
        let name = m.name;
        // DEBUG: exported as a trace span when OTLP export is on (its layer takes sessiongate's
        // DEBUG spans), free otherwise — at the default `info` no layer wants it, so it is
        // never built (building it for the log layer cost ~10% of a cached validation).
        // Named and attributed per OpenTelemetry's RPC conventions: the fully qualified method
        // (`_OTHER` for a path that is none of ours), the status code's name, an error status
        // for the codes that are the server's fault.
        let span = tracing::debug_span!(
            "grpc",
            otel.name = m.full,
            otel.kind = "server",
            rpc.system.name = "grpc",
            rpc.method = m.full,
            rpc.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Continue the caller's trace (W3C traceparent in the gRPC metadata).
        if req.headers().contains_key("traceparent") {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&crate::telemetry::HeaderExtractor(req.headers()))
            });
            let _ = span.set_parent(parent);
        }
        let start = Instant::now();
        let rpc_metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await;
                let code = match &res {
                    // Errors are sent trailers-only, so their status is in the headers; a
                    // unary success carries `grpc-status: 0` in the trailers instead.
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                        .unwrap_or(tonic::Code::Ok),
                    Err(_) => tonic::Code::Unknown,
                };
                let server_fault = matches!(
                    code,
                    tonic::Code::Unknown
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unimplemented
                        | tonic::Code::Internal
                        | tonic::Code::Unavailable
                        | tonic::Code::DataLoss
                );
                let code = code_name(code);
                let span = tracing::Span::current();
                span.record("rpc.response.status_code", code);
                if server_fault {
                    span.record("error.type", code);
                    span.record("otel.status_code", "ERROR");
                }
                let elapsed = start.elapsed();
                rpc_metrics.record(name, code, elapsed);
                tracing::debug!(code, micros = elapsed.as_micros() as u64, "rpc done");
                res
            }
            .instrument(span),
        )
    }
}

/// A `&'static` name per code, for metric labels.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
