//! ws-load: N WebSocket clients following M events while updates are PUBLISHed at R/s.
//!
//! Starts its own Redis and Postgres (testkit), seeds M events in both, runs the real `odds-service`
//! binary as a child process (so its RSS is its own), opens the clients in this process, and
//! publishes processor-style updates whose `updated_at` is the publish time. Reports delivered
//! messages/s, publish→receive latency percentiles, the service's RSS, and CPU: the service's
//! per delivered message, and this tool's own — its clients and publisher share the machine
//! with the service, so when the tool itself is near the machine's limit the figures describe
//! the tool rather than the service, and the report says so.
//!
//! `--service-bin` also runs the peer relays kept in `benches/peers/` (Bun, Node.js), which
//! take the same environment; `make bench-fanout` compares them (`peers/compare.py`). CPU is
//! reported as user and system time apart. Every client checks that versions only rise per
//! (event, market), including `--late-clients` (default 50) that subscribe mid-stream, whose
//! frames feed only that check.
//!
//! `cargo bench -p odds-service --bench ws-load -- --clients 1000 --events 25 --rate 5000 --seconds 20`
//! (or build the service alone with `cargo build --release -p odds-service --bin odds-service`
//! and run the tool from the dev profile: `cargo test -p odds-service --bench ws-load --
//! --service-bin $CARGO_TARGET_DIR/release/odds-service ...`, which skips a release build of
//! the test kit's librdkafka).
//! (raise `ulimit -n` first for many clients: both ends hold one socket per client).

mod common;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use common::Load;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::names::{redis_current_key, REDIS_UPDATES_CHANNEL};
use odds_contracts::{Odds, OddsUpdate};
use odds_testkit::usage::{self, CpuSplit, MachineTicks};
use odds_testkit::{free_port, http_get, TestDatabase, TestRedis};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    load: Load,
    /// The service binary; defaults to the one built with this tool's profile.
    service_bin: String,
    /// Extra `NAME=VALUE` environment for the service (`--service-env`, repeatable), to
    /// compare settings such as `WS_WRITE_COALESCE_MS` or `TOKIO_WORKER_THREADS`.
    service_env: Vec<(String, String)>,
    /// Clients that subscribe while updates are published (spread over the run): their
    /// frames only feed the ordering check, not the delivery figures.
    late_clients: usize,
}

