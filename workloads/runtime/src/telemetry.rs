//! Structured logging via `tracing`: JSON lines in clusters, readable text on a terminal.

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
