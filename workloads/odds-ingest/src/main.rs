use anyhow::Context;
use clap::{CommandFactory, Parser};
use odds_ingest::{run, IngestConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if odds_runtime::cli::metric_families_requested() {
        let registry = odds_ingest::metrics::IngestMetrics::registry()?;
        odds_ingest::metrics::IngestMetrics::register(&registry)?;
        return Ok(odds_runtime::metrics::print_families(&[&registry])?);
    }
    let config = IngestConfig::parse();
    if let Err(message) = config.check() {
        IngestConfig::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let traces = odds_runtime::telemetry::init_with_tracing(
        config.ops.log_format,
        &config.ops.log_filter,
        "odds-ingest",
    )?;
    let shutdown = odds_runtime::shutdown::on_signals();
    let outcome = run(config, shutdown).await.context("odds-ingest failed");
    traces.shutdown().await;
    outcome
}
