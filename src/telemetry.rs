//! Logging, tracing and metrics set-up.
//!
//! Logs go to stderr: human-readable by default, JSON with `SESSIONGATE_LOG_FORMAT=json`;
//! `RUST_LOG` filters them (default `info`). Spans — one per RPC, continued from the caller's
//! `traceparent`, and one per Redis, JWKS and UserInfo call — are exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Metrics go to one process-wide Prometheus recorder
//! rendered at `/metrics`. Nothing secret is ever a field: spans carry method names, codes,
//! provider names and key *kinds*, never tokens, keys or key names.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is queued.
#[must_use = "dropping it without shutdown() loses the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export (call after the server stopped, outside async code).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("sessiongate: flushing spans at exit failed: {e}");
        }
    }
}

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry export to {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Installs the global tracing subscriber (logs, and span export when configured). Call once,
/// from inside the tokio runtime: the exporter runs on it. `env` goes on the exported
/// resource, with the service's name and version.
pub fn init(
    format: LogFormat,
    cfg: &TelemetryConfig,
    env: &'static str,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (subscriber, provider, dispatch) = subscriber(format, cfg, env, filter)?;
    // try_init: a second call (tests that build several apps) is a no-op, not a panic.
    let _ = subscriber.try_init();
    // The formatter's handle on the dispatch, taken here, outside any event, and only when
    // spans are exported (without, no span has ids to look up). A layer that received it
    // would have to be one more layer of the subscriber, and a layer without a filter
    // enables every callsite — h2's trace spans included, a quarter of the server's CPU when
    // one was tried.
    if provider.is_some() {
        let _ = dispatch.set(tracing::dispatcher::get_default(Dispatch::downgrade));
    }
    Ok(Telemetry { provider })
}

/// The subscriber [`init`] installs: logs through `filter`, spans exported when configured.
#[allow(clippy::type_complexity)]
fn subscriber(
    format: LogFormat,
    cfg: &TelemetryConfig,
    env: &'static str,
    filter: EnvFilter,
) -> Result<
    (
        impl Subscriber + Send + Sync + 'static,
        Option<SdkTracerProvider>,
        Arc<OnceLock<WeakDispatch>>,
    ),
    TelemetryError,
> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let dispatch = Arc::new(OnceLock::new());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .map_event_format(|json| WithTraceIds {
                inner: json,
                dispatch: dispatch.clone(),
            })
            .with_filter(filter)
            .boxed(),
        LogFormat::Human => fmt.with_filter(filter).boxed(),
    };
    let (spans, provider) = match &cfg.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| TelemetryError {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            // The batch processor that runs on tokio: the stable one exports from its own
            // thread, where tonic's exporter finds no reactor and drops every span.
            let processor =
                opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(cfg.service_name.clone())
                        .with_attributes([
                            opentelemetry::KeyValue::new(
                                "service.version",
                                env!("CARGO_PKG_VERSION"),
                            ),
                            opentelemetry::KeyValue::new("deployment.environment.name", env),
                        ])
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("sessiongate"))
                // Dependency-call spans are DEBUG (free when not exported); logs stay at
                // RUST_LOG's level.
                .with_filter(EnvFilter::new("info,sessiongate=debug"))
                .boxed();
            (Some(layer), Some(provider))
        }
    };
    let subscriber = tracing_subscriber::registry().with(logs).with(spans);
    Ok((subscriber, provider, dispatch))
}

/// JSON log lines written inside a traced span carry its `trace_id` and `span_id` (W3C hex, as
/// OpenTelemetry's log data model names them) at the top level, where log stores (Loki,
/// Elasticsearch, Cloud Logging) look to link a line to its trace. Without span export there
/// are no ids, and lines are as tracing-subscriber writes them.
struct WithTraceIds<F> {
    inner: F,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = self.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

impl<F> WithTraceIds<F> {
    /// The ids of the innermost span around the event that is exported (spans the exporter's
    /// filter leaves out have none).
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(TraceId, SpanId)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        // The dispatch is asked through its weak handle: inside an event, the thread's
        // default dispatcher is not reachable (tracing does not re-enter it).
        let dispatch = self.dispatch.get()?.upgrade()?;
        ctx.event_scope()?.find_map(|span| {
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        })
    }
}

/// Reads a W3C `traceparent` (and `tracestate`) from request headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Latency buckets in seconds: sessiongate answers in microseconds, upstream calls in
/// milliseconds to seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding program's):
            // then ours renders empty rather than stealing theirs.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only its own view"
                );
            }
            describe();
            handle
        })
        .clone()
}

