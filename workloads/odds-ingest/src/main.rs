//! `odds-ingest` binary: parse the configuration, then run the stage until SIGTERM.

use anyhow::Context;
use clap::{CommandFactory, Parser};
use odds_ingest::metrics::IngestMetrics;
use odds_ingest::{run, IngestConfig};
use odds_runtime::cli::{metric_families_requested, StageProcess};
use odds_runtime::metrics::{print_families, ComponentMetrics};

// One runtime thread: the supplier reader hands every frame to the frame loop, and on a
// multi-threaded runtime the two ran on different workers, so a frame often cost a
// cross-thread wake-up (a futex call) on top of its own work. librdkafka has its own threads
// for the broker I/O and the delivery reports; the blocking metadata probe runs on tokio's
// blocking pool (issue #26).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if metric_families_requested() {
        return Ok(print_families(&[&IngestMetrics::registered()?.0])?);
    }
    let config = IngestConfig::parse();
    if let Err(message) = config.check() {
        IngestConfig::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let process = StageProcess::start("odds-ingest", &config.ops)?;
    let outcome = run(config, process.shutdown.clone()).await;
    process.finish(outcome.context("odds-ingest failed")).await
}
