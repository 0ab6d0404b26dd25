//! `odds-processor`: the stage that turns Kafka odds updates into durable read models.
//!
//! It consumes `odds_updates` in a consumer group, writes each batch to Postgres in one
//! transaction (history + version-guarded current snapshot), updates the Redis cache and
//! publishes what advanced, dead-letters what is not a valid update, and commits offsets only
//! after the batch is durable. See [`processor`] for the phases, [`run`] for the service and
//! [`trace`] for its part of a sampled update's trace.

pub mod batch;
pub mod brokers;
pub mod cache;
pub mod checks;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod heartbeat;
pub mod metrics;
pub mod processor;
mod redis_link;
pub mod run;
pub mod store;
pub mod trace;

pub use config::{Cli, Command, MigrateArgs, ProcessorConfig, RunArgs};
pub use metrics::Metrics;
pub use processor::{DurableBatch, Processor, StepOutcome};
pub use store::{Applied, Store};

/// Why the processor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("kafka consumer: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Dlq(#[from] dlq::DlqError),
    /// The DLQ refused a dead letter for good: poison records can no longer leave their
    /// partition, so the processor stops (readiness says so first) and exits non-zero.
    #[error("the dead-letter queue refuses records for good; stopping: {0}")]
    DlqRefused(#[source] dlq::DlqError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Runtime(#[from] odds_runtime::RuntimeError),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("connecting to the database: {0}")]
    Database(#[from] sqlx::Error),
}
