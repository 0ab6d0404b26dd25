//! The operator's tests, in one binary: kube, k8s-openapi and the fake API are linked once
//! instead of once per file, which is most of the test build's time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod autoscaling;
mod builders;
mod consumer_group;
mod contract;
mod crd;
mod discovery;
mod fixtures;
mod freshness;
mod harness;
mod kafka_auth;
mod keda_schema;
mod leader;
mod metrics;
mod monitoring_schema;
mod namespaces;
mod rbac;
mod reconcile_changes;
mod reconcile_failures;
mod reconcile_rollout;
mod render;
mod rollout;
mod status;
mod topics;
mod tracing;
mod watch;
