//! Command-line and environment configuration of odds-ingest.

use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_runtime::OpsArgs;
use std::time::Duration;

/// odds-ingest: validates a supplier's odds updates and produces them to Kafka.
///
/// librdkafka properties can be passed through with repeated `--kafka-prop name=value` or
/// environment variables `KAFKA_PROP_<NAME>` (upper case, `_` for `.`), e.g.
/// `KAFKA_PROP_SECURITY_PROTOCOL=ssl`.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct IngestConfig {
    /// WebSocket URL of the supplier feed.
    #[arg(long, env = "SUPPLIER_URL", default_value = "ws://127.0.0.1:8090/ws")]
    pub supplier_url: String,

    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic for valid updates (keyed by event id).
    #[arg(long, env = "KAFKA_TOPIC", default_value = TOPIC_ODDS_UPDATES)]
    pub topic: String,

    /// Dead-letter topic for rejected input.
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = TOPIC_ODDS_UPDATES_DLQ)]
    pub dlq_topic: String,

    /// Extra librdkafka producer property, `name=value`; repeatable. Overrides the defaults.
    #[arg(long = "kafka-prop", value_name = "NAME=VALUE", value_parser = parse_prop)]
    pub kafka_props: Vec<(String, String)>,

    /// Most records awaiting Kafka's acknowledgement; when reached, ingest stops reading the supplier.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,

    /// Producer linger (ms): how long librdkafka waits to fill a batch. Low = low latency.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 2)]
    pub linger_ms: u32,

    /// Producer compression codec (none, gzip, snappy, lz4, zstd).
    #[arg(long, env = "KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,

    /// First reconnect delay after the supplier connection fails (ms); doubles per attempt.
    #[arg(long, env = "RECONNECT_MIN_MS", default_value_t = 100)]
    pub reconnect_min_ms: u64,

    /// Cap of the reconnect delay (ms). Each delay is drawn at random below the current step.
    #[arg(long, env = "RECONNECT_MAX_MS", default_value_t = 10_000)]
    pub reconnect_max_ms: u64,

    /// Largest WebSocket message read from the supplier (bytes); larger closes the connection.
    /// Frames above the update limit (16 KiB) but below this are dead-lettered as `oversize`.
    #[arg(long, env = "MAX_WS_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_ws_message_bytes: usize,

    /// How long shutdown waits for Kafka to acknowledge in-flight records (ms).
    #[arg(long, env = "SHUTDOWN_FLUSH_MS", default_value_t = 10_000)]
    pub shutdown_flush_ms: u64,

    #[command(flatten)]
    pub ops: OpsArgs,
}

fn parse_prop(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {raw:?}")),
    }
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

    /// Producer properties: safe defaults, then `KAFKA_PROP_*` from the environment, then flags.
    pub fn producer_properties(&self) -> Vec<(String, String)> {
        let mut props: Vec<(String, String)> = [
            ("bootstrap.servers", self.kafka_brokers.as_str()),
            // Exactly-once per partition on retry, and in order.
            ("enable.idempotence", "true"),
            ("acks", "all"),
            // Never give up on an accepted update: retry until Kafka takes it.
            ("message.timeout.ms", "0"),
            ("compression.codec", self.compression.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        props.push(("linger.ms".into(), self.linger_ms.to_string()));
        props.extend(env_props(std::env::vars()));
        props.extend(self.kafka_props.iter().cloned());
        props
    }

    pub fn reconnect_bounds(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.reconnect_min_ms.max(1)),
            Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_min_ms.max(1))),
        )
    }
}

/// `KAFKA_PROP_SOCKET_KEEPALIVE_ENABLE=true` → `socket.keepalive.enable=true`.
fn env_props(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter_map(|(name, value)| {
        let prop = name.strip_prefix("KAFKA_PROP_")?;
        Some((prop.to_ascii_lowercase().replace('_', "."), value))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_come_from_env_and_flags_and_flags_win() {
        let env = vec![
            (
                "KAFKA_PROP_SOCKET_KEEPALIVE_ENABLE".to_owned(),
                "true".to_owned(),
            ),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        assert_eq!(
            env_props(env.into_iter()),
            vec![("socket.keepalive.enable".to_owned(), "true".to_owned())]
        );
        let mut config = IngestConfig::local("ws://x/ws", "b:1");
        config.kafka_props = vec![("linger.ms".into(), "50".into())];
        let props = config.producer_properties();
        let linger: Vec<_> = props.iter().filter(|(k, _)| k == "linger.ms").collect();
        assert_eq!(linger.last().map(|(_, v)| v.as_str()), Some("50"));
        assert!(props.contains(&("enable.idempotence".into(), "true".into())));
    }

    #[test]
    fn malformed_prop_is_refused() {
        assert!(parse_prop("novalue").is_err());
        assert_eq!(parse_prop("a.b=c=d"), Ok(("a.b".into(), "c=d".into())));
    }
}
