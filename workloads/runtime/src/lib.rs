//! The service runtime every pipeline stage shares.
//!
//! Each stage is a long-running process on Kubernetes, and they all need the same operational
//! surface: structured logs ([`telemetry`]), `/healthz` `/readyz` `/metrics` ([`ops`]),
//! readiness that reflects real dependencies ([`Readiness`]), a clean stop on SIGTERM
//! ([`shutdown`]), and distributed tracing that is off until configured ([`otel`]), all
//! started the same way by every stage's `main` ([`cli::StageProcess`]). Keeping it here
//! means the operator can probe (and configure) every workload the same way.

pub mod cli;
pub mod hops;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod otel;
mod readiness;
pub mod regressions;
pub mod shutdown;
pub mod telemetry;

pub use kafka::KafkaArgs;
pub use ops::{serve_http, OpsArgs};
pub use readiness::Readiness;
pub use telemetry::LogFormat;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("logging: {0}")]
    Logging(String),
    /// A metric could not be created or registered (a programming error: a name twice, a bad
    /// name or label).
    #[error("metrics registration: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("tracing: {0}")]
    Tracing(String),
}
