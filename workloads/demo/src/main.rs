use anyhow::Context;
use clap::{Parser, Subcommand};
use odds_contracts::{env, ports, Market};
use odds_demo::bench::{self, BenchArgs};
use odds_demo::launcher::default_bin_dir;
use odds_demo::status::StatusBoard;
use odds_demo::{Launcher, LauncherOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// odds-demo: runs the whole odds pipeline on this machine.
///
/// Postgres, Redis and Kafka come from DATABASE_URL, REDIS_URL and KAFKA_BROKERS when set;
/// otherwise a throwaway Postgres and Redis are started from the machine's binaries and a
/// Kafka mock cluster is hosted in this process. Everything is removed on exit.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Directory with the stage binaries (default: next to this executable).
    #[arg(long, global = true, env = "ODDS_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline until Ctrl-C (the default).
    Run(RunArgs),
    /// Measure the pipeline and write target/bench/pipeline.json.
    Bench(BenchArgs),
    /// Subscribe to an event (or `*` for all) on /ws/odds and print every message.
    Watch {
        /// The odds-service WebSocket URL.
        #[arg(long, default_value_t = ports::loopback_ws_url(ports::API, "/ws/odds"))]
        url: String,
        /// Event id to follow, `*` for every event.
        #[arg(default_value = "*")]
        event: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Port of odds-service: the odds page, REST /v1 and WebSocket /ws/odds.
    #[arg(long, env = "DEMO_PORT", default_value_t = ports::API)]
    port: u16,
    /// Supplier updates per second.
    #[arg(long, env = env::SIM_RATE, default_value_t = 50)]
    rate: u32,
    /// Number of events.
    #[arg(long, env = env::SIM_EVENTS, default_value_t = 8)]
    events: u32,
    /// Random seed of the supplier.
    #[arg(long, env = env::SIM_SEED, default_value_t = 42)]
    seed: u64,
    /// Markets the supplier quotes for every event, comma-separated (1X2, HT_1X2).
    #[arg(long, env = env::SIM_MARKETS, default_value = "1X2,HT_1X2", value_delimiter = ',')]
    markets: Vec<Market>,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 2)]
    status_every: u64,
    /// Log level of the stages (RUST_LOG syntax); their logs are kept in files.
    #[arg(long, default_value = "info")]
    log_filter: String,
    #[command(flatten)]
    trace: odds_demo::TraceArgs,
}

/// `println!` that ends quietly when standard output's reader has gone (EPIPE) instead of
/// panicking; see [`odds_runtime::cli`].
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = odds_runtime::cli::print_stdout(&format!("{}\n", format_args!($($arg)*)));
    }};
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let bin_dir = match cli.bin_dir {
        Some(dir) => dir,
        None => default_bin_dir()?,
    };
    match cli.command {
        Some(Command::Bench(args)) => {
            bench::run(args, bin_dir).await?;
            Ok(())
        }
        Some(Command::Run(args)) => run(args, bin_dir).await,
        Some(Command::Watch { url, event }) => watch(&url, &event).await,
        None => run(cli.run, bin_dir).await,
    }
}

async fn run(args: RunArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    say!("starting Postgres, Redis, Kafka (mock) and the four stages…");
    let mut launcher = Launcher::start(LauncherOptions {
        bin_dir,
        port: args.port,
        rate: args.rate,
        events: args.events,
        seed: args.seed,
        total: 0,
        version_base: None,
        log_filter: args.log_filter.clone(),
        // The demo shows the pipeline working; speed over power-loss safety is fine here.
        postgres: odds_testkit::PostgresDurability::FastUnsafe,
        markets: args.markets.clone(),
        kafka_partitions: odds_demo::infra::DEMO_PARTITIONS,
        kafka: odds_demo::infra::KafkaChoice::HostedMock,
        tracing: args.trace.export(),
    })
    .await
    .context("starting the pipeline")?;
    print_banner(&launcher);

    let shutdown = odds_runtime::shutdown::on_signals();
    let mut ticks = tokio::time::interval(Duration::from_secs(args.status_every.max(1)));
    let until = (args.duration > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(args.duration));
    let tty = std::io::stdout().is_terminal();
    // A client like any other, through the same address: the figures the operator's canary
    // reports for a cluster pipeline (p99 age on ingest's clock, longest freeze), over the
    // last minute, on this line and on the odds page.
    let canary = odds_demo::status::start_canary(
        &launcher,
        Duration::from_secs(60),
        odds_demo::status::CANARY_PUBLISHER,
    )?;
    let mut board = StatusBoard::with_canary(canary);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = async { match until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => break Ok(()),
            error = launcher.unexpected_exit() => break Err(error),
            _ = ticks.tick() => {
                let line = board.line(&launcher).await;
                let shown = if tty {
                    odds_runtime::cli::print_stdout(&format!("\r\x1b[2K{line}"))
                } else {
                    odds_runtime::cli::print_stdout(&format!("{line}\n"))
                };
                if !matches!(shown, Ok(true)) {
                    // Nobody reads the status any more (`make demo | head`): stop quietly.
                    break Ok(());
                }
            }
        }
    };
    say!("\nstopping…");
    launcher.stop().await;
    drop(launcher);
    say!("stopped; throwaway data removed");
    outcome
}

async fn watch(url: &str, event: &str) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let subscribe = serde_json::json!({"type": "subscribe", "eventId": event}).to_string();
    ws.send(Message::text(subscribe)).await?;
    while let Some(msg) = ws.next().await {
        // Whether to go on: not after a close, nor once the reader has gone
        // (`watch ... | head -1`).
        let go_on = match msg? {
            Message::Text(text) => odds_runtime::cli::print_stdout(&format!("{text}\n"))?,
            Message::Close(frame) => {
                say!("closed: {frame:?}");
                false
            }
            _ => true,
        };
        if !go_on {
            break;
        }
    }
    Ok(())
}

fn print_banner(launcher: &Launcher) {
    let addr = launcher.service_addr;
    say!("\nthe odds pipeline is running (Ctrl-C stops it and removes its data)\n");
    say!("  odds page:   http://{addr}/");
    say!("  websocket:   ws://{addr}/ws/odds");
    say!("  REST:        http://{addr}/v1/events");
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "odds-demo".into());
    say!("  try:         {me} watch --url ws://{addr}/ws/odds MATCH_001");
    say!("  kafka:       {}", launcher.infra.kafka_brokers);
    say!("  postgres:    {}", launcher.infra.database_url);
    say!("  redis:       {}", launcher.infra.redis_url);
    for child in &launcher.children {
        say!(
            "  {:<19} http://{}/metrics  (pid {})",
            format!("{}:", child.name),
            child.ops_addr,
            child.pid
        );
    }
    say!("  logs:        {}\n", launcher.log_dir().display());
}
