//! Logging and metrics set-up.
//!
//! Logs go to stderr: human-readable by default, JSON with `SESSIONGATE_LOG_FORMAT=json`;
//! `RUST_LOG` filters (default `info`). Metrics go to one process-wide Prometheus recorder
//! rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // try_init: a second call (tests that build several apps) is a no-op, not a panic.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init(),
        LogFormat::Human => registry.with(fmt).try_init(),
    };
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
            handle
        })
        .clone()
}

/// `sessiongate_migration_validations_total{client, provider, origin}`: VALID verdicts by
/// calling client, provider and side of the migration — the migration's progress:
/// `sum by (client) (rate(…{origin="new"}[5m])) / sum by (client) (rate(…[5m]))`.
///
/// Handles are resolved once per label set (clients and providers are configured, so the set
/// is small) instead of on every validation.
#[derive(Default)]
pub struct MigrationProgress {
    handles: std::sync::RwLock<
        std::collections::HashMap<String, std::collections::HashMap<String, [metrics::Counter; 2]>>,
    >,
}

impl MigrationProgress {
    pub fn record(&self, client: &str, provider: &str, new: bool) {
        let i = usize::from(new);
        if let Some(c) = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(client)
            .and_then(|m| m.get(provider))
        {
            c[i].increment(1);
            return;
        }
        let pair = ["legacy", "new"].map(|origin| {
            metrics::counter!(
                "sessiongate_migration_validations_total",
                "client" => client.to_owned(),
                "provider" => provider.to_owned(),
                "origin" => origin
            )
        });
        pair[i].increment(1);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client.to_owned())
            .or_default()
            .insert(provider.to_owned(), pair);
    }
}
