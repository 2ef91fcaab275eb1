//! Logs and traces: the log format, and OpenTelemetry export from the standard `OTEL_*`
//! variables.

use serde::Serialize;

use super::{Check, ENV_LOG_FORMAT, LogFormat, Vars};

/// OpenTelemetry export, from the standard `OTEL_*` variables.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go there
    /// over OTLP/gRPC. `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` (default `sessiongate`).
    pub service_name: String,
}

/// The log format (`SESSIONGATE_LOG_FORMAT` wins over the file's `log_format`) and the
/// span export.
pub(super) fn build(
    c: &mut Check,
    vars: &dyn Vars,
    file_format: Option<LogFormat>,
) -> (LogFormat, TelemetryConfig) {
    let log_format = match vars.get(ENV_LOG_FORMAT).as_deref() {
        Some("json") => LogFormat::Json,
        Some("human") | Some("") => LogFormat::Human,
        None => file_format.unwrap_or(LogFormat::Human),
        Some(other) => {
            c.fail_at(
                &format!("environment variable {ENV_LOG_FORMAT}"),
                ENV_LOG_FORMAT,
                format!("`{other}` is not a log format; use `human` or `json`"),
            );
            LogFormat::Human
        }
    };

    let otlp_endpoint = vars
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.trim().is_empty());
    if let Some(e) = &otlp_endpoint
        && !url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        c.fail_at(
            "environment variable OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("`{e}` is not an http(s) URL of an OTLP/gRPC collector (e.g. http://otel-collector:4317)"),
        );
    }
    let telemetry = TelemetryConfig {
        otlp_endpoint,
        service_name: vars
            .get("OTEL_SERVICE_NAME")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "sessiongate".into()),
    };

    (log_format, telemetry)
}
