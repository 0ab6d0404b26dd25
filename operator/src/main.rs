//! `odds-operator`: `run` (default) reconciles OddsPipelines; `crd` prints the CRD YAML;
//! `render` prints what the operator would apply for a pipeline file, without a cluster.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use odds_operator::metrics::Metrics;
use odds_operator::render::{render, secrets_from_yaml, RenderOptions};
use odds_operator::run::{run, RunArgs};
use odds_runtime::cli::{metric_families_requested, print_stdout, StageProcess};
use odds_runtime::metrics::print_families;
use std::io::Read;
use std::path::PathBuf;

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
    /// Print every child object the operator would apply for the OddsPipeline(s) in a file,
    /// as YAML, through the controller's own admission rules, validation and builders (no
    /// cluster needed). Prints the steady state: topics Ready and migration done. Exits 1 with
    /// the API server's or the controller's message for an invalid spec.
    Render(RenderArgs),
}

/// Flags of `odds-operator render`. Discovery's answers are flags, since no cluster is asked.
#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The OddsPipeline file (multi-document YAML allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Namespace for pipelines whose metadata names none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Whether the cluster has Strimzi's KafkaTopic CRD (kafka.strimzi.io/v1); with `false`, a
    /// `kafka.clusterRef` pipeline fails as the controller's StrimziNotInstalled does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    strimzi: bool,
    /// Whether the cluster has KEDA's ScaledObject CRD (keda.sh/v1alpha1); without it, Lag and
    /// Connections autoscaling fall back to a CPU HorizontalPodAutoscaler, as on a cluster.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    keda: bool,
    /// Whether the cluster has the Prometheus Operator's PodMonitor CRD
    /// (monitoring.coreos.com/v1); without it, Connections autoscaling (with `podMonitor`, the
    /// default) falls back to a CPU HorizontalPodAutoscaler, as on a cluster.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pod_monitors: bool,
    /// A YAML file with the Secrets the pipelines reference (other kinds are skipped): their
    /// presence and keys are validated and their values go into the pods' config hashes, as
    /// on a cluster. Without it every referenced Secret key counts as present.
    #[arg(long)]
    secrets: Option<PathBuf>,
}

/// Started as every stage's `main` is ([`StageProcess`]): the same logging, trace export
/// (when `OTEL_*` asks for it) and stop signals, and the same `--print-metric-families`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if metric_families_requested() {
        let registry = Metrics::registry()?;
        Metrics::register(&registry)?;
        return Ok(print_families(&[&registry])?);
    }
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => return print_crd(),
        Some(Command::Render(args)) => return print_render(&args),
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    let process = StageProcess::start("odds-operator", &args.ops)?;
    let outcome = run(args, process.shutdown.clone()).await;
    Ok(process.finish(outcome).await?)
}

/// Prints the children of the pipelines in `args.file`; an invalid spec is an error (exit 1).
fn print_render(args: &RenderArgs) -> anyhow::Result<()> {
    let pipelines = read_file(&args.file)?;
    let secrets = match &args.secrets {
        Some(path) => Some(
            secrets_from_yaml(&read_file(path)?)
                .with_context(|| format!("reading Secrets from {}", path.display()))?,
        ),
        None => None,
    };
    let options = RenderOptions {
        namespace: args.namespace.clone(),
        strimzi: args.strimzi,
        keda: args.keda,
        pod_monitors: args.pod_monitors,
        secrets,
    };
    let yaml = render(&pipelines, &options)?;
    print_stdout(&yaml)?;
    Ok(())
}

fn read_file(path: &PathBuf) -> anyhow::Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

/// Prints the CRD. A reader that stops early (`odds-operator crd | head`) closes the pipe;
/// that is the reader's choice, not an error, so EPIPE ends the command quietly
/// ([`print_stdout`]).
fn print_crd() -> anyhow::Result<()> {
    print_stdout(&odds_operator::crd::crd_yaml()?)?;
    Ok(())
}
