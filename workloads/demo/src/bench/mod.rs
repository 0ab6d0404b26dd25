//! The pipeline benchmark: real stages, real servers, clients on `/ws/odds`, one machine.
//!
//! The supplier sends `rate × duration` updates; N WebSocket clients, spread over the events,
//! time each delivered update against the supplier's `updated_at` (same clock). Afterwards the
//! pipeline is drained and Postgres is counted. Every update the supplier generated is
//! accounted for: skipped by the supplier for a consumer that fell behind (the simulator's
//! count, and the versions ingest never saw), rejected to a DLQ, or accepted, and every
//! accepted one must be in `odds_history` (`lost` = accepted − persisted). `--find-max`
//! raises the rate until p99 latency passes 100 ms or anything is skipped, rejected, lost or
//! reset, and says which.
//!
//! Beside the end-to-end figures the report carries the context that makes them honest
//! ([`report`]): the per-hop breakdown from the stages' histograms ([`hops`]), the CPU each
//! process used in the window, the machine's idle share, and the Postgres settings in effect
//! — durable by default, since that is what production promises.

pub mod chart;
pub mod hops;
pub mod report;

use crate::infra::KafkaChoice;
use crate::launcher::{Launcher, LauncherOptions};
use crate::status::Scrape;
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use odds_contracts::freshness::FreshnessReport;
use odds_contracts::{Market, OddsUpdate};
use odds_testkit::usage;
use odds_testkit::{http_get, PostgresDurability};
use report::{
    median_run, per_thousand, BENCH_PROCESS, BROKER_PROCESS, POSTGRES_PROCESS, SATURATED_BELOW_IDLE,
};
pub use report::{
    BenchReport, KafkaUsed, Latency, Machine, PostgresSettings, RateStep, RunFigures,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use supplier_simulator::feed::event_id;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Who the bench's canary says it is, on the odds page and in the report (`make demo`'s is
/// [`crate::status::CANARY_PUBLISHER`]).
const BENCH_CANARY_PUBLISHER: &str = "odds-demo bench";
/// Each client's WebSocket read buffer (see [`client`]).
const CLIENT_READ_BUFFER: usize = 4 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Supplier updates per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// Seconds the supplier sends for.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// WebSocket clients, each subscribed to one event (spread evenly).
    #[arg(long, default_value_t = 1_000)]
    pub clients: u32,
    /// Number of events.
    #[arg(long, default_value_t = 100)]
    pub events: u32,
    /// Raise the rate (×1.5 per step) until p99 passes --max-p99-ms or anything is skipped,
    /// rejected or lost; report the highest that held.
    #[arg(long)]
    pub find_max: bool,
    /// The p99 latency (ms) a rate must stay within to hold (--find-max and the summary).
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// Run every run against a fresh Tansu broker started from this binary (memory storage,
    /// topics created up front) instead of the hosted mock or KAFKA_BROKERS. `make
    /// bench-pipeline BROKER=tansu` installs Tansu and sets this.
    #[arg(long, env = "TANSU_BIN")]
    pub tansu: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/pipeline.json")]
    pub out: PathBuf,
    /// Run the throwaway Postgres with fsync and full-page writes off: faster commits, no
    /// power-loss safety, so not what production promises (the report says so).
    #[arg(long)]
    pub fast_unsafe_postgres: bool,
    /// Partitions of `odds_updates` on the hosted mock Kafka or Tansu (ignored with
    /// `KAFKA_BROKERS`).
    /// The mock keeps the last 5 MB of each partition and finds a fetch's offset by walking
    /// that log from its start on every fetch, so each partition adds to the mock's CPU and
    /// to the Kafka hops as its log fills (6 at 5000/s: ingest→ack p50 7.3 ms instead of
    /// 3.5). One partition holds the least backlog: a processor that falls further behind
    /// skips records (the summary warns, from `odds_proc_offset_resets_total`); raise this
    /// then. A real broker indexes offsets and keeps days; one processor reads every
    /// partition either way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub kafka_partitions: i32,
    /// Runs per rate, each on a fresh pipeline; the report is the run with the median p50 and
    /// lists every run's headline figures (one run on a shared machine is not a figure).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    #[command(flatten)]
    pub trace: crate::TraceArgs,
    /// Trace the run into an OTLP receiver in this process (a collector's work, without
    /// one): what tracing costs the stages at `--trace-sampling-ratio`.
    #[arg(long, conflicts_with = "otlp_endpoint")]
    pub otlp_sink: bool,
}

