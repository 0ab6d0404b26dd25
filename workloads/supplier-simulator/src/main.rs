use anyhow::Context;
use clap::Parser;
use supplier_simulator::{run, SimulatorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if odds_runtime::cli::metric_families_requested() {
        let registry = supplier_simulator::metrics_registry()?;
        return Ok(odds_runtime::metrics::print_families(&[&registry])?);
    }
    let config = SimulatorConfig::parse();
    odds_runtime::telemetry::init(config.ops.log_format, &config.ops.log_filter)?;
    let shutdown = odds_runtime::shutdown::on_signals();
    run(config, shutdown)
        .await
        .context("supplier-simulator failed")
}
