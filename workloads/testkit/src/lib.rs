//! Real servers for tests, one set per test, cleaned up on drop.
//!
//! The pipeline's guarantees are about what Postgres, Redis and Kafka actually do (transactions,
//! atomic scripts, consumer-group commits), so tests talk to real servers, never mocks of our
//! own making. Each test gets its own database, its own `redis-server` and its own Kafka mock
//! cluster, so tests run in parallel without seeing each other's data and nobody has to start
//! anything by hand. Tracing tests get a real OTLP receiver ([`OtlpReceiver`]); the benchmarks
//! read who used the CPU and memory meanwhile from [`usage`].

mod fixtures;
mod http;
mod kafka;
mod otlp;
mod postgres;
mod process;
mod redis_server;
pub mod usage;

pub use fixtures::{sample_update, sample_update_in};
pub use http::{echo_peer, http_get, http_get_within, HttpResponse};
pub use kafka::{read_topic, ReadRecord, TestKafka};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::{PostgresDurability, PostgresServer, TestDatabase};
pub use process::{free_port, output_with_closed_stdout};
pub use redis_server::TestRedis;

/// Why a test server could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
