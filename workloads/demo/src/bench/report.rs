//! What one benchmark run measured, as JSON and as the text printed after it.
//!
//! A figure from a shared machine is only honest with its context beside it: what Postgres
//! promised (fsync, synchronous commit), who used the CPU (each stage and the benchmark
//! itself), and whether the machine had any left. The printed summary says so in words when
//! it had not, since then part of every latency is waiting for a core.

use super::hops::HopLatency;
use odds_contracts::freshness::FreshnessReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Below this idle share the machine counts as saturated.
pub const SATURATED_BELOW_IDLE: f64 = 0.10;
/// The key of the benchmark process in the CPU maps.
pub const BENCH_PROCESS: &str = "odds-demo-bench";
/// The key of the Kafka broker the benchmark started (Tansu) in the CPU and memory maps.
pub const BROKER_PROCESS: &str = "kafka-broker (tansu)";
/// The key of Postgres' server processes (the postmaster and all its children: backends,
/// WAL writer, checkpointer, autovacuum) in the CPU maps.
pub const POSTGRES_PROCESS: &str = "postgres (server)";

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The quantiles of `sorted` (ascending); NaN where there is none.
    pub fn of_sorted(sorted: &[f64]) -> Latency {
        let pick = |q: f64| {
            sorted
                .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Latency {
            p50: pick(0.5),
            p99: pick(0.99),
            p999: pick(0.999),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The Postgres settings in effect during the run, as the server reported them (`SHOW`).
#[derive(Debug, Clone, Serialize)]
pub struct PostgresSettings {
    /// `durable`, `fast-unsafe` (`--fast-unsafe-postgres`), or `external` (`DATABASE_URL`:
    /// used as configured).
    pub started_as: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub full_page_writes: String,
    /// The postmaster whose processes' CPU is in the CPU maps as [`POSTGRES_PROCESS`]: the
    /// parent of the backend serving the benchmark's own connection. `None` when that
    /// backend is not a process of this machine (a remote server or another PID namespace):
    /// Postgres' CPU is then not measured.
    pub postmaster_pid: Option<u32>,
}

impl PostgresSettings {
    /// Whether a commit survives a power loss: what production promises.
    pub fn durable(&self) -> bool {
        self.fsync == "on" && self.synchronous_commit != "off" && self.full_page_writes == "on"
    }
}

/// The machine during the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// Share (0..1) of all cores' time that was idle; `None` without /proc/stat.
    pub idle_share: Option<f64>,
    /// Idle share below [`SATURATED_BELOW_IDLE`]: latency includes queueing for a core.
    pub saturated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub rate_target: u32,
    pub duration_s: u64,
    pub ws_clients: u32,
    /// New versions the supplier generated (its deltas and its first image).
    pub updates_sent: u64,
    /// Updates the supplier never sent ingest because ingest fell behind its feed and was
    /// disconnected (the simulator's own count, `odds_sim_updates_skipped_total`); ingest
    /// then gets the current image, so some of the events' latest versions still arrive.
    pub supplier_skipped: u64,
    /// Versions ingest saw skipped in their event's sequence
    /// (`odds_ingest_versions_skipped_total`): the updates that never entered the pipeline.
    pub versions_never_ingested: u64,
    /// Updates rejected to a DLQ by ingest or the processor.
    pub dead_lettered: u64,
    /// Updates the pipeline took in: sent, less what never reached ingest and the rejected.
    pub updates_accepted: u64,
    pub updates_persisted: u64,
    /// Accepted and not persisted: a real loss (must be 0). Skips and rejections have their
    /// own counts and are not in it.
    pub lost: i64,
    pub updates_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    pub rss_mb: BTreeMap<String, f64>,
    /// Seconds from the pipeline being up to the last update persisted: the window the CPU
    /// figures, the idle share and the hop breakdown cover.
    pub window_s: f64,
    /// Whether the pipeline had drained its start-up backlog (first consumer-group join)
    /// when the window opened; `false` means the figures include that backlog.
    pub caught_up: bool,
    /// The Kafka the run used.
    pub kafka: KafkaUsed,
    /// The p99 (ms) the rate had to stay within to hold (`--max-p99-ms`).
    pub max_p99_ms: f64,
    /// Times the processor's position fell out of the Kafka log and was reset past records
    /// it never read (`odds_proc_offset_resets_total`): loss to the broker's retention.
    pub kafka_offset_resets: u64,
    /// CPU seconds used in the window, per stage and by the benchmark process
    /// ([`BENCH_PROCESS`]: its WebSocket clients and, unless `KAFKA_BROKERS` is set, the
    /// Kafka mock broker).
    pub cpu_s: BTreeMap<String, f64>,
    /// `cpu_s` per 1000 updates persisted in the window.
    pub cpu_s_per_1000_updates: BTreeMap<String, f64>,
    /// odds-service's CPU in the window per `odds` message the clients received (µs): the
    /// fan-out's cost.
    pub service_cpu_us_per_delivery: Option<f64>,
    pub machine: Machine,
    pub postgres: PostgresSettings,
    /// p50/p99 per hop from the stages' `*_hop_seconds` histograms, in pipeline order.
    pub hops: Vec<HopLatency>,
    /// With `--runs` above 1, every run's headline figures in the order they ran; the rest of
    /// the report is the run with the median p50. Empty for a single run.
    pub runs: Vec<RunFigures>,
    /// The freshness canary's figures over the same clients' time, in the form
    /// `/v1/freshness` serves (publisher `odds-demo bench`): age measured from
    /// ingest's accept time (`ingested_at`), where the clients' latency starts at the
    /// supplier's `updated_at` (the supplier → ingest hop apart, both clocks are this
    /// machine's, so the two should agree within a few ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<FreshnessReport>,
    /// With `--find-max`, every rate tried (its median run), in the order tried, the last one
    /// the rate that did not hold. Empty otherwise.
    pub find_max_steps: Vec<RateStep>,
}

/// One rate `--find-max` tried: what the median run of that rate sustained.
#[derive(Debug, Clone, Serialize)]
pub struct RateStep {
    pub rate_target: u32,
    pub updates_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub held: bool,
    /// Why it did not hold (empty when it held).
    pub why_not: Vec<String>,
}

impl RateStep {
    pub fn of(report: &BenchReport) -> RateStep {
        RateStep {
            rate_target: report.rate_target,
            updates_per_sec: report.updates_per_sec,
            p50_ms: report.latency_ms.p50,
            p99_ms: report.latency_ms.p99,
            held: report.held(),
            why_not: report.why_not_held(),
        }
    }
}

/// One run's headline figures, kept beside the median run's report (see [`median_run`]).
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub latency_ms: Latency,
    pub lost: i64,
    /// What kept the run from holding apart from latency ([`BenchReport::shortfall`]).
    pub shortfall: Vec<String>,
    pub updates_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub service_cpu_us_per_delivery: Option<f64>,
    pub idle_share: Option<f64>,
}

impl RunFigures {
    fn of(report: &BenchReport) -> RunFigures {
        RunFigures {
            latency_ms: report.latency_ms.clone(),
            lost: report.lost,
            shortfall: report.shortfall(),
            updates_per_sec: report.updates_per_sec,
            deliveries_per_sec: report.deliveries_per_sec,
            service_cpu_us_per_delivery: report.service_cpu_us_per_delivery,
            idle_share: report.machine.idle_share,
        }
    }
}

/// The run with the median p50 (the upper one of an even count), carrying every run's
/// headline figures. One run is not a figure: on a shared 2-core machine p50 moves by a third
/// between runs of the same code, so figures are medians of several.
pub fn median_run(mut reports: Vec<BenchReport>) -> Option<BenchReport> {
    if reports.len() < 2 {
        return reports.pop();
    }
    let runs = reports.iter().map(RunFigures::of).collect();
    reports.sort_by(|a, b| a.latency_ms.p50.total_cmp(&b.latency_ms.p50));
    let mut median = reports.swap_remove(reports.len() / 2);
    median.runs = runs;
    Some(median)
}

/// The Kafka a run used.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaUsed {
    /// librdkafka's mock broker inside the benchmark process.
    HostedMock { partitions: i32 },
    /// A fresh Tansu broker the benchmark started for the run (`--tansu`).
    Tansu { bootstrap: String, partitions: i32 },
    /// The brokers `KAFKA_BROKERS` named.
    Brokers { bootstrap: String },
}

