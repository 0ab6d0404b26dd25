//! Environment variable names the stages read, in one place.
//!
//! The operator writes these into ConfigMaps and pod specs, the demo launcher sets them on the
//! processes it starts, and each stage's clap config reads them (`env = env::KAFKA_BROKERS`).
//! Because all three name the same constant, renaming a variable is one edit here and the
//! compiler finds every user; no test has to parse another crate's source to catch drift.

// --- every service (the shared runtime's ops server and logging) ---
/// Address of the `/healthz`, `/readyz`, `/metrics` server.
pub const HTTP_ADDR: &str = "HTTP_ADDR";
/// `json` or `text` log lines.
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// `tracing` filter directives.
pub const RUST_LOG: &str = "RUST_LOG";
/// Address a stage serves its own protocol on (simulator `/ws`, odds-service REST and WS).
pub const LISTEN_ADDR: &str = "LISTEN_ADDR";

// --- tracing (every stage; the standard OpenTelemetry names, read by the shared runtime) ---
/// Collector base URL (`http://host:4318`); unset: tracing off.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The sampler's ratio (`0.01` keeps 1 % of updates).
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// The SDK's batch exporter: milliseconds between exports (default 5000).
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";

// --- Kafka clients (ingest, processor) ---
pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
pub const KAFKA_TOPIC: &str = "KAFKA_TOPIC";
pub const KAFKA_DLQ_TOPIC: &str = "KAFKA_DLQ_TOPIC";
/// `KAFKA_PROP_FETCH_WAIT_MAX_MS=10` sets librdkafka's `fetch.wait.max.ms`.
pub const KAFKA_PROP_PREFIX: &str = "KAFKA_PROP_";

// --- storage (processor, odds-service) ---
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const DATABASE_READ_URL: &str = "DATABASE_READ_URL";
pub const DATABASE_MAX_CONNECTIONS: &str = "DATABASE_MAX_CONNECTIONS";
pub const DATABASE_STATEMENT_TIMEOUT_MS: &str = "DATABASE_STATEMENT_TIMEOUT_MS";
pub const DATABASE_ACQUIRE_TIMEOUT_MS: &str = "DATABASE_ACQUIRE_TIMEOUT_MS";
pub const DATABASE_LOCK_TIMEOUT_MS: &str = "DATABASE_LOCK_TIMEOUT_MS";
pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_TIMEOUT_MS: &str = "REDIS_TIMEOUT_MS";

// --- supplier-simulator ---
pub const SIM_EVENTS: &str = "SIM_EVENTS";
pub const SIM_RATE: &str = "SIM_RATE";
pub const SIM_SEED: &str = "SIM_SEED";
pub const SIM_MARKETS: &str = "SIM_MARKETS";
pub const SIM_BURST: &str = "SIM_BURST";
pub const SIM_TOTAL: &str = "SIM_TOTAL";
pub const SIM_CLIENT_QUEUE: &str = "SIM_CLIENT_QUEUE";
pub const SIM_VERSION_BASE: &str = "SIM_VERSION_BASE";

// --- odds-ingest ---
pub const SUPPLIER_URL: &str = "SUPPLIER_URL";
pub const SUPPLIER_PING_INTERVAL_MS: &str = "SUPPLIER_PING_INTERVAL_MS";
pub const MAX_IN_FLIGHT: &str = "MAX_IN_FLIGHT";
pub const KAFKA_LINGER_MS: &str = "KAFKA_LINGER_MS";
pub const KAFKA_COMPRESSION: &str = "KAFKA_COMPRESSION";
pub const RECONNECT_MIN_MS: &str = "RECONNECT_MIN_MS";
pub const RECONNECT_MAX_MS: &str = "RECONNECT_MAX_MS";
pub const MAX_WS_MESSAGE_BYTES: &str = "MAX_WS_MESSAGE_BYTES";
pub const SHUTDOWN_FLUSH_MS: &str = "SHUTDOWN_FLUSH_MS";

// --- odds-processor ---
pub const KAFKA_GROUP: &str = "KAFKA_GROUP";
pub const BATCH_MAX: &str = "BATCH_MAX";
pub const BATCH_MAX_WAIT_MS: &str = "BATCH_MAX_WAIT_MS";
pub const DB_RETRY_MAX_BACKOFF_MS: &str = "DB_RETRY_MAX_BACKOFF_MS";

// --- odds-service ---
pub const WS_MAX_CONNECTIONS: &str = "WS_MAX_CONNECTIONS";
pub const WS_MAX_SUBSCRIPTIONS: &str = "WS_MAX_SUBSCRIPTIONS";
pub const WS_MAX_MESSAGE_BYTES: &str = "WS_MAX_MESSAGE_BYTES";
pub const WS_ALLOWED_ORIGINS: &str = "WS_ALLOWED_ORIGINS";
pub const WS_MAX_PENDING_EVENTS: &str = "WS_MAX_PENDING_EVENTS";
pub const WS_SLOW_CLIENT_TIMEOUT_MS: &str = "WS_SLOW_CLIENT_TIMEOUT_MS";
pub const WS_SEND_BUFFER_BYTES: &str = "WS_SEND_BUFFER_BYTES";
pub const WS_SPLIT_WRITES_AT: &str = "WS_SPLIT_WRITES_AT";
pub const WS_PING_INTERVAL_SECS: &str = "WS_PING_INTERVAL_SECS";
pub const HEARTBEAT_TIMEOUT_MS: &str = "HEARTBEAT_TIMEOUT_MS";
pub const UPSTREAM_MAX_SILENCE_MS: &str = "UPSTREAM_MAX_SILENCE_MS";
