//! Starting and stopping the four stages in the right order.
//!
//! Consumers first (processor, odds-service), then the supplier, then ingest: nothing is
//! produced before something is ready to consume it. Stopping goes the other way round, so
//! each stage drains what the one before it handed over.

use crate::children::{ChildProcess, ChildSpec};
use crate::infra::{Infra, KafkaChoice, DEMO_PARTITIONS};
use anyhow::{bail, Context};
use odds_contracts::{env, Market};
use odds_testkit::{free_port, PostgresDurability};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// What the kubelet waits between SIGTERM and SIGKILL (Kubernetes' default grace is 30 s).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(15);

/// What to run.
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    /// Directory holding the stage binaries.
    pub bin_dir: PathBuf,
    /// Port of odds-service (REST, `/ws/odds`, the odds page).
    pub port: u16,
    pub rate: u32,
    pub events: u32,
    pub seed: u64,
    /// Stop the supplier after this many updates (0 = never).
    pub total: u64,
    /// The supplier's version base; `None` = its clock default (versions survive restarts).
    pub version_base: Option<u64>,
    /// Log level of the stages (RUST_LOG syntax).
    pub log_filter: String,
    /// Durability of the throwaway Postgres (when `DATABASE_URL` does not name one).
    pub postgres: PostgresDurability,
    /// Markets the supplier quotes for every event.
    pub markets: Vec<Market>,
    /// Partitions of `odds_updates` when the launcher starts Kafka (mock or Tansu).
    pub kafka_partitions: i32,
    /// Which Kafka to start when `KAFKA_BROKERS` is not set (Tansu wins over it).
    pub kafka: KafkaChoice,
    /// Where the stages send traces, if anywhere.
    pub tracing: Option<TraceExport>,
}

/// Trace export for every stage: the standard `OTEL_*` environment (see
/// `odds_runtime::otel::config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExport {
    /// Collector base URL (`http://host:4318`).
    pub endpoint: String,
    /// Share of updates traced, 0 to 1 (parent-based: a traced update is traced end to end).
    pub sampling_ratio: f64,
    /// Milliseconds between the stages' exports; `None` keeps the SDK's 5 s.
    pub export_every_ms: Option<u64>,
}

/// `--otlp-endpoint` and `--trace-sampling-ratio`, shared by `odds-demo run` and `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Send the stages' traces to this OTLP/HTTP collector: its base URL, such as
    /// http://127.0.0.1:4318 (Jaeger v2 and the OpenTelemetry Collector listen there). No
    /// traces without it.
    #[arg(long, env = "DEMO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of the supplier's updates traced end to end, 0 to 1, when traces are sent.
    #[arg(long, default_value_t = 0.01, value_parser = parse_ratio)]
    pub trace_sampling_ratio: f64,
}

impl TraceArgs {
    /// The export these flags ask for, if any.
    pub fn export(&self) -> Option<TraceExport> {
        self.otlp_endpoint.as_ref().map(|endpoint| TraceExport {
            endpoint: endpoint.clone(),
            sampling_ratio: self.trace_sampling_ratio,
            export_every_ms: None,
        })
    }
}

/// A sampling ratio: a number from 0 to 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "{text:?} is not a ratio from 0 to 1 (0.01 traces 1 % of updates)"
        )),
    }
}

impl TraceExport {
    /// The variables to set on every stage.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (env::OTEL_EXPORTER_OTLP_ENDPOINT, self.endpoint.clone()),
            (
                env::OTEL_TRACES_SAMPLER,
                "parentbased_traceidratio".to_owned(),
            ),
            (
                env::OTEL_TRACES_SAMPLER_ARG,
                self.sampling_ratio.to_string(),
            ),
        ];
        if let Some(every) = self.export_every_ms {
            vars.push((env::OTEL_BSP_SCHEDULE_DELAY, every.to_string()));
        }
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

impl LauncherOptions {
    /// Options for tests: binaries next to the running test executable, an ephemeral port.
    pub fn for_tests(rate: u32, events: u32, total: u64) -> anyhow::Result<LauncherOptions> {
        Ok(LauncherOptions {
            bin_dir: default_bin_dir()?,
            port: free_port()?,
            rate,
            events,
            seed: 7,
            total,
            // Versions 1, 2, ... so a test can regenerate what the supplier sent.
            version_base: Some(0),
            log_filter: "warn".into(),
            postgres: PostgresDurability::FastUnsafe,
            // Both markets, so every test of the whole pipeline covers current odds per
            // (event, market).
            markets: Market::ALL.to_vec(),
            kafka_partitions: DEMO_PARTITIONS,
            kafka: KafkaChoice::HostedMock,
            tracing: None,
        })
    }
}

/// The processor's fetch wait against the hosted mock broker (see [`processor_env`]).
const MOCK_FETCH_WAIT_ENV: &str = "KAFKA_PROP_FETCH_WAIT_MAX_MS";
const MOCK_FETCH_WAIT_MS: &str = "1";
/// The processor's consumer-group protocol against a broker started here (see
/// [`processor_env`]).
const GROUP_PROTOCOL_ENV: &str = "KAFKA_PROP_GROUP_PROTOCOL";