impl std::fmt::Display for KafkaUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaUsed::HostedMock { partitions } => {
                write!(f, "hosted mock, {partitions} partition(s) of odds_updates")
            }
            KafkaUsed::Tansu {
                bootstrap,
                partitions,
            } => write!(
                f,
                "Tansu at {bootstrap} (memory storage, started for the run), {partitions} \
                 partition(s) of odds_updates"
            ),
            KafkaUsed::Brokers { bootstrap } => write!(f, "KAFKA_BROKERS={bootstrap}"),
        }
    }
}

impl BenchReport {
    /// Whether the rate held: nothing skipped, rejected, lost or reset, in any run, and p99
    /// within `max_p99_ms`.
    pub fn held(&self) -> bool {
        self.why_not_held().is_empty()
    }

    /// Why the rate did not hold, each cause in words (empty when it held).
    pub fn why_not_held(&self) -> Vec<String> {
        let mut causes = self.shortfall();
        for (i, run) in self.runs.iter().enumerate() {
            causes.extend(run.shortfall.iter().map(|c| format!("run {}: {c}", i + 1)));
        }
        if self.latency_ms.p99 > self.max_p99_ms {
            causes.push(format!(
                "p99 {:.1} ms is over {:.0} ms",
                self.latency_ms.p99, self.max_p99_ms
            ));
        }
        causes.sort();
        causes.dedup();
        causes
    }

