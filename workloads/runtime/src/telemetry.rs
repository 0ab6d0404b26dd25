//! Structured logging via `tracing`: JSON lines in clusters, readable text on a terminal; and
//! the pipeline stages' entry point that also sets up trace export ([`init_with_tracing`]).

use crate::RuntimeError;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (e.g. `info,odds_ingest=debug`).
pub fn init(format: LogFormat, filter: &str) -> Result<(), RuntimeError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| RuntimeError::Logging(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| RuntimeError::Logging(e.to_string()))
}

/// [`init`], then OpenTelemetry tracing from the `OTEL_*` environment (see
/// [`crate::otel::config`]), with `service` as the default service name. Must run inside the
/// Tokio runtime; keep the guard and shut it down before exiting.
pub fn init_with_tracing(
    format: LogFormat,
    filter: &str,
    service: &'static str,
) -> Result<crate::otel::TracingGuard, RuntimeError> {
    init(format, filter)?;
    crate::otel::init_from_env(service)
}
