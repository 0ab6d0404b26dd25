//! Kafka client settings every Kafka-speaking stage shares, parsed one way.
//!
//! Ingest and the processor both need brokers, the topic names and a way to pass any
//! librdkafka property through without a new flag per property. Keeping that here gives one
//! documented precedence rule for every stage: `bootstrap.servers`, then the stage's own
//! defaults (chosen for latency and safety), then `KAFKA_PROP_<NAME>` variables, then
//! `--kafka-prop name=value` flags; the later setting of a property wins. Before the stage's
//! defaults come the few every client shares ([`SHARED_DEFAULTS`]).

use odds_contracts::env;
use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};

/// Defaults of every client of every stage.
///
/// Measured with the fault run (`make chaos`: every broker down 2 s, on connections that die
/// without a word, as on a network partition or a lost node): with librdkafka's 60 s request
/// timeout (10 s here before) a request sent as the brokers went away held its stage until it
/// expired, and prices stayed still 8.7 s after the brokers were back. A request expired
/// after 2.5 s is retried at once on a new connection (ingest's producer is idempotent, a
/// consumer's fetch or heartbeat is safe to repeat); the processor's fetches return within
/// `fetch.wait.max.ms` (10 ms) and a produce on a healthy broker in milliseconds, so only a
/// connection that is gone waits that long. Reconnects back off to at most 1 s (librdkafka's
/// 10 s cap is the Java client's 1 s): one connection attempt per second and broker is
/// nothing to a broker that is up.
pub const SHARED_DEFAULTS: [(&str, &str); 2] = [
    ("socket.timeout.ms", "2500"),
    ("reconnect.backoff.max.ms", "1000"),
];

/// Kafka flags, flattened into a stage's clap config.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(long = "kafka-brokers", env = env::KAFKA_BROKERS)]
    pub brokers: String,
    /// Topic of valid odds updates, keyed by event id.
    #[arg(long = "kafka-topic", env = env::KAFKA_TOPIC, default_value = TOPIC_ODDS_UPDATES)]
    pub topic: String,
    /// Dead-letter topic: rejected input with the reason in its headers.
    #[arg(long = "kafka-dlq-topic", env = env::KAFKA_DLQ_TOPIC, default_value = TOPIC_ODDS_UPDATES_DLQ)]
    pub dlq_topic: String,
    /// Any librdkafka property, `name=value` (repeatable). Environment variables
    /// `KAFKA_PROP_<NAME>` set properties too (upper case, `_` for `.`:
    /// `KAFKA_PROP_SECURITY_PROTOCOL=ssl`); a flag overrides a variable, and both override the
    /// stage's defaults.
    #[arg(long = "kafka-prop", value_name = "NAME=VALUE", value_parser = parse_kafka_prop)]
    pub props: Vec<(String, String)>,
}

impl KafkaArgs {
    /// Defaults for embedding a stage (tests, the demo): the given brokers, the contract's topics.
    pub fn new(brokers: &str) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.to_owned(),
            topic: TOPIC_ODDS_UPDATES.to_owned(),
            dlq_topic: TOPIC_ODDS_UPDATES_DLQ.to_owned(),
            props: Vec::new(),
        }
    }

    /// Every client property in precedence order (see the module doc), reading
    /// `KAFKA_PROP_*` from the process environment.
    pub fn client_properties(&self, stage_defaults: &[(&str, &str)]) -> Vec<(String, String)> {
        self.client_properties_with_env(stage_defaults, std::env::vars())
    }

    /// [`KafkaArgs::client_properties`] with the environment given.
    pub fn client_properties_with_env(
        &self,
        stage_defaults: &[(&str, &str)],
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut props = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        props.extend(
            SHARED_DEFAULTS
                .iter()
                .chain(stage_defaults)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        props.extend(env_kafka_props(vars));
        props.extend(self.props.iter().cloned());
        props
    }
}

/// `KAFKA_PROP_SOCKET_KEEPALIVE_ENABLE=true` → `socket.keepalive.enable=true`; other variables
/// and an empty name are ignored.
fn env_kafka_props(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let prop = name.strip_prefix(env::KAFKA_PROP_PREFIX)?;
            (!prop.is_empty()).then(|| (prop.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect()
}

fn parse_kafka_prop(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected NAME=VALUE (a librdkafka property), got {raw:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn value<'a>(props: &'a [(String, String)], name: &str) -> Option<&'a str> {
        props
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn flags_override_env_which_overrides_stage_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-brokers=k:9092",
            "--kafka-prop=linger.ms=50",
            "--kafka-prop=a.b=c=d",
        ])
        .unwrap();
        let env = [
            ("KAFKA_PROP_LINGER_MS".to_owned(), "20".to_owned()),
            ("KAFKA_PROP_FETCH_WAIT_MAX_MS".to_owned(), "7".to_owned()),
            ("KAFKA_PROP_".to_owned(), "ignored".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let props = cli.kafka.client_properties_with_env(
            &[
                ("linger.ms", "2"),
                ("fetch.wait.max.ms", "10"),
                ("acks", "all"),
            ],
            env,
        );
        assert_eq!(value(&props, "bootstrap.servers"), Some("k:9092"));
        assert_eq!(value(&props, "linger.ms"), Some("50"), "flag wins");
        assert_eq!(
            value(&props, "fetch.wait.max.ms"),
            Some("7"),
            "env beats default"
        );
        assert_eq!(value(&props, "acks"), Some("all"), "default kept");
        assert_eq!(value(&props, "a.b"), Some("c=d"));
        assert!(props.iter().all(|(k, _)| !k.is_empty()));
        assert_eq!(cli.kafka.topic, "odds_updates");
        assert_eq!(cli.kafka.dlq_topic, "odds_updates_dlq");
    }

    #[test]
    fn malformed_props_and_missing_brokers_are_refused() {
        let err =
            Cli::try_parse_from(["x", "--kafka-brokers=k", "--kafka-prop=novalue"]).unwrap_err();
        assert!(err.to_string().contains("NAME=VALUE"), "{err}");
        let err = Cli::try_parse_from(["x", "--kafka-brokers=k", "--kafka-prop==v"]).unwrap_err();
        assert!(err.to_string().contains("NAME=VALUE"), "{err}");
    }
}