    /// Where updates went that did not reach `odds_history`, by cause; empty when every update
    /// the supplier generated was persisted.
    pub fn shortfall(&self) -> Vec<String> {
        let mut causes = Vec::new();
        if self.supplier_skipped > 0 || self.versions_never_ingested > 0 {
            causes.push(format!(
                "skipped by the supplier: ingest fell behind the feed and was disconnected \
                 ({} updates by the simulator's count, {} versions never reached ingest)",
                self.supplier_skipped, self.versions_never_ingested
            ));
        }
        if self.dead_lettered > 0 {
            causes.push(format!(
                "{} updates rejected to the DLQ",
                self.dead_lettered
            ));
        }
        if self.lost != 0 {
            causes.push(format!(
                "LOST: {} accepted updates not persisted",
                self.lost
            ));
        }
        if self.kafka_offset_resets > 0 {
            causes.push(format!(
                "{} offset reset(s): the processor skipped records Kafka no longer kept",
                self.kafka_offset_resets
            ));
        }
        causes
    }

    /// A warning when the hosted mock broker is what limited the run: something was skipped
    /// or the run fell behind, and the mock (inside the benchmark process) or its produce
    /// acknowledgement is where the time went.
    fn mock_limit_warning(&self) -> Option<String> {
        if !matches!(self.kafka, KafkaUsed::HostedMock { .. }) {
            return None;
        }
        let fell_behind = self.supplier_skipped > 0 || !self.caught_up;
        let bench_cores =
            self.cpu_s.get(BENCH_PROCESS).copied().unwrap_or(0.0) / self.window_s.max(0.001);
        let ack_p99 = self
            .hops
            .iter()
            .find(|h| h.hop == "ingest_to_kafka_ack")
            .and_then(|h| h.p99_ms);
        let slowest = self
            .hops
            .iter()
            .filter_map(|h| Some((h.hop, h.p99_ms?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let ack_slowest = slowest.is_some_and(|(hop, _)| hop == "ingest_to_kafka_ack");
        (fell_behind && (ack_slowest || bench_cores >= 0.5)).then(|| {
            format!(
                "WARNING: the hosted mock broker is likely the limit, not the pipeline: the \
                 benchmark process (clients + mock) used {bench_cores:.2} cores and the produce \
                 acknowledgement's p99 is {}; rerun against a real broker (KAFKA_BROKERS)",
                ack_p99.map_or_else(|| "unknown".to_owned(), |ms| format!("{ms:.1} ms"))
            )
        })
    }

    /// How the runs of `--runs` spread (empty for a single run): printed after the last one.
    pub fn spread(&self) -> String {
        if self.runs.len() < 2 {
            return String::new();
        }
        let range = |pick: fn(&RunFigures) -> f64| {
            let values = self.runs.iter().map(pick);
            let low = values.clone().fold(f64::INFINITY, f64::min);
            let high = values.fold(f64::NEG_INFINITY, f64::max);
            format!("{low:.1} – {high:.1}")
        };
        let lost: i64 = self.runs.iter().map(|r| r.lost).sum();
        format!(
            "{} runs: the median run by p50 had p50 {:.1} ms and p99 {:.1} ms; across the runs \
             p50 {} ms, p99 {} ms; lost in all runs: {lost}. The report holds the median run, \
             with every run's figures under \"runs\".\n",
            self.runs.len(),
            self.latency_ms.p50,
            self.latency_ms.p99,
            range(|r| r.latency_ms.p50),
            range(|r| r.latency_ms.p99),
        )
    }

    /// The text printed after a run.
    pub fn summary(&self) -> String {
        let mut out = self.headline();
        out.push_str(&self.latency_lines());
        out.push_str(&self.setting_lines());
        out.push_str(&self.machine_lines());
        out.push_str(&self.cpu_table());
        out.push_str(&self.hop_table());
        out
    }

    /// Where the updates went, and the rates; then why any fell short.
    fn headline(&self) -> String {
        let mut out = format!(
            "rate {}/s for {} s, {} clients: sent {}, skipped by the supplier {}, to the DLQ \
             {}, accepted {}, persisted {}, lost {}; {:.0} updates/s, {:.0} deliveries/s\n",
            self.rate_target,
            self.duration_s,
            self.ws_clients,
            self.updates_sent,
            self.versions_never_ingested,
            self.dead_lettered,
            self.updates_accepted,
            self.updates_persisted,
            self.lost,
            self.updates_per_sec,
            self.deliveries_per_sec,
        );
        for cause in self.shortfall() {
            let _ = writeln!(out, "SHORTFALL: {cause}");
        }
        if let Some(warning) = self.mock_limit_warning() {
            let _ = writeln!(out, "{warning}");
        }
        out
    }

    /// The clients' latency, the canary's age, and the fan-out's CPU per delivery.
    fn latency_lines(&self) -> String {
        let mut out = format!(
            "latency ms (supplier updated_at → client receive): p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}\n",
            self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.p999, self.latency_ms.max
        );
        if let Some(canary) = &self.canary {
            let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "canary age ms (ingest ingested_at → canary receive): p50 {} p99 {}, longest freeze {:.2} s, {} prices",
                ms(canary.p50_ms),
                ms(canary.p99_ms),
                canary.longest_freeze_ms as f64 / 1000.0,
                canary.frames
            );
        }
        if let Some(us) = self.service_cpu_us_per_delivery {
            let _ = writeln!(out, "odds-service CPU per delivered message: {us:.1} µs");
        }
        out
    }

    /// What Postgres promised and which Kafka ran, with a warning when the processor fell
    /// behind Kafka's retention.
    fn setting_lines(&self) -> String {
        let pg = &self.postgres;
        let cpu = match pg.postmaster_pid {
            Some(pid) => format!("; CPU: postmaster {pid} and its children"),
            None => "; CPU not measured (the server is not a process of this machine)".to_owned(),
        };
        let mut out = format!(
            "postgres ({}): fsync {}, synchronous_commit {}, full_page_writes {}{}{cpu}\nkafka: {}\n",
            pg.started_as,
            pg.fsync,
            pg.synchronous_commit,
            pg.full_page_writes,
            if pg.durable() {
                ""
            } else {
                " — NOT durable: commits are cheaper than production's"
            },
            self.kafka
        );
        if self.kafka_offset_resets > 0 {
            let _ = writeln!(
                out,
                "WARNING: the processor fell behind Kafka's retention {} time(s) and skipped \
                 records (odds_proc_offset_resets_total){}",
                self.kafka_offset_resets,
                if matches!(self.kafka, KafkaUsed::HostedMock { .. }) {
                    ": the hosted mock keeps only ~5 MB per partition; rerun with more \
                     --kafka-partitions"
                } else {
                    ""
                }
            );
        }
        out
    }

    /// The machine's cores and idle share, with a warning when it was saturated or the
    /// window opened before the pipeline caught up.
    fn machine_lines(&self) -> String {
        let idle = self
            .machine
            .idle_share
            .map_or_else(|| "unknown".to_owned(), |s| format!("{:.1} %", s * 100.0));
        let mut out = format!(
            "machine: {} cores, idle {idle} of the {:.1} s window\n",
            self.machine.cores, self.window_s
        );
        if self.machine.saturated {
            let _ = writeln!(
                out,
                "WARNING: the machine was saturated (idle below {:.0} %): latency includes \
                 queueing for CPU, not only the pipeline's own waits",
                SATURATED_BELOW_IDLE * 100.0
            );
        }
        if !self.caught_up {
            let _ = writeln!(
                out,
                "WARNING: the pipeline had not caught up with the supplier when the window \
                 opened: the figures include the start-up backlog"
            );
        }
        out
    }

    fn cpu_table(&self) -> String {
        let mut out = format!(
            "{:<40} {:>7} {:>6} {:>13} {:>8}\n",
            "cpu in the window", "cpu s", "cores", "s/1000 upd", "rss MiB"
        );
        let window = self.window_s.max(0.001);
        for (name, cpu) in &self.cpu_s {
            let hosts_mock = matches!(self.kafka, KafkaUsed::HostedMock { .. });
            let label = if name == BENCH_PROCESS && hosts_mock {
                format!("{name} (clients + mock Kafka)")
            } else if name == BENCH_PROCESS {
                format!("{name} (clients)")
            } else {
                name.clone()
            };
            let per_k = self
                .cpu_s_per_1000_updates
                .get(name)
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            let rss = self
                .rss_mb
                .get(name)
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "  {label:<38} {cpu:>7.2} {:>6.2} {per_k:>13} {rss:>8}",
                cpu / window
            );
        }
        out
    }

    fn hop_table(&self) -> String {
        let mut out = format!(
            "{:<40} {:<15} {:>8} {:>9} {:>9}\n",
            "hop (stage histograms, interpolated)", "stage", "count", "p50 ms", "p99 ms"
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        for hop in &self.hops {
            if hop.measured {
                let _ = writeln!(
                    out,
                    "  {:<38} {:<15} {:>8} {:>9} {:>9}",
                    hop.hop,
                    hop.stage,
                    hop.count,
                    ms(hop.p50_ms),
                    ms(hop.p99_ms)
                );
            } else {
                let _ = writeln!(out, "  {:<38} {:<15} not measured", hop.hop, hop.stage);
            }
        }
        out
    }
}

/// CPU seconds per 1000 updates, for every entry of `cpu_s`.
pub fn per_thousand(cpu_s: &BTreeMap<String, f64>, updates: u64) -> BTreeMap<String, f64> {
    if updates == 0 {
        return BTreeMap::new();
    }
    cpu_s
        .iter()
        .map(|(name, cpu)| {
            let v = cpu * 1000.0 / updates as f64;
            (name.clone(), (v * 10_000.0).round() / 10_000.0)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A measured hop of ingest's (shared with the chart's tests).
    pub(crate) fn hop(hop: &'static str, p50: f64, p99: f64) -> HopLatency {
        HopLatency {
            hop,
            stage: "odds-ingest",
            measured: true,
            count: 100,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
        }
    }

    fn assert_not_in_summary(report: &BenchReport, text: &str) {
        let summary = report.summary();
        assert!(!summary.contains(text), "{summary}");
    }

    /// A report of one clean run (shared with the chart's tests).
    pub(crate) fn report(idle: f64, fsync: &str) -> BenchReport {
        let cpu_s = BTreeMap::from([
            ("odds-ingest".to_owned(), 2.0),
            (BENCH_PROCESS.to_owned(), 5.0),
        ]);
        BenchReport {
            rate_target: 1000,
            duration_s: 5,
            ws_clients: 10,
            updates_sent: 5000,
            supplier_skipped: 0,
            versions_never_ingested: 0,
            dead_lettered: 0,
            updates_accepted: 5000,
            updates_persisted: 5000,
            lost: 0,
            updates_per_sec: 1000.0,
            deliveries_per_sec: 2000.0,
            latency_ms: Latency {
                p50: 1.0,
                p99: 2.0,
                p999: 3.0,
                max: 4.0,
            },
            rss_mb: BTreeMap::new(),
            window_s: 10.0,
            caught_up: true,
            kafka: KafkaUsed::HostedMock { partitions: 1 },
            max_p99_ms: 100.0,
            kafka_offset_resets: 0,
            cpu_s_per_1000_updates: per_thousand(&cpu_s, 5000),
            service_cpu_us_per_delivery: None,
            cpu_s,
            machine: Machine {
                cores: 2,
                idle_share: Some(idle),
                saturated: idle < SATURATED_BELOW_IDLE,
            },
            postgres: PostgresSettings {
                started_as: "durable".into(),
                fsync: fsync.into(),
                synchronous_commit: "on".into(),
                full_page_writes: "on".into(),
                postmaster_pid: Some(4242),
            },
            hops: Vec::new(),
            runs: Vec::new(),
            canary: None,
            find_max_steps: Vec::new(),
        }
    }

    #[test]
    fn the_summary_says_whose_cpu_postgres_is_or_that_it_is_not_measured() {
        let mut measured = report(0.5, "on");
        measured.cpu_s.insert(POSTGRES_PROCESS.to_owned(), 6.0);
        measured.cpu_s_per_1000_updates = per_thousand(&measured.cpu_s, 5000);
        let summary = measured.summary();
        assert!(
            summary.contains("CPU: postmaster 4242 and its children"),
            "{summary}"
        );
        assert!(summary.contains("postgres (server)"), "{summary}");
        assert!(summary.contains("1.200"), "{summary}");
        let json = serde_json::to_value(&measured).unwrap();
        assert_eq!(json["cpu_s"][POSTGRES_PROCESS], 6.0);
        assert_eq!(json["postgres"]["postmaster_pid"], 4242);
        let mut remote = report(0.5, "on");
        remote.postgres.postmaster_pid = None;
        assert!(
            remote.summary().contains("CPU not measured"),
            "{}",
            remote.summary()
        );
    }

    #[test]
    fn the_canarys_figures_are_reported_as_v1_freshness_serves_them() {
        let canary = FreshnessReport {
            publisher: "odds-demo bench".into(),
            measured_at: chrono::DateTime::UNIX_EPOCH,
            window_seconds: 60,
            frames: 1234,
            p50_ms: Some(5),
            p99_ms: Some(13),
            longest_freeze_ms: 210,
            longest_freeze_at: Some("MATCH_001 1X2".into()),
            blind: None,
        };
        let with_canary = BenchReport {
            canary: Some(canary.clone()),
            ..report(0.5, "on")
        };
        let summary = with_canary.summary();
        assert!(
            summary.contains("canary age ms (ingest ingested_at → canary receive): p50 5 p99 13, longest freeze 0.21 s, 1234 prices"),
            "{summary}"
        );
        let json = serde_json::to_string(&with_canary).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        use odds_contracts::JsonMessage as _;
        let parsed = FreshnessReport::parse(value["canary"].to_string().as_bytes());
        assert_eq!(parsed, Some(canary));
        assert_not_in_summary(&report(0.5, "on"), "canary");
    }

    #[test]
    fn a_saturated_machine_and_a_non_durable_postgres_are_said_in_words() {
        let busy = report(0.04, "off").summary();
        assert!(
            busy.contains("WARNING: the machine was saturated"),
            "{busy}"
        );
        assert!(busy.contains("NOT durable"), "{busy}");
        let calm = report(0.5, "on").summary();
        assert!(!calm.contains("WARNING"), "{calm}");
        assert!(!calm.contains("NOT durable"), "{calm}");
        assert!(calm.contains("idle 50.0 %"), "{calm}");
        let behind = BenchReport {
            caught_up: false,
            ..report(0.5, "on")
        };
        assert!(
            behind.summary().contains("had not caught up"),
            "{}",
            behind.summary()
        );
        assert!(!calm.contains("retention"), "{calm}");
        let lossy = BenchReport {
            lost: 10,
            kafka_offset_resets: 2,
            ..report(0.5, "on")
        };
        assert!(lossy.summary().contains("skipped records"));
        assert!(lossy.summary().contains("--kafka-partitions"));
        let external = BenchReport {
            kafka: KafkaUsed::Brokers {
                bootstrap: "kafka:9092".into(),
            },
            ..lossy
        };
        assert!(external.summary().contains("KAFKA_BROKERS=kafka:9092"));
        assert!(!external.summary().contains("--kafka-partitions"));
    }

    #[test]
    fn every_update_that_did_not_reach_history_is_named_by_its_cause() {
        let clean = report(0.5, "on");
        assert!(clean.shortfall().is_empty() && clean.held());
        assert_not_in_summary(&clean, "SHORTFALL");
        // The supplier dropped ingest as a slow consumer: skipped, not lost.
        let skipped = BenchReport {
            supplier_skipped: 3789,
            versions_never_ingested: 3700,
            updates_accepted: 1300,
            updates_persisted: 1300,
            ..report(0.5, "on")
        };
        let causes = skipped.why_not_held();
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(causes[0].contains("skipped by the supplier") && causes[0].contains("3789"));
        assert!(!skipped.held());
        let summary = skipped.summary();
        assert!(
            summary.contains("skipped by the supplier 3700"),
            "{summary}"
        );
        assert!(summary.contains("lost 0"), "{summary}");
        // ... and with the mock's produce acknowledgement the slowest hop, the mock is named.
        let mock_bound = BenchReport {
            hops: vec![
                hop("supplier_to_ingest", 1.0, 2.0),
                hop("ingest_to_kafka_ack", 30.0, 80.0),
            ],
            ..skipped.clone()
        };
        assert!(mock_bound
            .summary()
            .contains("hosted mock broker is likely the limit"));
        let real = BenchReport {
            kafka: KafkaUsed::Brokers {
                bootstrap: "127.0.0.1:19092".into(),
            },
            ..mock_bound
        };
        assert_not_in_summary(&real, "hosted mock broker");
        // Rejected and lost are separate causes; lost is what was accepted and not stored.
        let both = BenchReport {
            dead_lettered: 5,
            lost: 2,
            ..report(0.5, "on")
        };
        let causes = both.why_not_held();
        assert!(causes
            .iter()
            .any(|c| c.contains("5 updates rejected to the DLQ")));
        assert!(causes.iter().any(|c| c.contains("LOST: 2 accepted")));
        // A run of several that skipped makes the rate fail, naming the run.
        let median = median_run(vec![clean.clone(), skipped, clean]).unwrap();
        assert!(median
            .why_not_held()
            .iter()
            .any(|c| c.starts_with("run 2: skipped by the supplier")));
    }

    #[test]
    fn cpu_per_thousand_updates_covers_every_process() {
        let r = report(0.5, "on");
        assert_eq!(r.cpu_s_per_1000_updates["odds-ingest"], 0.4);
        assert_eq!(r.cpu_s_per_1000_updates[BENCH_PROCESS], 1.0);
        assert!(per_thousand(&r.cpu_s, 0).is_empty());
        assert!(r
            .summary()
            .contains("odds-demo-bench (clients + mock Kafka)"));
    }

    fn run_with(p50: f64, lost: i64) -> BenchReport {
        BenchReport {
            lost,
            latency_ms: Latency {
                p50,
                p99: p50 * 3.0,
                p999: p50 * 4.0,
                max: p50 * 5.0,
            },
            ..report(0.5, "on")
        }
    }

    #[test]
    fn several_runs_report_the_median_run_and_keep_every_run() {
        assert!(median_run(Vec::new()).is_none());
        let single = median_run(vec![run_with(7.0, 0)]).unwrap();
        assert!(single.runs.is_empty());
        assert_eq!(single.spread(), "");

        let median =
            median_run(vec![run_with(18.0, 0), run_with(9.0, 0), run_with(13.0, 0)]).unwrap();
        assert_eq!(median.latency_ms.p50, 13.0);
        let in_order: Vec<f64> = median.runs.iter().map(|r| r.latency_ms.p50).collect();
        assert_eq!(in_order, [18.0, 9.0, 13.0]);
        let spread = median.spread();
        assert!(spread.starts_with("3 runs"), "{spread}");
        assert!(spread.contains("p50 13.0 ms and p99 39.0 ms"), "{spread}");
        assert!(
            spread.contains("p50 9.0 – 18.0 ms, p99 27.0 – 54.0 ms"),
            "{spread}"
        );
        assert!(median.held());

        // A loss in any run fails the rate, whichever run is the median.
        let lossy = median_run(vec![run_with(9.0, 0), run_with(13.0, 0), run_with(18.0, 4)]);
        let lossy = lossy.unwrap();
        assert_eq!(lossy.lost, 0);
        assert!(!lossy.held());
        assert!(lossy.spread().contains("lost in all runs: 4"));
    }
}