/// Runs the benchmark (or the search for the highest rate) and writes the report and its
/// chart.
pub async fn run(args: BenchArgs, bin_dir: PathBuf) -> anyhow::Result<BenchReport> {
    let mut rate = args.rate;
    let mut best: Option<BenchReport> = None;
    let mut steps = Vec::new();
    loop {
        let mut reports = Vec::new();
        for _ in 0..args.runs {
            let report = run_once(&args, rate, bin_dir.clone()).await?;
            // A reader that went away (`| head`) is not an error; the report file still counts.
            let _ = odds_runtime::cli::print_stdout(&report.summary());
            reports.push(report);
        }
        let report = median_run(reports).context("--runs is at least 1")?;
        let _ = odds_runtime::cli::print_stdout(&report.spread());
        let held = report.held();
        if args.find_max {
            steps.push(RateStep::of(&report));
        }
        if args.find_max && !held {
            let _ = odds_runtime::cli::print_stdout(&format!(
                "--find-max stops at {rate}/s: {}\n",
                report.why_not_held().join("; ")
            ));
        }
        if held {
            best = Some(report.clone());
        }
        if !args.find_max || !held {
            let mut chosen = if args.find_max {
                best.unwrap_or(report)
            } else {
                report
            };
            chosen.find_max_steps = steps;
            write_report(&args.out, &chosen)?;
            return Ok(chosen);
        }
        rate = rate.saturating_mul(3) / 2;
    }
}

fn write_report(path: &PathBuf, report: &BenchReport) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    let svg = path.with_extension("svg");
    chart::write(&svg, report)?;
    let _ = odds_runtime::cli::print_stdout(&format!(
        "report written to {}, its chart to {}\n",
        path.display(),
        svg.display()
    ));
    Ok(())
}

async fn run_once(args: &BenchArgs, rate: u32, bin_dir: PathBuf) -> anyhow::Result<BenchReport> {
    let total = u64::from(rate) * args.duration;
    let sink = match args.otlp_sink {
        true => Some(odds_testkit::OtlpReceiver::start().await?),
        false => None,
    };
    let tracing = match &sink {
        Some(sink) => Some(crate::TraceExport {
            endpoint: sink.endpoint(),
            sampling_ratio: args.trace.trace_sampling_ratio,
            export_every_ms: None,
        }),
        None => args.trace.export(),
    };
    let options = LauncherOptions {
        bin_dir,
        port: odds_testkit::free_port()?,
        rate,
        events: args.events,
        seed: 42,
        total,
        version_base: None,
        log_filter: "warn".into(),
        postgres: if args.fast_unsafe_postgres {
            PostgresDurability::FastUnsafe
        } else {
            PostgresDurability::Durable
        },
        // One market: figures stay comparable with earlier runs.
        markets: vec![Market::MatchResult],
        kafka_partitions: args.kafka_partitions,
        kafka: match &args.tansu {
            Some(binary) => KafkaChoice::Tansu(binary.clone()),
            None => KafkaChoice::HostedMock,
        },
        tracing,
    };
    let mut launcher = Launcher::start(options).await?;
    // A stage that dies ends the run at once, with its reason, instead of a timeout later.
    let result = tokio::select! {
        result = measure(&launcher, args, rate, total) => result,
        error = launcher.unexpected_exit() => Err(error),
    };
    launcher.stop().await;
    if let Some(sink) = &sink {
        let _ = odds_runtime::cli::print_stdout(&format!(
            "traces: {} spans received by the OTLP sink in {} export requests\n",
            sink.spans().len(),
            sink.requests()
        ));
    }
    match result {
        Ok(report) => Ok(report),
        Err(error) => {
            let logs = launcher.keep_logs();
            Err(error.context(format!("the stages' logs are kept in {}", logs.display())))
        }
    }
}

