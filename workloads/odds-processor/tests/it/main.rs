//! The processor's integration tests, one binary (one link of rdkafka, sqlx and redis):
//! delivery guarantees, consumer-group behaviour, outages, and the binary itself, against real
//! Postgres, Redis and librdkafka's mock Kafka cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod common;
mod delivery;
mod dlq;
mod group;
mod outages;
mod pipeline;
mod versions;
