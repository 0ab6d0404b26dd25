//! Command line and environment configuration of `odds-processor`.
//!
//! Every option has a `--long-flag` and an environment variable (the operator sets the
//! variables named in the configuration contract). `odds-processor migrate` is a subcommand
//! with its own, smaller set of options, so a migration Job needs only `DATABASE_URL`.

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use odds_contracts::env;
use odds_runtime::cli::{millis, Millis};
use odds_runtime::{KafkaArgs, OpsArgs};

/// Batches only reach this size when records are waiting (a backlog); then larger batches
/// catch up faster: `odds-demo bench --rate 30000 --kafka-partitions 6` persisted a median
/// 25 344 updates/s at 5000 against 20 338 at 2000 (3 runs each; README, Performance).
pub const DEFAULT_BATCH_MAX: u32 = 5000;
/// A batch of 5000 commits in about 0.1 s on the bench machine; 10 s leaves room for a slow
/// disk and still ends a stuck statement well inside Kubernetes' 30 s termination grace.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// Consumes odds updates from Kafka and makes them durable in Postgres and current in Redis.
#[derive(Debug, Parser)]
#[command(
    name = "odds-processor",
    version,
    about,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<RunArgs>),
    Migrate(MigrateArgs),
}

impl Cli {
    /// Parses the process arguments, exiting with usage on error (like `Parser::parse`).
    pub fn invocation() -> Invocation {
        Cli::try_invocation_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args`. The run options are read only without a subcommand, so `migrate` does
    /// not need the Kafka and Redis settings (derive's `Cli::parse` would insist on them).
    pub fn try_invocation_from<I, T>(args: I) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches: ArgMatches = Cli::command().try_get_matches_from(args)?;
        match matches.subcommand() {
            Some(("migrate", sub)) => Ok(Invocation::Migrate(MigrateArgs::from_arg_matches(sub)?)),
            _ => Ok(Invocation::Run(Box::new(RunArgs::from_arg_matches(
                &matches,
            )?))),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Applies the database migrations (DATABASE_URL) and exits 0; run it as a Job before the
    /// processors start.
    Migrate(MigrateArgs),
}

/// Options of `odds-processor migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Postgres URL of the database to migrate.
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: String,
    /// Longest a migration statement waits for a lock, in milliseconds; then the migration
    /// fails (the Job retries it). While a DDL statement waits, every later reader and writer
    /// of its table queues behind it, so a long wait would stall the whole pipeline.
    #[arg(long, env = env::DATABASE_LOCK_TIMEOUT_MS, default_value = "10000", value_parser = millis(1..=3_600_000))]
    pub lock_timeout_ms: Millis,
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// Options of the processor itself (no subcommand).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub processor: ProcessorConfig,
}

/// What the processor connects to and how it batches.
#[derive(Debug, Clone, Args)]
pub struct ProcessorConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; processors of one pipeline share it and split the partitions.
    #[arg(long, env = env::KAFKA_GROUP, default_value = "odds-processor")]
    pub kafka_group: String,
    /// Postgres URL of the read-model database (odds_current, odds_history).
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: String,
    /// Redis URL of the current-odds cache and the odds:updates channel.
    #[arg(long, env = env::REDIS_URL)]
    pub redis_url: String,
    /// Most messages per batch (one Postgres statement and one Redis script call per batch).
    #[arg(long, env = env::BATCH_MAX, default_value_t = DEFAULT_BATCH_MAX,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max: u32,
    /// Longest time a batch waits for more messages once it has one, in milliseconds; after
    /// it (and with 0, at once) the batch takes what is already waiting and closes. 0 lets
    /// batches grow with the load by themselves: what arrives while one batch is written is
    /// the next batch.
    #[arg(long, env = env::BATCH_MAX_WAIT_MS, default_value = "0", value_parser = millis(0..=60_000))]
    pub batch_max_wait_ms: Millis,
    /// Cap of the backoff between retries of a batch while Postgres is unavailable, in ms.
    #[arg(long, env = env::DB_RETRY_MAX_BACKOFF_MS, default_value = "5000", value_parser = millis(10..=600_000))]
    pub db_retry_max_backoff_ms: Millis,
    /// Timeout of one Redis request (connect or script call), in milliseconds.
    #[arg(long, env = env::REDIS_TIMEOUT_MS, default_value = "2000", value_parser = millis(10..=60_000))]
    pub redis_timeout_ms: Millis,
    /// Longest a Postgres statement may run (Postgres' `statement_timeout`; the processor
    /// gives up 1 s later if the server does not answer at all), in milliseconds. A batch
    /// past it, waiting on a lock or a frozen server, is retried like an outage.
    #[arg(long, env = env::DATABASE_STATEMENT_TIMEOUT_MS, value_parser = millis(100..=600_000),
          default_value_t = Millis(DEFAULT_STATEMENT_TIMEOUT_MS))]
    pub database_statement_timeout_ms: Millis,
}