/// Where cargo put the binaries: beside this executable, or one level up from `deps/` when
/// this is a test or bench executable.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The running pipeline.
pub struct Launcher {
    pub infra: Infra,
    /// In start order: processor, odds-service, supplier-simulator, odds-ingest.
    pub children: Vec<ChildProcess>,
    /// odds-service's REST/WebSocket address.
    pub service_addr: SocketAddr,
    /// How each stage was started, for [`Launcher::restart`] and new replicas.
    pub(crate) specs: Vec<ChildSpec>,
    /// The stages' log files (`<stage>.log`), removed with the launcher.
    pub(crate) log_dir: tempfile::TempDir,
}

impl Launcher {
    /// Provides Kafka, Postgres and Redis, migrates, and starts the stages in order, each
    /// once the one before it is ready.
    pub async fn start(options: LauncherOptions) -> anyhow::Result<Launcher> {
        check_binaries(&options.bin_dir)?;
        let log_dir = tempfile::Builder::new()
            .prefix("odds-demo-logs-")
            .tempdir()
            .context("creating the log directory")?;
        let infra = Infra::provide(
            options.postgres,
            &options.kafka,
            options.kafka_partitions,
            log_dir.path(),
        )
        .await?;

        migrate(&options.bin_dir, &infra.database_url).await?;

        let service_addr: SocketAddr = ([127, 0, 0, 1], options.port).into();
        let specs = stage_specs(&options, &infra, service_addr)?;
        let mut launcher = Launcher {
            infra,
            children: Vec::new(),
            service_addr,
            specs: specs.clone(),
            log_dir,
        };
        for spec in specs {
            let child = ChildProcess::spawn(spec, launcher.log_dir.path())?;
            let ready = child.wait_ready(READY_TIMEOUT).await;
            let name = child.name;
            let lines = child.last_lines();
            launcher.children.push(child);
            if let Err(error) = ready {
                launcher.stop().await;
                bail!("{error}\nlast output of {name}:\n{}", lines.join("\n"));
            }
        }
        Ok(launcher)
    }

    pub fn child(&self, name: &str) -> Option<&ChildProcess> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Resolves when any stage exits, as an error that names it and shows its last output:
    /// nothing here expects a stage to stop on its own.
    pub async fn unexpected_exit(&self) -> anyhow::Error {
        let waits = self.children.iter().map(|c| {
            Box::pin(async move {
                let status = c.wait_exit().await;
                // Give the output readers a moment to catch the last lines.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
                anyhow::anyhow!(
                    "{} exited unexpectedly ({status}); its last output:\n{}",
                    c.name,
                    c.last_lines().join("\n")
                )
            })
        });
        futures_util::future::select_all(waits).await.0
    }

    /// Stops one stage (SIGTERM, SIGKILL after the grace period) and starts it again with the
    /// same configuration, waiting until it is ready: what a rollout does to a pod.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        self.children[index].terminate(STOP_GRACE).await;
        self.start_again(index).await
    }

    /// Kills one stage with SIGKILL (a crash, an OOM kill) and starts it again.
    pub async fn kill_and_restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        self.children[index].kill().await;
        self.start_again(index).await
    }

    /// Stops one stage for good (SIGTERM, SIGKILL after the grace period).
    pub async fn stop_stage(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        self.children[index].terminate(STOP_GRACE).await;
        Ok(())
    }

    /// The supplier's WebSocket URL (what ingest reads).
    pub fn supplier_url(&self) -> Option<String> {
        let spec = self.specs.iter().find(|s| s.name == "odds-ingest")?;
        spec.env
            .iter()
            .find(|(k, _)| k == env::SUPPLIER_URL)
            .map(|(_, v)| v.clone())
    }

    fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.children
            .iter()
            .position(|c| c.name == name)
            .with_context(|| format!("no stage named {name}"))
    }

    async fn start_again(&mut self, index: usize) -> anyhow::Result<()> {
        let name = self.children[index].name;
        let spec = self
            .specs
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no spec for {name}"))?
            .clone();
        let child = ChildProcess::spawn(spec, self.log_dir.path())?;
        let ready = child.wait_ready(READY_TIMEOUT).await;
        let lines = child.last_lines();
        self.children[index] = child;
        ready.with_context(|| format!("restarted {name}; last output:\n{}", lines.join("\n")))
    }

    /// Stops every stage, newest first, each with SIGTERM and a grace period, then the
    /// Kafka broker if one was started here.
    pub async fn stop(&mut self) {
        for child in self.children.iter().rev() {
            match child.terminate(STOP_GRACE).await {
                Some(status) if !status.success() => {
                    tracing::warn!(name = child.name, %status, "stage exited uncleanly")
                }
                _ => {}
            }
        }
        self.infra.stop_broker().await;
    }

    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    /// Keeps the stages' log files after the launcher is gone (they are otherwise removed
    /// with it) and returns where they are: a failed run is explained by them.
    pub fn keep_logs(self) -> PathBuf {
        self.log_dir.keep()
    }
}

