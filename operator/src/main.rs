//! `odds-operator`: `run` (default) reconciles OddsPipelines; `crd` prints the CRD YAML.

use clap::{Parser, Subcommand};
use odds_operator::run::{run, RunArgs};

/// Kubernetes operator for the odds pipeline.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the OddsPipeline CRD as YAML (what `crds/oddspipelines.yaml` holds).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            print!("{}", odds_operator::crd::crd_yaml()?);
            return Ok(());
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    odds_runtime::telemetry::init(args.ops.log_format, &args.ops.log_filter)?;
    let shutdown = odds_runtime::shutdown::on_signals();
    run(args, shutdown).await?;
    Ok(())
}
