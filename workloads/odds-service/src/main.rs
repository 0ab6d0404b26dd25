//! Entry point: parse configuration, start logging and the service, run until SIGTERM.

use clap::Parser;
use odds_service::ServiceConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if odds_runtime::cli::metric_families_requested() {
        let metrics = odds_service::metrics::Metrics::new()?;
        return Ok(odds_runtime::metrics::print_families(&[
            &metrics.ws_registry,
            &metrics.api_registry,
        ])?);
    }
    let config = ServiceConfig::parse();
    let traces = odds_runtime::telemetry::init_with_tracing(
        config.ops.log_format,
        &config.ops.log_filter,
        "odds-service",
    )?;
    let shutdown = odds_runtime::shutdown::on_signals();
    let service = odds_service::start(&config, shutdown).await?;
    service.wait().await;
    tracing::info!("odds-service stopped");
    traces.shutdown().await;
    Ok(())
}