impl ProcessorConfig {
    /// A configuration with every default, for embedding the processor (tests, demo, bench).
    pub fn new(kafka_brokers: &str, database_url: &str, redis_url: &str) -> ProcessorConfig {
        ProcessorConfig {
            kafka: KafkaArgs::new(kafka_brokers),
            kafka_group: "odds-processor".to_owned(),
            database_url: database_url.to_owned(),
            redis_url: redis_url.to_owned(),
            batch_max: DEFAULT_BATCH_MAX,
            batch_max_wait_ms: Millis(0),
            db_retry_max_backoff_ms: Millis(5000),
            redis_timeout_ms: Millis(2000),
            database_statement_timeout_ms: Millis(DEFAULT_STATEMENT_TIMEOUT_MS),
        }
    }

    /// Consumer properties: the processor's defaults, then `KAFKA_PROP_*`, then flags.
    ///
    /// The group protocol is KIP-848's (`group.protocol=consumer`): the broker assigns
    /// partitions incrementally on heartbeats, so a member joining or leaving moves only the
    /// partitions that change owner, within two heartbeats, while every other partition keeps
    /// flowing. Under the classic protocol a join stopped the whole group until every member
    /// had rejoined. Heartbeat interval and session timeout are then broker settings
    /// (`group.consumer.heartbeat.interval.ms`, `group.consumer.session.timeout.ms`), which
    /// the client must not set. `group.protocol=classic` (a broker older than Kafka 4.0) gets
    /// the classic defaults instead.
    pub fn consumer_properties(&self) -> Vec<(String, String)> {
        let props = self.kafka.client_properties(&self.consumer_defaults(&[]));
        let classic = props
            .iter()
            .rev()
            .find(|(name, _)| name == "group.protocol")
            .is_some_and(|(_, value)| value.eq_ignore_ascii_case("classic"));
        if !classic {
            return props;
        }
        self.kafka.client_properties(&self.consumer_defaults(&[
            // A crashed processor's partitions wait for its session to expire before another
            // member takes them: librdkafka's 45 s default meant 88 s without prices in the
            // fault run (`make chaos`); 10 s is Kafka's own former default.
            ("session.timeout.ms", "10000"),
        ]))
    }

