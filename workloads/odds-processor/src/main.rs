//! `odds-processor` binary: parse the configuration, then run or migrate.

use odds_processor::config::Invocation;
use odds_processor::{run, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if odds_runtime::cli::metric_families_requested() {
        let registry = odds_processor::metrics::Metrics::registry()?;
        odds_processor::metrics::Metrics::register(&registry)?;
        return Ok(odds_runtime::metrics::print_families(&[&registry])?);
    }
    match Cli::invocation() {
        Invocation::Migrate(args) => {
            odds_runtime::telemetry::init(args.ops.log_format, &args.ops.log_filter)?;
            run::migrate(&args).await?;
        }
        Invocation::Run(args) => {
            let traces = odds_runtime::telemetry::init_with_tracing(
                args.ops.log_format,
                &args.ops.log_filter,
                "odds-processor",
            )?;
            let shutdown = odds_runtime::shutdown::on_signals();
            let outcome = run::run(*args, shutdown).await;
            traces.shutdown().await;
            outcome?;
        }
    }
    Ok(())
}