/// Every metric sessiongate records, with its `# HELP` text (a unit test checks that no metric
/// name in the source is missing here).
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "sessiongate_build_info",
        Kind::Gauge,
        "Always 1; the version and env that run, as labels.",
    ),
    (
        "sessiongate_grpc_requests_total",
        Kind::Counter,
        "gRPC calls by method and status code.",
    ),
    (
        "sessiongate_grpc_request_duration_seconds",
        Kind::Histogram,
        "gRPC call latency by method, from the first byte in to the last out.",
    ),
    (
        "sessiongate_caller_rejections_total",
        Kind::Counter,
        "Calls refused before decoding: no or a wrong caller key, or a key without the scope.",
    ),
    (
        "sessiongate_validations_total",
        Kind::Counter,
        "ValidateSession verdicts by origin, provider, verdict, reason and where they came from (cache, local verify, store).",
    ),
    (
        "sessiongate_migration_validations_total",
        Kind::Counter,
        "VALID verdicts by calling service, provider and side (new/legacy): the migration's progress.",
    ),
    (
        "sessiongate_migrations_total",
        Kind::Counter,
        "Legacy sessions migrated, by provider and whether the user was created or found.",
    ),
    (
        "sessiongate_auto_migrations_total",
        Kind::Counter,
        "Migrations made in passing (auto_migrate, the edge), by door and result.",
    ),
    (
        "sessiongate_sessions_created_total",
        Kind::Counter,
        "Native sessions minted.",
    ),
    (
        "sessiongate_sessions_revoked_total",
        Kind::Counter,
        "Native sessions revoked.",
    ),
    (
        "sessiongate_legacy_tokens_revoked_total",
        Kind::Counter,
        "Legacy tokens deny-listed.",
    ),
    (
        "sessiongate_backchannel_logouts_total",
        Kind::Counter,
        "Back-channel logouts received, by provider and result.",
    ),
    (
        "sessiongate_flow_decisions_total",
        Kind::Counter,
        "ResolveFlow answers by flow, result (new/legacy) and reason.",
    ),
    (
        "sessiongate_flow_errors_total",
        Kind::Counter,
        "ResolveFlow answers that fell back to LEGACY on an error.",
    ),
    (
        "sessiongate_flow_percentage",
        Kind::Gauge,
        "A flow's share of users on NEW, as configured now (file, overrides, ramp).",
    ),
    (
        "sessiongate_flow_ramp_step",
        Kind::Gauge,
        "The current step of a flow's ramp.",
    ),
    (
        "sessiongate_flow_ramp_paused",
        Kind::Gauge,
        "1 while a flow's ramp is paused (a guard tripped, or an admin paused it).",
    ),
    (
        "sessiongate_upstream_duration_seconds",
        Kind::Histogram,
        "Calls to providers (UserInfo, JWKS) by provider and call.",
    ),
    (
        "sessiongate_upstream_budget_exhausted_total",
        Kind::Counter,
        "UserInfo calls refused because this replica's budget for the provider was spent.",
    ),
    (
        "sessiongate_jwks_refreshes_total",
        Kind::Counter,
        "Key set fetches by issuer and result.",
    ),
    (
        "sessiongate_jwks_age_seconds",
        Kind::Gauge,
        "Age of the key set each issuer is verified with.",
    ),
    (
        "sessiongate_jwks_keys_rejected_total",
        Kind::Counter,
        "Keys of fetched key sets refused (too small, unsupported, malformed).",
    ),
    (
        "sessiongate_store_fast_failures_total",
        Kind::Counter,
        "Store calls refused at once (circuit open, too many in flight).",
    ),
    (
        "sessiongate_connections_open",
        Kind::Gauge,
        "Client connections open, both ports.",
    ),
    (
        "sessiongate_connections_retired_total",
        Kind::Counter,
        "Connections closed gracefully by age or idleness.",
    ),
    (
        "sessiongate_connections_cut_total",
        Kind::Counter,
        "Connections cut: handshake timeout, over the cap, or past their grace.",
    ),
    (
        "sessiongate_connections_failed_total",
        Kind::Counter,
        "Connections whose HTTP ended in an error (a protocol error, a reset): any calls in flight on them failed.",
    ),
    (
        "sessiongate_accept_errors_total",
        Kind::Counter,
        "Failed accepts (descriptors exhausted, …).",
    ),
    (
        "sessiongate_webhook_deliveries_total",
        Kind::Counter,
        "Webhook delivery attempts by webhook and result (delivered, failed, dead_lettered, redelivered, trimmed).",
    ),
    (
        "sessiongate_webhook_delivery_lag_seconds",
        Kind::Histogram,
        "Time from an event to its delivery, by webhook.",
    ),
    (
        "sessiongate_webhook_backlog",
        Kind::Gauge,
        "Events waiting in the delivering replica's lanes, by webhook.",
    ),
    (
        "sessiongate_webhook_lease_held",
        Kind::Gauge,
        "1 on the replica delivering a webhook's events.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The process' own metrics — `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// open and maximum descriptors, threads, start time — under the names every stock dashboard
/// and alert rule expects, read from `/proc` at each scrape (the `metrics-process` crate).
fn process() -> &'static metrics_process::Collector {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// Brings the process metrics up to date: call before rendering `/metrics`.
pub fn collect_process() {
    process().collect();
}

/// `# HELP` for every metric, and the build's identity.
fn describe() {
    process().describe();
    for (name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    metrics::gauge!("sessiongate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// A map of the counter caches. foldhash, not std's SipHash: the keys are names from the
/// configuration and label values of our own (no attacker picks them), and SipHash over them
/// (three look-ups for each of two counters) cost every validation 1 100–1 600 more
/// instructions (benches/instructions.py).
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Counter handles by label set, resolved once: resolving labels on every call (owned label
/// strings, a hash of the whole key in the recorder) cost more than a cached verdict itself.
/// Keyed by up to two configured names (client, provider: small sets) and `&'static` labels.
type Handles<K> = Map<String, Map<String, Map<K, metrics::Counter>>>;

struct CounterCache<K> {
    handles: std::sync::RwLock<Handles<K>>,
}

impl<K> Default for CounterCache<K> {
    fn default() -> Self {
        Self {
            handles: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> CounterCache<K> {
    fn increment(&self, a: &str, b: &str, labels: K, register: impl FnOnce() -> metrics::Counter) {
        if let Some(c) = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(a)
            .and_then(|m| m.get(b))
            .and_then(|m| m.get(&labels))
        {
            c.increment(1);
            return;
        }
        let c = register();
        c.increment(1);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default()
            .insert(labels, c);
    }
}

/// `sessiongate_grpc_requests_total{method, code}` and
/// `sessiongate_grpc_request_duration_seconds{method}`, recorded for every RPC (Health/Check
/// too), with their handles resolved once per method and code as the counters above are:
/// resolving them on every call cost each RPC ~1 500 instructions (benches/instructions.py).
/// Methods and codes are `&'static` names of a closed set (an unknown path is `_OTHER`).
#[derive(Default)]
pub struct RpcMetrics {
    requests: std::sync::RwLock<Map<(&'static str, &'static str), metrics::Counter>>,
    durations: std::sync::RwLock<Map<&'static str, metrics::Histogram>>,
}

impl RpcMetrics {
    pub fn record(&self, method: &'static str, code: &'static str, elapsed: std::time::Duration) {
        with_handle(
            &self.requests,
            (method, code),
            || metrics::counter!("sessiongate_grpc_requests_total", "method" => method, "code" => code),
            |c| c.increment(1),
        );
        with_handle(
            &self.durations,
            method,
            || metrics::histogram!("sessiongate_grpc_request_duration_seconds", "method" => method),
            |h| h.record(elapsed.as_secs_f64()),
        );
    }
}

/// Runs `f` on the handle cached under `key`, registering it first if there is none.
fn with_handle<K: std::hash::Hash + Eq, H>(
    handles: &std::sync::RwLock<Map<K, H>>,
    key: K,
    register: impl FnOnce() -> H,
    f: impl FnOnce(&H),
) {
    if let Some(h) = handles.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return f(h);
    }
    let mut handles = handles.write().unwrap_or_else(|p| p.into_inner());
    f(handles.entry(key).or_insert_with(register));
}

/// `sessiongate_migration_validations_total{client, provider, origin}`: VALID verdicts by
/// calling client, provider and side of the migration — the migration's progress:
/// `sum by (client) (rate(…{origin="new"}[5m])) / sum by (client) (rate(…[5m]))`.
#[derive(Default)]
pub struct MigrationProgress {
    counters: CounterCache<&'static str>,
}

impl MigrationProgress {
    pub fn record(&self, client: &str, provider: &str, new: bool) {
        let origin = if new { "new" } else { "legacy" };
        self.counters.increment(client, provider, origin, || {
            metrics::counter!(
                "sessiongate_migration_validations_total",
                "client" => client.to_owned(),
                "provider" => provider.to_owned(),
                "origin" => origin
            )
        });
    }
}

/// `sessiongate_validations_total{origin, provider, verdict, reason, source}`.
#[derive(Default)]
pub struct ValidationCounters {
    #[allow(clippy::type_complexity)]
    counters: CounterCache<(&'static str, &'static str, &'static str, &'static str)>,
}

impl ValidationCounters {
    pub fn record(
        &self,
        provider: &str,
        origin: &'static str,
        verdict: &'static str,
        reason: &'static str,
        source: &'static str,
    ) {
        self.counters
            .increment(provider, "", (origin, verdict, reason, source), || {
                metrics::counter!(
                    "sessiongate_validations_total",
                    "origin" => origin,
                    "provider" => provider.to_owned(),
                    "verdict" => verdict,
                    "reason" => reason,
                    "source" => source,
                )
            });
    }
}

#[cfg(test)]
mod subscriber_tests {
    use super::*;

    /// What the log filter leaves out is never built: not sessiongate's DEBUG spans (the
    /// RPC's, which only span export wants), not h2's or hyper's TRACE spans. Enabling them
    /// by mistake — any layer without a filter does — costs every call, the baseline too.
    #[test]
    fn only_what_is_logged_is_enabled_without_span_export() {
        let cfg = TelemetryConfig {
            otlp_endpoint: None,
            service_name: "sessiongate".into(),
        };
        for format in [LogFormat::Json, LogFormat::Human] {
            let (sub, _, _) = subscriber(format, &cfg, "test", EnvFilter::new("info")).unwrap();
            tracing::subscriber::with_default(sub, || {
                assert!(tracing::enabled!(tracing::Level::INFO));
                assert!(!tracing::enabled!(tracing::Level::DEBUG));
                assert!(!tracing::span_enabled!(tracing::Level::DEBUG));
                assert!(!tracing::span_enabled!(target: "h2::proto", tracing::Level::TRACE));
                assert!(!tracing::enabled!(target: "hyper", tracing::Level::TRACE));
            });
        }
    }
}

#[cfg(test)]
mod metric_tests {
    use super::METRICS;

    /// Every metric name in the source has its help text: a new metric without one fails here.
    #[test]
    fn every_metric_is_described() {
        fn walk(dir: &std::path::Path, out: &mut String) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut src = String::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut src,
        );
        let mut found = 0;
        for (at, _) in src.match_indices("\"sessiongate_") {
            let rest = &src[at + 1..];
            let Some(end) = rest.find('"') else { continue };
            let piece = &rest[..end];
            let is_metric = piece.len() > "sessiongate_".len()
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && piece != "sessiongate_descriptor";
            if is_metric {
                found += 1;
                assert!(
                    METRICS.iter().any(|(n, _, _)| *n == piece),
                    "{piece} has no help text in telemetry::METRICS"
                );
            }
        }
        assert!(found > 20, "found only {found} metric names");
    }

    /// The metric names in `text` that start with `prefix` (and are more than the prefix).
    fn metric_names(text: &str, prefix: &str) -> Vec<String> {
        text.match_indices(prefix)
            .map(|(at, _)| {
                text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            })
            .filter(|name| name.len() > prefix.len())
            .collect()
    }

    /// The shipped dashboard and alerts plot and alert on metrics that exist.
    #[test]
    fn the_dashboard_and_alerts_name_only_real_metrics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/monitoring");
        let mut named = 0;
        for file in ["alerts.yaml", "alerts.test.yaml", "dashboard.json"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for name in metric_names(&text, "sessiongate_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                named += 1;
                assert!(
                    METRICS.iter().any(|(n, _, _)| *n == family),
                    "{file} names {name}, which sessiongate does not record"
                );
            }
            // The process' own (metrics-process; `server::metrics_…` sees them served).
            for name in metric_names(&text, "process_") {
                assert!(
                    [
                        "process_cpu_seconds_total",
                        "process_resident_memory_bytes",
                        "process_open_fds",
                        "process_max_fds",
                        "process_threads",
                        "process_start_time_seconds",
                    ]
                    .contains(&name.as_str()),
                    "{file} names {name}, which the process collector does not record"
                );
            }
        }
        assert!(named > 30, "{named}");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap())
                .unwrap();
        assert!(dashboard["panels"].as_array().unwrap().len() > 10);
    }
}
