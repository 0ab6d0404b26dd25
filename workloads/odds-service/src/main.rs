//! Entry point: parse configuration, start logging and the service, run until SIGTERM.

use clap::Parser;
use odds_runtime::cli::{metric_families_requested, StageProcess};
use odds_service::ServiceConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if metric_families_requested() {
        let metrics = odds_service::metrics::Metrics::new()?;
        return Ok(odds_runtime::metrics::print_families(&[
            &metrics.ws_registry,
            &metrics.api_registry,
        ])?);
    }
    let config = ServiceConfig::parse();
    let process = StageProcess::start("odds-service", &config.ops)?;
    let service = odds_service::start(&config, process.shutdown.clone()).await?;
    service.wait().await;
    tracing::info!("odds-service stopped");
    process.finish(Ok(())).await
}
