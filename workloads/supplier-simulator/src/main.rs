use anyhow::Context;
use clap::Parser;
use supplier_simulator::{run, SimulatorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SimulatorConfig::parse();
    odds_runtime::telemetry::init(config.ops.log_format, &config.ops.log_filter)?;
    let shutdown = odds_runtime::shutdown::on_signals();
    run(config, shutdown)
        .await
        .context("supplier-simulator failed")
}