/// One run's measurement, from the pipeline being up to its report: waits for the start-up
/// backlog to drain, opens the window, lets the clients and the canary listen while the
/// supplier sends, waits for Postgres to have everything, and closes the window.
async fn measure(
    launcher: &Launcher,
    args: &BenchArgs,
    rate: u32,
    total: u64,
) -> anyhow::Result<BenchReport> {
    wait_visible(launcher, args.events).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&launcher.infra.database_url)
        .await?;
    // The window starts once the pipeline has caught up with the supplier: the consumer
    // group's first join holds the first records for seconds, and draining that backlog is
    // start-up, not the pipeline's latency (counted in, it was the "stalls" of 1.5–2 s in
    // every run's kafka→processor p99). The CPU, idle and hop figures cover the window, and
    // the per-1000 figures the updates persisted in it.
    let caught_up = catch_up(launcher, args, rate).await;
    let persisted_before = persisted_count(&pool).await?;
    let postmaster = postmaster_pid(&pool).await;
    let window = Window::open(launcher, postmaster).await;
    let listeners = Listeners::start(launcher, args)?;
    let started = Instant::now();
    wait_sent(
        launcher,
        total,
        started + Duration::from_secs(args.duration * 4 + 60),
    )
    .await?;
    let sent_done = started.elapsed();
    // What the supplier sent that is new: its deltas plus its first image (one new version per
    // event); later images after a reconnect repeat versions already stored.
    let total = total + u64::from(args.events);
    let (persisted, drained_at) = wait_persisted(&pool, total, started).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_window = (persisted - persisted_before).max(0) as u64;
    let closed = window.close(launcher, in_window).await;
    let skipped = closed.skipped;
    let accepted = total.saturating_sub(skipped.versions_never_ingested + skipped.dead_lettered);
    let postgres = postgres_settings(&pool, launcher, postmaster).await?;
    let rss_mb = rss_mb(launcher);
    let (latencies, canary) = listeners.stop().await?;
    // Every delivery counted by the clients falls in the window (they connect after it opens).
    let service_cpu_us_per_delivery = closed
        .cpu_s
        .get("odds-service")
        .filter(|_| !latencies.is_empty())
        .map(|cpu| (cpu * 1e6 / latencies.len() as f64 * 10.0).round() / 10.0);
    Ok(BenchReport {
        rate_target: rate,
        service_cpu_us_per_delivery,
        duration_s: args.duration,
        ws_clients: args.clients,
        updates_sent: total,
        supplier_skipped: skipped.supplier_skipped,
        versions_never_ingested: skipped.versions_never_ingested,
        dead_lettered: skipped.dead_lettered,
        updates_accepted: accepted,
        updates_persisted: persisted as u64,
        lost: accepted as i64 - persisted,
        // Persisted in the window, over the window up to the last one persisted: sustained.
        updates_per_sec: in_window as f64 / drained_at.as_secs_f64().max(0.001),
        deliveries_per_sec: latencies.len() as f64 / sent_done.as_secs_f64().max(0.001),
        latency_ms: Latency::of_sorted(&latencies),
        rss_mb,
        window_s: (closed.seconds * 10.0).round() / 10.0,
        caught_up,
        kafka_offset_resets: closed.offset_resets,
        kafka: kafka_used(launcher, args.kafka_partitions),
        max_p99_ms: args.max_p99_ms,
        cpu_s_per_1000_updates: closed.cpu_per_1000,
        cpu_s: closed.cpu_s,
        machine: closed.machine,
        postgres,
        hops: closed.hops,
        runs: Vec::new(),
        canary: Some(canary),
        find_max_steps: Vec::new(),
    })
}

/// Waits for the start-up backlog to drain, at most a quarter of the sending time: an
/// overloaded pipeline never catches up, and waiting longer would leave nothing to measure.
/// `false` when it did not (the report says so).
async fn catch_up(launcher: &Launcher, args: &BenchArgs, rate: u32) -> bool {
    let catch_up_limit = Duration::from_secs(args.duration) / 4;
    let caught_up = wait_caught_up(launcher, args.events, rate, catch_up_limit).await;
    if !caught_up {
        tracing::warn!(
            "the pipeline did not catch up with the supplier within {:.1} s; measuring anyway",
            catch_up_limit.as_secs_f64()
        );
    }
    caught_up
}

