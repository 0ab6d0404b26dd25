//! The service's configuration: one clap struct, every option also an environment variable.
//!
//! Kubernetes sets the environment, people use `--flags`; `--help` is the reference. Limits
//! that protect the process (connections, subscriptions, message size, queue depth) are all
//! here so an operator can tune them without a rebuild. Each is range-checked when parsed: a
//! value out of range is an error naming the flag, never silently clamped.

use clap::builder::RangedU64ValueParser;
use odds_contracts::{env, ports};
use odds_runtime::cli::{millis, Millis};
use odds_runtime::OpsArgs;
use std::net::SocketAddr;
use std::time::Duration;

/// odds-service: REST and WebSocket access to current odds.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "odds-service", version, about)]
pub struct ServiceConfig {
    #[command(flatten)]
    pub ops: OpsArgs,

    /// Address of the public server: REST `/v1/...`, WebSocket `/ws/odds`, page `/`,
    /// `/openapi.json`.
    #[arg(long, env = env::LISTEN_ADDR, default_value_t = ports::any_address(ports::API))]
    pub listen_addr: SocketAddr,

    /// Redis holding the current-odds cache and the `odds:updates` pub/sub channel.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Postgres with the `odds_current` and `odds_history` read models.
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: String,

    /// Optional read replica used for every query instead of DATABASE_URL.
    #[arg(long, env = env::DATABASE_READ_URL)]
    pub database_read_url: Option<String>,

    /// Largest number of Postgres connections in the pool.
    #[arg(long, env = env::DATABASE_MAX_CONNECTIONS, default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Longest a Postgres read may run, in milliseconds (Postgres' `statement_timeout`; the
    /// service gives up 1 s later if the server does not answer at all). A read past it
    /// answers 503 instead of holding the request and graceful shutdown.
    #[arg(long, env = env::DATABASE_STATEMENT_TIMEOUT_MS, default_value = "5000", value_parser = millis(100..=600_000))]
    pub database_statement_timeout_ms: Millis,

    /// Longest wait for a Postgres connection, in milliseconds (a new one included: connect
    /// and authenticate). A wait that ends in failure marks Postgres unreachable: reads then
    /// go to the cache (or fail) at once until a background probe reaches it again.
    #[arg(long, env = env::DATABASE_ACQUIRE_TIMEOUT_MS, default_value = "2000", value_parser = millis(100..=600_000))]
    pub database_acquire_timeout_ms: Millis,

    /// Without a processor heartbeat (or an update) for this many milliseconds, WebSocket
    /// clients are told that live updates stopped (`status` `live:false`). Processors beat
    /// every second. 0 turns the watch off (processors that do not beat).
    #[arg(long, env = env::HEARTBEAT_TIMEOUT_MS, default_value = "3000", value_parser = millis(0..=600_000))]
    pub heartbeat_timeout_ms: Millis,

    /// When no processor has read a record from Kafka (and no update arrived) for this many
    /// milliseconds, WebSocket clients are told the supplier is silent (`live:false`). 0
    /// turns it off (a feed that may legitimately stay quiet this long).
    #[arg(long, env = env::UPSTREAM_MAX_SILENCE_MS, default_value = "60000", value_parser = millis(0..=86_400_000))]
    pub upstream_max_silence_ms: Millis,

    /// Most WebSocket connections this process accepts; further upgrades get 503.
    #[arg(long, env = env::WS_MAX_CONNECTIONS, default_value_t = 20_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub ws_max_connections: usize,

    /// Most events one connection may follow (`*` counts as one).
    #[arg(long, env = env::WS_MAX_SUBSCRIPTIONS, default_value_t = 100,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub ws_max_subscriptions: usize,

