//! `odds-operator`: `run` (default) reconciles OddsPipelines; `crd` prints the CRD YAML.

use clap::{Parser, Subcommand};
use odds_operator::run::{run, RunArgs};
use std::io::Write;

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
        Some(Command::Crd) => return print_crd(),
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    odds_runtime::telemetry::init(args.ops.log_format, &args.ops.log_filter)?;
    let shutdown = odds_runtime::shutdown::on_signals();
    run(args, shutdown).await?;
    Ok(())
}

/// Prints the CRD. A reader that stops early (`odds-operator crd | head`) closes the pipe;
/// that is the reader's choice, not an error, so EPIPE ends the command quietly.
fn print_crd() -> anyhow::Result<()> {
    let yaml = odds_operator::crd::crd_yaml()?;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
