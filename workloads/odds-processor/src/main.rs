//! `odds-processor` binary: parse the configuration, then run or migrate.

use odds_processor::config::Invocation;
use odds_processor::{run, Cli, Metrics};
use odds_runtime::cli::{metric_families_requested, StageProcess};
use odds_runtime::metrics::{print_families, ComponentMetrics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if metric_families_requested() {
        return Ok(print_families(&[&Metrics::registered()?.0])?);
    }
    match Cli::invocation() {
        Invocation::Migrate(args) => {
            odds_runtime::telemetry::init(args.ops.log_format, &args.ops.log_filter)?;
            run::migrate(&args).await?;
        }
        Invocation::Run(args) => {
            let process = StageProcess::start("odds-processor", &args.ops)?;
            let outcome = run::run(*args, process.shutdown.clone()).await;
            process.finish(outcome).await?;
        }
    }
    Ok(())
}