    /// Largest client message in bytes; larger ones get a `message_too_large` error, and
    /// frames over 16 times this close the connection (1009).
    #[arg(long, env = env::WS_MAX_MESSAGE_BYTES, default_value_t = 4096,
          value_parser = RangedU64ValueParser::<usize>::new().range(64..=1024 * 1024))]
    pub ws_max_message_bytes: usize,

    /// Comma-separated origins allowed to open WebSockets (e.g. `https://odds.example`);
    /// empty allows every origin. Requests without an Origin header (non-browsers) are allowed.
    #[arg(
        long,
        env = env::WS_ALLOWED_ORIGINS,
        default_value = "",
        value_delimiter = ','
    )]
    pub ws_allowed_origins: Vec<String>,

    /// Most distinct (event, market) updates waiting to be sent to one connection; a client
    /// that falls further behind is closed as a slow consumer. At least the number of
    /// markets (2), so one event's snapshot always fits.
    #[arg(long, env = env::WS_MAX_PENDING_EVENTS, default_value_t = 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(2..=1_000_000))]
    pub ws_max_pending_events: usize,

    /// How long one write to a client may stay blocked before the client is closed as slow.
    #[arg(long, env = env::WS_SLOW_CLIENT_TIMEOUT_MS, default_value = "10000", value_parser = millis(10..=600_000))]
    pub ws_slow_client_timeout_ms: Millis,

    /// Kernel send buffer (SO_SNDBUF) of each client socket, in bytes; 0 keeps the OS default
    /// (which autotunes up to megabytes per stuck client).
    #[arg(long, env = env::WS_SEND_BUFFER_BYTES, default_value_t = 32 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=64 * 1024 * 1024))]
    pub ws_send_buffer_bytes: usize,

    /// A fan-out batch that reaches at least this many clients writes half of them from a
    /// second thread (each client still written by one thread, in order): where a second core
    /// is free, a burst leaves sooner (p99 to the client about halved at 200 000 deliveries/s)
    /// for about a tenth more CPU per delivery (fewer frames per write). 0, the default,
    /// writes every batch from one thread; so does a machine with one core.
    #[arg(long, env = env::WS_SPLIT_WRITES_AT, default_value_t = 0)]
    pub ws_split_writes_at: usize,

    /// Interval of server pings; a client silent for three intervals is disconnected.
    #[arg(long, env = env::WS_PING_INTERVAL_SECS, default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_ping_interval_secs: u64,

    /// Timeout of one Redis command or connection attempt before falling back to Postgres.
    #[arg(long, env = env::REDIS_TIMEOUT_MS, default_value = "500", value_parser = millis(10..=60_000))]
    pub redis_timeout_ms: Millis,
}

impl ServiceConfig {
    /// The URL every query uses: the read replica when one is configured.
    pub fn read_database_url(&self) -> &str {
        self.database_read_url
            .as_deref()
            .filter(|url| !url.is_empty())
            .unwrap_or(&self.database_url)
    }

    /// Origins allowed to connect, without empty entries.
    pub fn allowed_origins(&self) -> Vec<String> {
        self.ws_allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceConfig;
    use clap::Parser;

    #[test]
    fn read_url_prefers_the_replica_and_origins_are_trimmed() {
        let config = ServiceConfig::try_parse_from([
            "odds-service",
            "--database-url",
            "postgres://primary/db",
            "--database-read-url",
            "postgres://replica/db",
            "--ws-allowed-origins",
            "https://a.example/, ,http://b.example",
        ])
        .unwrap();
        assert_eq!(config.read_database_url(), "postgres://replica/db");
        assert_eq!(
            config.allowed_origins(),
            vec!["https://a.example", "http://b.example"]
        );
        assert_eq!(config.listen_addr.port(), 8080);
    }

    #[test]
    fn limits_out_of_range_are_refused_naming_the_flag_not_clamped() {
        for (flag, value) in [
            ("--ws-max-connections", "0"),
            ("--ws-max-subscriptions", "0"),
            ("--ws-max-message-bytes", "63"),
            ("--ws-max-pending-events", "0"),
            ("--ws-ping-interval-secs", "0"),
            ("--redis-timeout-ms", "0"),
            ("--database-max-connections", "0"),
            ("--database-acquire-timeout-ms", "99"),
            ("--heartbeat-timeout-ms", "-1"),
            ("--ws-max-connections", "-1"),
        ] {
            let err = ServiceConfig::try_parse_from([
                "odds-service",
                "--database-url=postgres://x/y",
                &format!("{flag}={value}"),
            ])
            .expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        let edge = ServiceConfig::try_parse_from([
            "odds-service",
            "--database-url=postgres://x/y",
            "--ws-max-message-bytes=64",
            "--ws-max-subscriptions=1",
            "--ws-send-buffer-bytes=0",
        ])
        .unwrap();
        assert_eq!(
            (edge.ws_max_message_bytes, edge.ws_max_subscriptions),
            (64, 1)
        );
    }
}
