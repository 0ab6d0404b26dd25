//! Pipeline stage 1: supplier WebSocket in, Kafka out, nothing lost.
//!
//! [`supplier`] keeps a WebSocket connection to the supplier alive and hands frames over a
//! small bounded channel; [`ingest`] decides for each frame whether it is a valid update or a
//! reject; [`publisher`] produces to `odds_updates` (keyed by event id, idempotent, acks=all)
//! or to the DLQ, holding a bounded number of records in flight. When Kafka stalls, the
//! in-flight bound fills, the channel fills, and the supplier socket stops being read: memory
//! stays flat and nothing already accepted is dropped.

pub mod config;
pub mod ingest;
pub mod metrics;
pub mod publisher;
pub mod supplier;
pub mod versions;

pub use config::IngestConfig;
pub use ingest::{run, Ingest};

/// Why ingest could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Runtime(#[from] odds_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("fatal Kafka producer error (accepted records not yet delivered were counted as undelivered): {0}")]
    FatalProducer(String),
    #[error("the dead-letter queue refuses records for good (accepted records not yet delivered were counted as undelivered): {0}")]
    DlqRefused(String),
}
