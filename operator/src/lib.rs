//! The odds-pipeline operator: the `OddsPipeline` CRD and the reconciler that keeps a
//! pipeline's children (topics, migration Job, Deployments, Services, budgets, autoscaler,
//! Ingress) in the shape the spec asks for, and reports health in the status.
//!
//! Reconcile is dereference ([`observe`]) → [`validate`] → [`build`] (pure) → [`apply`] → [`status`].
//! Validation is the only way to a [`validate::ValidPipeline`], and the builders take nothing
//! else, so they never meet a spec that breaks a rule. Each step has its own error type, and
//! every outcome, failures included, ends in the pipeline's status ([`controller`]); a
//! workload whose rollout is stuck does too ([`rollout`]). What clients see is judged apart:
//! a canary client per pipeline ([`canaries`]) against `spec.slo` ([`freshness`]).

pub mod apply;
pub mod build;
pub mod canaries;
pub mod controller;
pub mod crd;
pub mod discovery;
pub mod events;
pub mod freshness;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod names;
pub mod observe;
pub mod prune;
pub mod render;
pub mod rollout;
pub mod run;
pub mod status;
pub mod urls;
pub mod validate;
pub mod watch;
