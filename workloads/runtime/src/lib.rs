//! The service runtime every pipeline stage shares.
//!
//! Each stage is a long-running process on Kubernetes, and they all need the same operational
//! surface: structured logs ([`telemetry`]), `/healthz` `/readyz` `/metrics` ([`ops`]),
//! readiness that reflects real dependencies ([`Readiness`]), and a clean stop on SIGTERM
//! ([`shutdown`]). Keeping it here means the operator can probe every workload the same way.

pub mod cli;
pub mod hops;
pub mod kafka;
pub mod metrics;
pub mod ops;
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
}