fn parse_args() -> Result<Args> {
    let mut service_bin = env!("CARGO_BIN_EXE_odds-service").to_owned();
    let mut service_env = Vec::new();
    let mut late_clients = 50;
    let defaults = Load {
        seconds: 20,
        ..Load::A
    };
    let load = defaults.parse(|flag, value| {
        match flag {
            "--service-bin" => service_bin = value()?,
            "--late-clients" => late_clients = value()?.parse()?,
            "--service-env" => {
                let pair = value()?;
                let (name, val) = pair
                    .split_once('=')
                    .with_context(|| format!("--service-env wants NAME=VALUE, got {pair:?}"))?;
                service_env.push((name.to_owned(), val.to_owned()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Args {
        load,
        service_bin,
        service_env,
        late_clients,
    })
}

fn event_id(i: usize) -> String {
    format!("LOAD_{i:05}")
}

fn update(event: usize, version: u64) -> OddsUpdate {
    OddsUpdate {
        home_team: format!("Home {event}"),
        away_team: format!("Away {event}"),
        odds: Odds {
            home: 1.5 + (version % 100) as f64 / 100.0,
            draw: 3.2,
            away: 4.1,
        },
        source: "ws-load".into(),
        ..odds_testkit::sample_update(&event_id(event), version)
    }
}

/// CPU readings at one moment: the service's, this tool's, the machine's.
struct CpuReading {
    service: Option<CpuSplit>,
    own: Option<CpuSplit>,
    machine: Option<MachineTicks>,
}

impl CpuReading {
    fn take(service_pid: u32) -> CpuReading {
        CpuReading {
            service: usage::process_cpu_split(service_pid),
            own: usage::own_cpu_split(),
            machine: usage::machine_ticks(),
        }
    }
}

/// The service's resident memory; 0 once it has gone (the report then shows it).
fn rss_kib(pid: u32) -> u64 {
    usage::process_rss_kib(pid).unwrap_or(0)
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    data: Option<FrameData>,
}

#[derive(Deserialize)]
struct FrameData {
    updated_at: DateTime<Utc>,
    event_id: String,
    market: String,
    version: u64,
}

/// Latency histogram in 50 µs buckets up to 2 s (lock-free: clients record concurrently).
const BUCKET_US: u64 = 50;
const BUCKETS: usize = 40_000;

struct Shared {
    measuring: AtomicBool,
    delivered: AtomicU64,
    /// Frames (snapshot or odds) whose version was not newer than one the same client had
    /// already received for that (event, market): the ordering check.
    regressions: AtomicU64,
    latency_buckets: Vec<AtomicU64>,
}

impl Shared {
    fn record(&self, micros: u64) {
        let bucket = usize::try_from(micros / BUCKET_US)
            .unwrap_or(BUCKETS)
            .min(BUCKETS - 1);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency (ms) below which `p` of the samples fall.
    fn percentile_ms(&self, p: f64) -> f64 {
        let counts: Vec<u64> = self
            .latency_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let target = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

/// One client: subscribes, reads every frame, checks that versions only rise per (event,
/// market), and (unless `late`: a client that subscribes mid-stream, only checked) records
/// the latency of each `odds` frame while measuring.
async fn client(
    addr: SocketAddr,
    event: String,
    shared: Arc<Shared>,
    ready: tokio::sync::mpsc::Sender<()>,
    late: bool,
) -> Result<()> {
    // A small read buffer: tungstenite zero-fills all of it (128 KiB by default) before every
    // read, which would make the clients, not the service, the limit.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let url = format!("ws://{addr}/ws/odds");
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","eventId":"{event}"}}"#
    )))
    .await?;
    let mut signalled = false;
    let mut newest: HashMap<(String, String), u64> = HashMap::new();
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: Frame = serde_json::from_str(&text)?;
        if frame.kind == "snapshot" && !signalled {
            signalled = true;
            let _ = ready.send(()).await;
        }
        let Some(data) = frame.data else {
            continue;
        };
        let seen = newest
            .entry((data.event_id.clone(), data.market.clone()))
            .or_insert(0);
        if data.version <= *seen {
            shared.regressions.fetch_add(1, Ordering::Relaxed);
        }
        *seen = (*seen).max(data.version);
        if frame.kind != "odds" || late || !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        {
            let micros = (Utc::now() - data.updated_at)
                .num_microseconds()
                .unwrap_or(0);
            shared.record(u64::try_from(micros).unwrap_or(0));
            shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Publishes `rate` updates/s in 10 ms ticks (pipelined) on its own thread and runtime, so
/// the clients' work does not slow the publisher down. Returns how many it published.
fn publish(redis_url: String, events: usize, rate: u64, seconds: u64) -> Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = redis::Client::open(redis_url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let per_tick = (rate / 100).max(1);
        let mut versions = vec![1u64; events];
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut published = 0u64;
        let mut next_event = 0usize;
        let run = Instant::now();
        while run.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            let mut pipe = redis::pipe();
            for _ in 0..per_tick {
                versions[next_event] += 1;
                let update = update(next_event, versions[next_event]);
                let json = update.to_json();
                // As the processor does: the cache first (what a relay's snapshot reads), then
                // the channel.
                pipe.cmd("SET")
                    .arg(redis_current_key(&update.event_id, &update.market))
                    .arg(&json)
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(REDIS_UPDATES_CHANNEL)
                    .arg(json)
                    .ignore();
                next_event = (next_event + 1) % events;
                published += 1;
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(published)
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let db = TestDatabase::create().await?;
    odds_schema::migrate(db.pool()).await?;
    let redis = TestRedis::start().await?;
    seed(&db, &redis, args.load.events).await?;
    let mut service = Service::start(&args, &db, &redis).await?;
    let rss_idle = rss_kib(service.pid);

    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        regressions: AtomicU64::new(0),
        latency_buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
    });
    let connecting = Instant::now();
    let mut tasks = connect_clients(service.addr, &args.load, &shared).await?;
    let connect_secs = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(service.pid);

    let run = measure(&args, &service, &redis, &shared, &mut tasks).await?;
    let fanout = http_get(service.ops, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    let _ = service.child.start_kill();
    let _ = service.child.wait().await;
    for task in &tasks {
        task.abort();
    }
    print_delivery(&args, &shared, &run, connect_secs);
    for line in fanout.lines().filter(|l| {
        l.starts_with("odds_ws_conflated_total")
            || l.starts_with("odds_ws_slow_client_closes_total")
            || l.starts_with("odds_ws_hop_seconds_count")
    }) {
        println!("  service metric: {line}");
    }
    print_cpu(&run);
    println!(
        "  service RSS: idle {} KiB, with clients {} KiB ({:.1} KiB/client), peak {} KiB",
        rss_idle,
        rss_connected,
        (rss_connected.saturating_sub(rss_idle)) as f64 / args.load.clients as f64,
        run.rss_peak.max(rss_connected)
    );
    Ok(())
}

/// Writes one update per event to Postgres and the cache, as the processor writes them (one
/// batch statement, one pipeline): snapshots read Postgres.
async fn seed(db: &TestDatabase, redis: &TestRedis, events: usize) -> Result<()> {
    let updates: Vec<OddsUpdate> = (0..events).map(|e| update(e, 1)).collect();
    odds_schema::read_models::apply_batch(&updates)
        .execute(db.pool())
        .await?;
    let mut pipe = redis::pipe();
    for u in &updates {
        pipe.cmd("SET")
            .arg(redis_current_key(&u.event_id, &u.market))
            .arg(u.to_json())
            .ignore();
    }
    pipe.query_async::<()>(&mut redis.connection().await?)
        .await?;
    Ok(())
}

/// The server under test: a child process (killed when dropped) on two free ports.
struct Service {
    child: tokio::process::Child,
    pid: u32,
    /// `/ws/odds`.
    addr: SocketAddr,
    /// `/readyz` and `/metrics`.
    ops: SocketAddr,
}

impl Service {
    /// Starts `--service-bin` against the seeded stores; returns once it is ready, plus half a
    /// second so its idle RSS has settled.
    async fn start(args: &Args, db: &TestDatabase, redis: &TestRedis) -> Result<Service> {
        let (port, ops_port) = (free_port()?, free_port()?);
        let child = tokio::process::Command::new(&args.service_bin)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("HTTP_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("REDIS_URL", redis.url())
            .env("DATABASE_URL", db.url())
            .env("WS_MAX_CONNECTIONS", (args.load.clients + 100).to_string())
            .env("RUST_LOG", "warn")
            .envs(args.service_env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .spawn()
            .context("starting odds-service")?;
        let pid = child.id().context("service pid")?;
        let service = Service {
            child,
            pid,
            addr: format!("127.0.0.1:{port}").parse()?,
            ops: format!("127.0.0.1:{ops_port}").parse()?,
        };
        let started = Instant::now();
        while !matches!(http_get(service.ops, "/readyz").await, Ok(r) if r.status == 200) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("service not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(service)
    }
}

/// Opens the load's clients, `i`-th following event `i % events`, and waits until every one
/// has its snapshot.
async fn connect_clients(
    addr: SocketAddr,
    load: &Load,
    shared: &Arc<Shared>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(load.clients);
    let mut tasks = Vec::with_capacity(load.clients);
    for i in 0..load.clients {
        let task = tokio::spawn(client(
            addr,
            event_id(i % load.events),
            shared.clone(),
            ready_tx.clone(),
            false,
        ));
        tasks.push(task);
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await; // do not flood the accept queue
        }
    }
    for _ in 0..load.clients {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("clients did not all subscribe")?;
    }
    Ok(tasks)
}

/// What the measured window gave, beside the clients' shared counters.
struct Run {
    published: u64,
    /// `odds` frames the clients received while measuring.
    delivered: u64,
    /// Seconds the publisher ran.
    elapsed: f64,
    /// Seconds between the two CPU readings (the publisher's run plus the drain).
    cpu_window: f64,
    cpu_before: CpuReading,
    cpu_after: CpuReading,
    /// Clients that subscribed mid-stream.
    late: usize,
    /// The service's largest RSS sampled while publishing (KiB).
    rss_peak: u64,
}

/// Publishes the load while measuring, opens the late clients spread over it (pushed to
/// `tasks`), follows the service's RSS, and stops measuring half a second after the last
/// update so frames still on their way count.
async fn measure(
    args: &Args,
    service: &Service,
    redis: &TestRedis,
    shared: &Arc<Shared>,
    tasks: &mut Vec<tokio::task::JoinHandle<Result<()>>>,
) -> Result<Run> {
    shared.measuring.store(true, Ordering::Relaxed);
    let cpu_before = CpuReading::take(service.pid);
    let run = Instant::now();
    let (url, events, rate, seconds) = (
        redis.url(),
        args.load.events,
        args.load.rate,
        args.load.seconds,
    );
    let publisher = std::thread::spawn(move || publish(url, events, rate, seconds));
    let mut rss_peak = 0;
    let late_every = Duration::from_secs(seconds).div_f64(args.late_clients.max(1) as f64 + 1.0);
    let (mut late, mut next_late) = (0, Instant::now() + late_every);
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if late < args.late_clients && Instant::now() >= next_late {
            let (ready, _) = tokio::sync::mpsc::channel(1);
            let event = event_id(late % args.load.events);
            tasks.push(tokio::spawn(client(
                service.addr,
                event,
                shared.clone(),
                ready,
                true,
            )));
            late += 1;
            next_late += late_every;
        }
        rss_peak = rss_peak.max(rss_kib(service.pid));
    }
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let elapsed = run.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let cpu_after = CpuReading::take(service.pid);
    let cpu_window = run.elapsed().as_secs_f64();
    Ok(Run {
        published,
        delivered: shared.delivered.load(Ordering::Relaxed),
        elapsed,
        cpu_window,
        cpu_before,
        cpu_after,
        late,
        rss_peak,
    })
}

/// The delivery part of the report: what was published, delivered, how late, in what order.
fn print_delivery(args: &Args, shared: &Shared, run: &Run, connect_secs: f64) {
    let (published, delivered, elapsed) = (run.published, run.delivered, run.elapsed);
    let expected = published * (args.load.clients as u64) / (args.load.events as u64);
    println!(
        "ws-load: {} clients, {} events, {} updates/s target, {:.1} s",
        args.load.clients, args.load.events, args.load.rate, elapsed
    );
    println!("  connect+subscribe: {connect_secs:.1} s");
    println!(
        "  published: {published} ({:.0}/s)",
        published as f64 / elapsed
    );
    println!(
        "  delivered: {delivered} ({:.0} msgs/s; {:.1}% of {expected} fan-out, rest conflated)",
        delivered as f64 / elapsed,
        100.0 * delivered as f64 / expected.max(1) as f64
    );
    println!(
        "  latency publish->receive: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (50 us buckets)",
        shared.percentile_ms(0.5),
        shared.percentile_ms(0.99),
        shared.percentile_ms(0.999)
    );
    println!(
        "  ordering: {} frames not newer than one already received for their (event, market) \
         ({} clients, {} of them subscribed mid-stream)",
        shared.regressions.load(Ordering::Relaxed),
        args.load.clients + run.late,
        run.late
    );
}

/// Below this idle share the machine counts as saturated.
const SATURATED_BELOW_IDLE: f64 = 0.10;
/// A process using at least this many cores counts as near saturating one.
const NEAR_A_CORE: f64 = 0.9;

/// The CPU part of the report: the service's cost per delivery, this tool's own use, and a
/// warning when the tool or the machine, rather than the service, may have been the limit.
fn print_cpu(run: &Run) {
    let (before, after, window_s, delivered) = (
        &run.cpu_before,
        &run.cpu_after,
        run.cpu_window,
        run.delivered,
    );
    let used = |b: Option<CpuSplit>, a: Option<CpuSplit>| Some(a?.since(&b?));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per = |s: f64| s * 1e6 / delivered.max(1) as f64;
    match used(before.service, after.service) {
        Some(CpuSplit { user, system }) => println!(
            "  service CPU: {:.2} s ({:.2} cores), {:.2} us per delivered message (user {:.2} + \
             system {:.2})",
            user + system,
            (user + system) / window_s,
            per(user + system),
            per(user),
            per(system)
        ),
        None => println!("  service CPU: unknown (no /proc/<pid>/stat)"),
    }
    let own = used(before.own, after.own).map(|split| split.total());
    if let Some(own) = own {
        println!(
            "  ws-load's own CPU (clients + publisher): {own:.2} s ({:.2} cores of {cores})",
            own / window_s
        );
    }
    let idle = before
        .machine
        .zip(after.machine)
        .and_then(|(before, after)| usage::idle_share(before, after));
    if let Some(idle) = idle {
        println!("  machine idle: {:.1} %", idle * 100.0);
    }
    if own.is_some_and(|own| own / window_s >= NEAR_A_CORE) {
        println!(
            "  WARNING: ws-load itself used >= {NEAR_A_CORE} of a core: delivery rate and \
             latency may be the load generator's limit, not the service's"
        );
    }
    if idle.is_some_and(|idle| idle < SATURATED_BELOW_IDLE) {
        println!(
            "  WARNING: the machine was saturated (idle below {:.0} %): latency includes \
             queueing for CPU",
            SATURATED_BELOW_IDLE * 100.0
        );
    }
}