    fn consumer_defaults<'a>(&'a self, classic: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut defaults = vec![
            ("group.id", self.kafka_group.as_str()),
            (
                "group.protocol",
                if classic.is_empty() {
                    "consumer"
                } else {
                    "classic"
                },
            ),
            // Offsets are committed by hand, only once a batch is durable.
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // librdkafka waits up to 500 ms for a fetch to fill by default, which is latency
            // every update pays at low rates. Measured with `odds-demo bench` (5000/s, 1000
            // clients): p50 363 ms at the default, 49 ms at 10.
            ("fetch.wait.max.ms", "10"),
            // Requests to a broker that vanished silently expire after the shared
            // `socket.timeout.ms` (`odds_runtime::kafka::SHARED_DEFAULTS`), 2.5 s.
            ("statistics.interval.ms", "5000"),
            // Bounds what librdkafka prefetches while the processor is paused (Postgres down).
            ("queued.max.messages.kbytes", "16384"),
        ];
        defaults.extend_from_slice(classic);
        defaults
    }

    /// Dead-letter producer properties: idempotent, acks=all, bounded wait per attempt (a DLQ
    /// outage fails the batch, which is retried), then `KAFKA_PROP_*`, then flags.
    pub fn dlq_producer_properties(&self) -> Vec<(String, String)> {
        self.kafka.client_properties(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "30000"),
            ("request.timeout.ms", "2500"),
            // The DLQ producer idles between bad records, so its connection may have died
            // silently long before the next one (after a network partition): a produce on it
            // waited for the request timeout (10.4 s in `make chaos`, a poison record right
            // after the brokers' outage) while the record's partition stood still. A
            // connection idle for 1 s is closed; the next bad record opens a fresh one.
            ("connections.max.idle.ms", "1000"),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_needs_brokers_database_and_redis() {
        let err = Cli::try_invocation_from(["odds-processor"]).unwrap_err();
        assert!(err.to_string().contains("--kafka-brokers"), "{err}");
    }

    #[test]
    fn run_flags_parse_with_defaults() {
        let invocation = Cli::try_invocation_from([
            "odds-processor",
            "--kafka-brokers=k:9092",
            "--database-url=postgres://db/odds",
            "--redis-url=redis://r",
            "--kafka-prop=fetch.max.bytes=1000",
        ])
        .unwrap();
        let Invocation::Run(run) = invocation else {
            panic!("expected the run invocation");
        };
        let p = run.processor;
        assert_eq!(p.kafka_group, "odds-processor");
        assert_eq!(p.kafka.topic, "odds_updates");
        assert_eq!(p.batch_max, 5000);
        let props = p.consumer_properties();
        assert_eq!(
            props.last(),
            Some(&("fetch.max.bytes".to_owned(), "1000".to_owned()))
        );
        assert!(props.contains(&("fetch.wait.max.ms".to_owned(), "10".to_owned())));
        assert!(props.contains(&("enable.auto.commit".to_owned(), "false".to_owned())));
        assert!(props.contains(&("group.protocol".to_owned(), "consumer".to_owned())));
    }

    /// librdkafka refuses a client-side session timeout under the KIP-848 protocol, and the
    /// classic protocol needs one shorter than its 45 s default.
    #[test]
    fn the_session_timeout_is_set_only_under_the_classic_protocol() {
        let mut config = ProcessorConfig::new("k:9092", "postgres://db/odds", "redis://r");
        let has_session =
            |props: &[(String, String)]| props.iter().any(|(name, _)| name == "session.timeout.ms");
        assert!(!has_session(&config.consumer_properties()));
        config.kafka.props = vec![("group.protocol".into(), "classic".into())];
        let props = config.consumer_properties();
        assert!(has_session(&props));
        assert_eq!(
            props
                .iter()
                .rev()
                .find(|(name, _)| name == "group.protocol"),
            Some(&("group.protocol".to_owned(), "classic".to_owned()))
        );
    }

    #[test]
    fn migrate_needs_only_the_database() {
        let invocation = Cli::try_invocation_from([
            "odds-processor",
            "migrate",
            "--database-url=postgres://x/y",
        ])
        .unwrap();
        match invocation {
            Invocation::Migrate(m) => assert_eq!(m.database_url, "postgres://x/y"),
            Invocation::Run(_) => panic!("migrate subcommand not parsed"),
        }
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let err = Cli::try_invocation_from([
            "odds-processor",
            "--kafka-brokers=k",
            "--database-url=d",
            "--redis-url=r",
            "--batch-max=0",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--batch-max"), "{err}");
        let err = Cli::try_invocation_from([
            "odds-processor",
            "--kafka-brokers=k",
            "--database-url=d",
            "--redis-url=r",
            "--kafka-prop=novalue",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("NAME=VALUE"), "{err}");
    }
}
