//! Command-line and environment configuration of the simulator.

use odds_contracts::Market;
use odds_contracts::{env, ports};
use odds_runtime::OpsArgs;
use std::net::SocketAddr;

/// supplier-simulator: streams odds updates to every client connected at `/ws`.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct SimulatorConfig {
    /// Address of the WebSocket server (clients connect to ws://ADDR/ws).
    #[arg(long, env = env::LISTEN_ADDR, default_value_t = ports::any_address(ports::SIMULATOR))]
    pub listen_addr: SocketAddr,

    /// Number of events. The first four are MATCH_001..MATCH_004 with fixed teams; more are generated.
    #[arg(long, env = env::SIM_EVENTS, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events: u32,

    /// Updates per second, over all events (1 to 1,000,000).
    #[arg(long, env = env::SIM_RATE, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,

    /// Seed of the random walk: the same seed gives the same stream (apart from timestamps).
    #[arg(long, env = env::SIM_SEED, default_value_t = 42)]
    pub seed: u64,

    /// Markets to quote, comma-separated (known: 1X2, HT_1X2).
    #[arg(long, env = env::SIM_MARKETS, default_value = "1X2", value_delimiter = ',')]
    pub markets: Vec<Market>,

    /// Send updates in bursts of this many back-to-back frames (same average rate); 1 = evenly spaced.
    #[arg(long, env = env::SIM_BURST, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: u32,

    /// Stop after sending this many updates in total (0 = never stop).
    #[arg(long, env = env::SIM_TOTAL, default_value_t = 0)]
    pub total: u64,

    /// Version base: each event's versions are BASE+1, BASE+2, ... Default: the start time in
    /// microseconds since the Unix epoch, so a restarted simulator's versions are newer than
    /// the last run's. Set it (e.g. 0) only for a reproducible stream.
    #[arg(long, env = env::SIM_VERSION_BASE, value_parser = clap::value_parser!(u64).range(0..=1u64 << 52))]
    pub version_base: Option<u64>,

    /// Frames a client may have queued before it counts as too slow and is disconnected.
    #[arg(long, env = env::SIM_CLIENT_QUEUE, default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub client_queue: u32,

    #[command(flatten)]
    pub ops: OpsArgs,
}

impl SimulatorConfig {
    /// Defaults for tests and embedding, on ephemeral local ports, with versions from 1 (base 0)
    /// so a test knows what to expect.
    pub fn local() -> SimulatorConfig {
        use clap::Parser;
        SimulatorConfig::parse_from([
            "supplier-simulator",
            "--listen-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--version-base",
            "0",
        ])
    }
}
