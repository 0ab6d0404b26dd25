//! The whole pipeline on one machine, for `make demo`, the end-to-end test and `make bench`.
//!
//! This is a launcher, not an orchestrator: it provides the infrastructure a cluster would
//! ([`infra`]: Postgres, Redis, a Kafka mock cluster, or the URLs you give it), starts each
//! stage's real binary as a child process with the same environment variables the operator
//! sets ([`children`]), shows what flows ([`status`]), and takes everything down again.
//! Scaling and restarts are Kubernetes' job; [`replicas`] performs them the way Kubernetes
//! does, for the fault run.

pub mod bench;
pub mod broker;
pub mod children;
pub mod infra;
pub mod launcher;
pub mod metrics_text;
pub mod replicas;
pub mod status;

pub use launcher::{Launcher, LauncherOptions, TraceArgs, TraceExport};