/// Waits until the last event is visible through odds-service: the pipeline is up.
async fn wait_visible(launcher: &Launcher, events: u32) -> anyhow::Result<()> {
    let last_event = format!("/v1/events/{}/odds", event_id(events as usize));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(launcher.service_addr, &last_event).await, Ok(r) if r.status == 200) {
        if Instant::now() > deadline {
            bail!("events never became visible through odds-service");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Rows in `odds_history` now.
async fn persisted_count(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM odds_history")
        .fetch_one(pool)
        .await?)
}

/// Waits until the supplier has sent `total` updates (its own count); an error after
/// `deadline`.
pub async fn wait_sent(launcher: &Launcher, total: u64, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let sent = Scrape::take(launcher)
            .await
            .simulator
            .sum("odds_sim_updates_sent_total") as u64;
        if sent >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("supplier sent only {sent} of {total} updates in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `odds_history` holds `total` rows, or has not grown for 10 s: the rows then,
/// and when (since `started`) the last of them arrived.
async fn wait_persisted(
    pool: &sqlx::PgPool,
    total: u64,
    started: Instant,
) -> anyhow::Result<(i64, Duration)> {
    let mut persisted: i64 = 0;
    let mut unchanged_since = Instant::now();
    let mut drained_at = started.elapsed();
    while (persisted as u64) < total && unchanged_since.elapsed() < Duration::from_secs(10) {
        let now = persisted_count(pool).await?;
        if now != persisted {
            persisted = now;
            unchanged_since = Instant::now();
            drained_at = started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((persisted, drained_at))
}

/// Resident memory (MiB) of every stage and of the broker started here.
fn rss_mb(launcher: &Launcher) -> BTreeMap<String, f64> {
    let mut rss_mb = BTreeMap::new();
    for child in &launcher.children {
        if let Some((rss, _)) = child.usage() {
            rss_mb.insert(child.name.to_owned(), (rss * 10.0).round() / 10.0);
        }
    }
    if let Some((rss, _)) = launcher.infra.broker().and_then(|b| b.usage()) {
        rss_mb.insert(BROKER_PROCESS.to_owned(), (rss * 10.0).round() / 10.0);
    }
    rss_mb
}

/// What listens on `/ws/odds` during a run: the clients, each subscribed to one event, and
/// beside them the same canary the operator runs per pipeline.
struct Listeners {
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    canary: odds_canary::Canary,
}

impl Listeners {
    fn start(launcher: &Launcher, args: &BenchArgs) -> anyhow::Result<Listeners> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let url = format!("ws://{}/ws/odds", launcher.service_addr);
        let clients = (0..args.clients)
            .map(|i| {
                let event = event_id((i % args.events) as usize + 1);
                tokio::spawn(client(url.clone(), event, stopped.clone()))
            })
            .collect();
        // Its figures are on the odds page too while the bench runs.
        let canary = crate::status::start_canary(
            launcher,
            Duration::from_secs(args.duration * 4 + 120),
            BENCH_CANARY_PUBLISHER,
        )?;
        Ok(Listeners {
            clients,
            stop,
            canary,
        })
    }

    /// Stops them: every client's latencies (ms), sorted, and the canary's figures.
    async fn stop(self) -> anyhow::Result<(Vec<f64>, FreshnessReport)> {
        let _ = self.stop.send(true);
        let canary = odds_canary::publish::report(&self.canary.summary(), BENCH_CANARY_PUBLISHER);
        self.canary.stop().await;
        let mut latencies = Vec::new();
        for c in self.clients {
            latencies.extend(c.await.context("client task")??);
        }
        latencies.sort_by(f64::total_cmp);
        Ok((latencies, canary))
    }
}

/// An event's current odds younger than this (plus the time between two of its updates)
/// means the start-up backlog is drained.
const CAUGHT_UP_AGE: Duration = Duration::from_millis(250);

/// Waits until the first event's current odds, read through odds-service, are fresh: then
/// the start-up backlog is through the whole pipeline. `false` after `limit` (an overloaded
/// pipeline never catches up; the report says so).
async fn wait_caught_up(launcher: &Launcher, events: u32, rate: u32, limit: Duration) -> bool {
    let between_updates = Duration::from_secs_f64(f64::from(events) / f64::from(rate.max(1)));
    let fresh = CAUGHT_UP_AGE + between_updates * 2;
    let first_event = format!("/v1/events/{}/odds", event_id(1));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let age = http_get(launcher.service_addr, &first_event)
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_str::<OddsUpdate>(&r.body).ok())
            .and_then(|u| (chrono::Utc::now() - u.updated_at).to_std().ok());
        if age.is_some_and(|age| age < fresh) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Readings at the start of the measured window, to subtract at its end.
struct Window {
    started: Instant,
    scrape: Scrape,
    cpu_s: BTreeMap<String, f64>,
    machine: Option<usage::MachineTicks>,
    /// Postgres' postmaster, when it runs on this machine.
    postmaster: Option<u32>,
}

/// What happened in the window.
struct ClosedWindow {
    seconds: f64,
    cpu_s: BTreeMap<String, f64>,
    cpu_per_1000: BTreeMap<String, f64>,
    machine: Machine,
    hops: Vec<hops::HopLatency>,
    /// The processor's `offset_resets_total` at the end (records skipped by retention).
    offset_resets: u64,
    /// What the stages counted as never entering the pipeline, over the whole run.
    skipped: Skipped,
}

/// The updates the stages' own counters say never entered the pipeline (whole run: the
/// counters start with the stages).
#[derive(Debug, Clone, Copy)]
struct Skipped {
    supplier_skipped: u64,
    versions_never_ingested: u64,
    dead_lettered: u64,
}

impl Skipped {
    fn of(scrape: &Scrape) -> Skipped {
        Skipped {
            supplier_skipped: scrape.simulator.sum("odds_sim_updates_skipped_total") as u64,
            versions_never_ingested: scrape.ingest.sum("odds_ingest_versions_skipped_total") as u64,
            dead_lettered: (scrape.ingest.sum("odds_ingest_dlq_total")
                + scrape.processor.sum("odds_proc_dead_lettered_total"))
                as u64,
        }
    }
}

impl Window {
    async fn open(launcher: &Launcher, postmaster: Option<u32>) -> Window {
        Window {
            started: Instant::now(),
            scrape: Scrape::take(launcher).await,
            cpu_s: cpu_now(launcher, postmaster),
            machine: usage::machine_ticks(),
            postmaster,
        }
    }

    async fn close(self, launcher: &Launcher, updates: u64) -> ClosedWindow {
        let machine = usage::machine_ticks();
        let cpu_after = cpu_now(launcher, self.postmaster);
        let scrape = Scrape::take(launcher).await;
        let cpu_s: BTreeMap<String, f64> = cpu_after
            .iter()
            .filter_map(|(name, after)| {
                let used = after - self.cpu_s.get(name)?;
                Some((name.clone(), (used * 100.0).round() / 100.0))
            })
            .collect();
        let idle_share = self
            .machine
            .zip(machine)
            .and_then(|(before, after)| usage::idle_share(before, after))
            .map(|s| (s * 1000.0).round() / 1000.0);
        ClosedWindow {
            seconds: self.started.elapsed().as_secs_f64(),
            cpu_per_1000: per_thousand(&cpu_s, updates),
            cpu_s,
            machine: Machine {
                cores: std::thread::available_parallelism().map_or(1, usize::from),
                idle_share,
                saturated: idle_share.is_some_and(|s| s < SATURATED_BELOW_IDLE),
            },
            hops: hops::breakdown(&self.scrape, &scrape),
            offset_resets: scrape.processor.sum("odds_proc_offset_resets_total") as u64,
            skipped: Skipped::of(&scrape),
        }
    }
}

/// The Kafka a run used.
fn kafka_used(launcher: &Launcher, partitions: i32) -> KafkaUsed {
    if launcher.infra.kafka_cluster().is_some() {
        KafkaUsed::HostedMock { partitions }
    } else if launcher.infra.broker().is_some() {
        KafkaUsed::Tansu {
            bootstrap: launcher.infra.kafka_brokers.clone(),
            partitions,
        }
    } else {
        KafkaUsed::Brokers {
            bootstrap: launcher.infra.kafka_brokers.clone(),
        }
    }
}

/// CPU seconds so far of every stage, of the Tansu broker started here, of Postgres' server
/// processes (the postmaster's tree, when it runs here) and of this process.
fn cpu_now(launcher: &Launcher, postmaster: Option<u32>) -> BTreeMap<String, f64> {
    let mut cpu: BTreeMap<String, f64> = launcher
        .children
        .iter()
        .filter_map(|c| Some((c.name.to_owned(), usage::process_cpu_seconds(c.pid)?)))
        .collect();
    if let Some(broker) = launcher.infra.broker() {
        if let Some(used) = usage::process_cpu_seconds(broker.pid()) {
            cpu.insert(BROKER_PROCESS.to_owned(), used);
        }
    }
    if let Some(used) = postmaster.and_then(usage::tree_cpu_seconds) {
        cpu.insert(POSTGRES_PROCESS.to_owned(), used);
    }
    if let Some(own) = usage::own_cpu_seconds() {
        cpu.insert(BENCH_PROCESS.to_owned(), own);
    }
    cpu
}

/// Postgres' postmaster, found as the parent of the backend serving `pool`'s connection
/// (`pg_backend_pid()`), when that backend is a process of this machine named `postgres`:
/// the throwaway server the benchmark started, or one `DATABASE_URL` names on this machine.
/// Every Postgres process (backends, WAL writer, checkpointer, autovacuum) is its child.
async fn postmaster_pid(pool: &sqlx::PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    usage::parent_named(u32::try_from(backend).ok()?, "postgres")
}

/// The durability settings the server reports, whoever started it.
async fn postgres_settings(
    pool: &sqlx::PgPool,
    launcher: &Launcher,
    postmaster_pid: Option<u32>,
) -> anyhow::Result<PostgresSettings> {
    let show = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("SHOW {name}"))
    };
    let started_as = match launcher.infra.postgres_durability() {
        None => "external",
        Some(PostgresDurability::Durable) => "durable",
        Some(PostgresDurability::FastUnsafe) => "fast-unsafe",
    };
    Ok(PostgresSettings {
        started_as: started_as.to_owned(),
        fsync: show("fsync").await?,
        synchronous_commit: show("synchronous_commit").await?,
        full_page_writes: show("full_page_writes").await?,
        postmaster_pid,
    })
}

/// One subscriber: returns the latency (ms) of every `odds` message it received.
async fn client(
    url: String,
    event: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<f64>> {
    // tungstenite zero-fills its whole read buffer (128 KiB by default) before every read:
    // with that default the clients' memset was 30 % of this process's CPU (perf), taken
    // from the pipeline it measures. Frames here are ~300 bytes.
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), false)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let subscribe = serde_json::json!({"type": "subscribe", "eventId": event}).to_string();
    ws.send(Message::text(subscribe)).await?;
    let mut latencies = Vec::new();
    // Made once, not per message: each delivery wakes this loop.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(ms) = odds_latency_ms(&text, chrono::Utc::now()) {
                        latencies.push(ms);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("client for {event} failed: {e}"),
                None => bail!("odds-service closed the connection of the client for {event}"),
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// The latency (ms) at `now` of an `odds` frame, from its update's `updated_at`; `None` for
/// any other frame. Reads only those two fields, borrowing from the frame: parsing the whole
/// `ServerMessage` on every delivery was a visible share of this process's CPU (perf), which
/// the load generator takes from the pipeline it measures.
fn odds_latency_ms(frame: &str, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        updated_at: chrono::DateTime<chrono::Utc>,
    }
    let frame: Frame<'_> = serde_json::from_str(frame).ok()?;
    let data = frame.data.filter(|_| frame.kind == "odds")?;
    let micros = (now - data.updated_at).num_microseconds().unwrap_or(0);
    Some(micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::odds_latency_ms;
    use odds_contracts::ws::ServerMessage;
    use odds_testkit::sample_update;

    #[test]
    fn latency_is_read_from_the_odds_frames_the_service_sends_and_nothing_else() {
        let update = sample_update("MATCH_001", 7);
        let now = update.updated_at + chrono::Duration::microseconds(12_345);
        let odds = ServerMessage::odds_frame(&update.to_json());
        assert_eq!(odds_latency_ms(&odds, now), Some(12.345));

        let snapshot = ServerMessage::snapshot_frame(&update.to_json());
        assert_eq!(odds_latency_ms(&snapshot, now), None);
        let status = ServerMessage::status(Some("redis down")).to_json();
        assert_eq!(odds_latency_ms(&status, now), None);
        assert_eq!(odds_latency_ms("not json", now), None);
    }
}
