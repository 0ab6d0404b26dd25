//! The pipeline benchmark: real stages, real servers, clients on `/ws/odds`, one machine.
//!
//! The supplier sends `rate × duration` updates; N WebSocket clients, spread over the events,
//! time each delivered update against the supplier's `updated_at` (same clock). Afterwards the
//! pipeline is drained and Postgres is counted: every update the supplier sent must be in
//! `odds_history` (`lost` = sent − persisted). `--find-max` raises the rate until p99 latency
//! passes 100 ms or anything is lost.

use crate::launcher::{Launcher, LauncherOptions};
use crate::status::Scrape;
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use odds_contracts::ws::ServerMessage;
use odds_testkit::http_get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

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
    /// Raise the rate (×1.5 per step) until p99 > 100 ms or loss; report the highest that held.
    #[arg(long)]
    pub find_max: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/pipeline.json")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub rate_target: u32,
    pub duration_s: u64,
    pub ws_clients: u32,
    pub updates_sent: u64,
    pub updates_persisted: u64,
    pub lost: i64,
    pub updates_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    pub rss_mb: BTreeMap<String, f64>,
    pub cpu_s: BTreeMap<String, f64>,
}

impl BenchReport {
    pub fn held(&self) -> bool {
        self.lost == 0 && self.latency_ms.p99 <= 100.0
    }

    pub fn summary(&self) -> String {
        format!(
            "rate {}/s for {} s, {} clients: sent {}, persisted {}, lost {}; {:.0} updates/s, \
             {:.0} deliveries/s; latency ms p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}; rss MiB {:?}; cpu s {:?}",
            self.rate_target,
            self.duration_s,
            self.ws_clients,
            self.updates_sent,
            self.updates_persisted,
            self.lost,
            self.updates_per_sec,
            self.deliveries_per_sec,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
            self.rss_mb,
            self.cpu_s
        )
    }
}

/// Runs the benchmark (or the search for the highest rate) and writes the report.
pub async fn run(args: BenchArgs, bin_dir: PathBuf) -> anyhow::Result<BenchReport> {
    let mut rate = args.rate;
    let mut best: Option<BenchReport> = None;
    loop {
        let report = run_once(&args, rate, bin_dir.clone()).await?;
        // A reader that went away (`| head`) is not an error; the report file still counts.
        let _ = odds_runtime::cli::print_stdout(&format!("{}\n", report.summary()));
        let held = report.held();
        if held {
            best = Some(report.clone());
        }
        if !args.find_max || !held {
            let chosen = if args.find_max {
                best.unwrap_or(report)
            } else {
                report
            };
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
    let _ = odds_runtime::cli::print_stdout(&format!("report written to {}\n", path.display()));
    Ok(())
}

async fn run_once(args: &BenchArgs, rate: u32, bin_dir: PathBuf) -> anyhow::Result<BenchReport> {
    let total = u64::from(rate) * args.duration;
    let options = LauncherOptions {
        bin_dir,
        port: odds_testkit::free_port()?,
        rate,
        events: args.events,
        seed: 42,
        total,
        version_base: None,
        log_filter: "warn".into(),
    };
    let mut launcher = Launcher::start(options).await?;
    let result = measure(&launcher, args, rate, total).await;
    launcher.stop().await;
    result
}

async fn measure(
    launcher: &Launcher,
    args: &BenchArgs,
    rate: u32,
    total: u64,
) -> anyhow::Result<BenchReport> {
    let last_event = format!("/v1/events/MATCH_{:03}/odds", args.events);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(launcher.service_addr, &last_event).await, Ok(r) if r.status == 200) {
        if Instant::now() > deadline {
            bail!("events never became visible through odds-service");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let url = format!("ws://{}/ws/odds", launcher.service_addr);
        let event = format!("MATCH_{:03}", i % args.events + 1);
        clients.push(tokio::spawn(client(url, event, stop_rx.clone())));
    }
    let started = Instant::now();

    let send_deadline = started + Duration::from_secs(args.duration * 4 + 60);
    loop {
        let sent = Scrape::take(launcher)
            .await
            .simulator
            .sum("odds_sim_updates_sent_total") as u64;
        if sent >= total {
            break;
        }
        if Instant::now() > send_deadline {
            bail!("supplier sent only {sent} of {total} updates in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent_done = started.elapsed();
    // What the supplier sent that is new: its deltas plus its first image (one new version per
    // event); later images after a reconnect repeat versions already stored.
    let total = total + u64::from(args.events);

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&launcher.infra.database_url)
        .await?;
    let mut persisted: i64 = 0;
    let mut unchanged_since = Instant::now();
    let mut drained_at = started.elapsed();
    while (persisted as u64) < total && unchanged_since.elapsed() < Duration::from_secs(10) {
        let now: i64 = sqlx::query_scalar("SELECT count(*) FROM odds_history")
            .fetch_one(&pool)
            .await?;
        if now != persisted {
            persisted = now;
            unchanged_since = Instant::now();
            drained_at = started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rss_mb = BTreeMap::new();
    let mut cpu_s = BTreeMap::new();
    for child in &launcher.children {
        if let Some((rss, cpu)) = child.usage() {
            rss_mb.insert(child.name.to_owned(), (rss * 10.0).round() / 10.0);
            cpu_s.insert(child.name.to_owned(), (cpu * 100.0).round() / 100.0);
        }
    }
    let _ = stop_tx.send(true);
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await.context("client task")??);
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(BenchReport {
        rate_target: rate,
        duration_s: args.duration,
        ws_clients: args.clients,
        updates_sent: total,
        updates_persisted: persisted as u64,
        lost: total as i64 - persisted,
        updates_per_sec: persisted as f64 / drained_at.as_secs_f64().max(0.001),
        deliveries_per_sec: latencies.len() as f64 / sent_done.as_secs_f64().max(0.001),
        latency_ms: Latency {
            p50: pick(0.5),
            p99: pick(0.99),
            p999: pick(0.999),
            max: latencies.last().copied().unwrap_or(f64::NAN),
        },
        rss_mb,
        cpu_s,
    })
}

/// One subscriber: returns the latency (ms) of every `odds` message it received.
async fn client(
    url: String,
    event: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<f64>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let subscribe = serde_json::json!({"type": "subscribe", "eventId": event}).to_string();
    ws.send(Message::text(subscribe)).await?;
    let mut latencies = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ServerMessage::Odds { data }) = serde_json::from_str(&text) {
                        let ms = (chrono::Utc::now() - data.updated_at).num_microseconds().unwrap_or(0);
                        latencies.push(ms as f64 / 1000.0);
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
