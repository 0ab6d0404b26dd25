//! The names of the processor's readiness checks (`/readyz` lists each): named once, below
//! every module that sets or reads one, so that the broker watcher and the heartbeat need not
//! import the processor loop that imports them.

/// False while librdkafka reports every broker unreachable (see [`crate::brokers`]).
pub const CHECK_KAFKA: &str = "kafka";
/// False once the DLQ refused a dead letter for good; the processor then stops.
pub const CHECK_DLQ: &str = "dlq";
pub const CHECK_POSTGRES: &str = "postgres";
/// False while cache writes fail (Redis down, out of memory, read-only) until a repair from
/// Postgres succeeds. Postgres writes and commits go on meanwhile; the check tells whoever
/// looks that readers of the cache are served by Postgres and live updates are stopped.
pub const CHECK_REDIS: &str = "redis";