/// Fails, saying how to build them, unless every stage binary is in `bin_dir`.
fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for name in [
        "supplier-simulator",
        "odds-ingest",
        "odds-processor",
        "odds-service",
    ] {
        if !bin_dir.join(name).is_file() {
            bail!(
                "{name} not found in {}; build the stages first: cargo build --release --bins",
                bin_dir.display()
            );
        }
    }
    Ok(())
}

/// How each stage is started, in start order: processor, odds-service, supplier-simulator,
/// odds-ingest.
fn stage_specs(
    options: &LauncherOptions,
    infra: &Infra,
    service_addr: SocketAddr,
) -> anyhow::Result<Vec<ChildSpec>> {
    let sim_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let stage = |name: &'static str, env: Vec<(&str, String)>| stage_spec(options, name, env);
    Ok(vec![
        stage("odds-processor", processor_env(infra))?,
        stage(
            "odds-service",
            vec![
                (env::LISTEN_ADDR, service_addr.to_string()),
                (env::DATABASE_URL, infra.database_url.clone()),
                (env::REDIS_URL, infra.redis_url.clone()),
            ],
        )?,
        stage("supplier-simulator", simulator_env(options, sim_addr))?,
        stage(
            "odds-ingest",
            vec![
                (env::SUPPLIER_URL, format!("ws://{sim_addr}/ws")),
                (env::KAFKA_BROKERS, infra.kafka_brokers.clone()),
            ],
        )?,
    ])
}

/// Stage `name` with its own `env` after what every stage gets: its ops address (a free
/// port), plain-text logs at the options' level, and the trace export.
fn stage_spec(
    options: &LauncherOptions,
    name: &'static str,
    env: Vec<(&str, String)>,
) -> anyhow::Result<ChildSpec> {
    let ops: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut all = vec![
        (env::HTTP_ADDR.to_owned(), ops.to_string()),
        (env::LOG_FORMAT.to_owned(), "text".to_owned()),
        (env::RUST_LOG.to_owned(), options.log_filter.clone()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ];
    all.extend(options.tracing.iter().flat_map(TraceExport::env));
    all.extend(env.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Ok(ChildSpec {
        name,
        binary: options.bin_dir.join(name),
        args: Vec::new(),
        env: all,
        ops_addr: ops,
    })
}

/// The processor's environment, with what the Kafka started here needs of it.
fn processor_env(infra: &Infra) -> Vec<(&'static str, String)> {
    let mut processor_env = vec![
        (env::KAFKA_BROKERS, infra.kafka_brokers.clone()),
        (env::DATABASE_URL, infra.database_url.clone()),
        (env::REDIS_URL, infra.redis_url.clone()),
    ];
    if infra.kafka_cluster().is_some() {
        // librdkafka's mock broker parks a fetch that finds no data for the whole
        // fetch.wait.max.ms and does not wake it when data arrives (a real broker
        // answers at once), which alone cost ~5 ms per update at the processor's 10 ms.
        processor_env.push((MOCK_FETCH_WAIT_ENV, MOCK_FETCH_WAIT_MS.to_owned()));
    }
    if infra.broker().is_some() {
        // Tansu 0.6 has no KIP-848 consumer-group API (ConsumerGroupHeartbeat): the
        // processor joins with the classic protocol, as it would on a Kafka before 4.0.
        processor_env.push((GROUP_PROTOCOL_ENV, "classic".to_owned()));
    }
    processor_env
}

/// The supplier simulator's environment: its address and what it sends.
fn simulator_env(options: &LauncherOptions, addr: SocketAddr) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        (env::LISTEN_ADDR, addr.to_string()),
        (env::SIM_RATE, options.rate.to_string()),
        (env::SIM_EVENTS, options.events.to_string()),
        (env::SIM_SEED, options.seed.to_string()),
        (env::SIM_MARKETS, market_list(&options.markets)),
        (env::SIM_TOTAL, options.total.to_string()),
    ];
    if let Some(base) = options.version_base {
        vars.push((env::SIM_VERSION_BASE, base.to_string()));
    }
    vars
}

/// Applies the migrations with the processor's own `migrate` command, as the operator's Job does.
async fn migrate(bin_dir: &Path, database_url: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(bin_dir.join("odds-processor"))
        .arg("migrate")
        .env(env::DATABASE_URL, database_url)
        .env("NO_COLOR", "1")
        .output()
        .await
        .context("running odds-processor migrate")?;
    if !output.status.success() {
        bail!(
            "odds-processor migrate failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `SIM_MARKETS` for `markets` (the simulator's default, `1X2`, when empty).
fn market_list(markets: &[Market]) -> String {
    if markets.is_empty() {
        return Market::MatchResult.as_str().to_owned();
    }
    let names: Vec<&str> = markets.iter().map(|m| m.as_str()).collect();
    names.join(",")
}
