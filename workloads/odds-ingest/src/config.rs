//! Command-line and environment configuration of odds-ingest.

use odds_contracts::{env, ports};
use odds_runtime::cli::{millis, Millis};
use odds_runtime::{KafkaArgs, OpsArgs};
use std::time::Duration;

/// odds-ingest: validates a supplier's odds updates and produces them to Kafka.
///
/// Any librdkafka property can be set with `--kafka-prop name=value` or `KAFKA_PROP_<NAME>`.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct IngestConfig {
    /// WebSocket URL of the supplier feed.
    #[arg(long, env = env::SUPPLIER_URL, default_value_t = ports::loopback_ws_url(ports::SIMULATOR, "/ws"))]
    pub supplier_url: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Most records awaiting Kafka's acknowledgement; when reached, ingest stops reading the supplier.
    #[arg(long, env = env::MAX_IN_FLIGHT, default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_in_flight: u32,

    /// Producer linger (ms): how long librdkafka waits to fill a batch. Lower: less wait on
    /// the way to Kafka at low rates; higher: fewer, larger produce requests (less CPU per
    /// update in ingest and the broker). 5 nearly halves both against 2 for about 1.5 ms more.
    #[arg(long, env = env::KAFKA_LINGER_MS, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=900_000))]
    pub linger_ms: u32,

    /// Producer compression codec (none, gzip, snappy, lz4, zstd).
    #[arg(long, env = env::KAFKA_COMPRESSION, default_value = "lz4")]
    pub compression: String,

    /// First reconnect delay after the supplier connection fails (ms); doubles per attempt.
    #[arg(long, env = env::RECONNECT_MIN_MS, default_value = "100", value_parser = millis(1..=600_000))]
    pub reconnect_min_ms: Millis,

    /// Cap of the reconnect delay (ms), at least the first delay. Each delay is drawn at random
    /// below the current step.
    #[arg(long, env = env::RECONNECT_MAX_MS, default_value = "10000", value_parser = millis(1..=600_000))]
    pub reconnect_max_ms: Millis,

    /// After this long without a frame from the supplier ingest pings it (ms); after three
    /// intervals of silence it reconnects (a half-open connection, a frozen supplier). A
    /// connect attempt also gets three intervals, and so does one message: a message that
    /// takes longer to arrive counts as silence.
    #[arg(long, env = env::SUPPLIER_PING_INTERVAL_MS, default_value = "5000", value_parser = millis(50..=600_000))]
    pub supplier_ping_interval_ms: Millis,

    /// Largest WebSocket message read from the supplier (bytes); larger closes the connection.
    /// Frames above the update limit (16 KiB) but below this are dead-lettered as `oversize`.
    #[arg(long, env = env::MAX_WS_MESSAGE_BYTES, default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(16_384..=1_073_741_824))]
    pub max_ws_message_bytes: u32,

    /// How long shutdown waits for Kafka to take the records already read (ms). Keep it below
    /// the orchestrator's grace period (Kubernetes: 30 s); what is still undelivered then is
    /// counted and logged.
    #[arg(long, env = env::SHUTDOWN_FLUSH_MS, default_value = "10000", value_parser = millis(0..=600_000))]
    pub shutdown_flush_ms: Millis,

    #[command(flatten)]
    pub ops: OpsArgs,
}

impl IngestConfig {
    /// Defaults for tests and embedding: given supplier and brokers, ops on an ephemeral port.
    pub fn local(supplier_url: &str, kafka_brokers: &str) -> IngestConfig {
        use clap::Parser;
        IngestConfig::parse_from([
            "odds-ingest",
            "--supplier-url",
            supplier_url,
            "--kafka-brokers",
            kafka_brokers,
            "--http-addr",
            "127.0.0.1:0",
        ])
    }

    /// Producer properties: this stage's safe defaults, then `KAFKA_PROP_*`, then flags.
    pub fn producer_properties(&self) -> Vec<(String, String)> {
        let linger = self.linger_ms.to_string();
        self.kafka.client_properties(&[
            // Exactly-once per partition on retry, and in order.
            ("enable.idempotence", "true"),
            ("acks", "all"),
            // Never give up on an accepted update: retry until Kafka takes it.
            ("message.timeout.ms", "0"),
            ("compression.codec", self.compression.as_str()),
            ("linger.ms", linger.as_str()),
            // A broker that vanishes without closing its connections (a crash, a partition)
            // holds in-flight requests until these expire; librdkafka's 30-60 s defaults kept
            // prices still for over a minute in the fault run (`make chaos`). Retries are safe:
            // the producer is idempotent. The socket timeout is the shared one
            // (`odds_runtime::kafka::SHARED_DEFAULTS`); a produce's own timeout matches it.
            ("request.timeout.ms", "2500"),
        ])
    }

    /// Checks what single flags cannot: the reconnect cap is not below the first delay.
    pub fn check(&self) -> Result<(), String> {
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(format!(
                "--reconnect-max-ms ({}) must be at least --reconnect-min-ms ({})",
                self.reconnect_max_ms, self.reconnect_min_ms
            ));
        }
        Ok(())
    }

    pub fn reconnect_bounds(&self) -> (Duration, Duration) {
        (
            self.reconnect_min_ms.duration(),
            self.reconnect_max_ms.duration(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn producer_keeps_its_safety_defaults_unless_overridden() {
        let mut config = IngestConfig::local("ws://x/ws", "b:1");
        config.kafka.props = vec![("linger.ms".into(), "50".into())];
        let props = config.producer_properties();
        let linger: Vec<_> = props.iter().filter(|(k, _)| k == "linger.ms").collect();
        assert_eq!(linger.last().map(|(_, v)| v.as_str()), Some("50"));
        assert!(props.contains(&("enable.idempotence".into(), "true".into())));
        assert!(props.contains(&("message.timeout.ms".into(), "0".into())));
    }

    #[test]
    fn out_of_range_limits_are_refused_not_clamped() {
        let base = ["odds-ingest", "--kafka-brokers=k:1"];
        for bad in [
            "--max-in-flight=0",
            "--reconnect-min-ms=0",
            "--max-ws-message-bytes=100",
        ] {
            let err = IngestConfig::try_parse_from(base.iter().copied().chain([bad]));
            let err = err.expect_err(bad).to_string();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
        let config = IngestConfig::try_parse_from(
            base.iter()
                .copied()
                .chain(["--reconnect-min-ms=500", "--reconnect-max-ms=100"]),
        )
        .unwrap();
        assert!(config.check().unwrap_err().contains("--reconnect-max-ms"));
    }
}
