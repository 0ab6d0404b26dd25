//! odds-service's integration tests, one binary (one link of the heavy dependencies) against
//! real Redis and Postgres: REST ([`rest`]), the WebSocket fan-out ([`ws`]), Redis faults with
//! resyncs ([`resync`]), the real processor in front ([`pipeline`]), and peers that must not hold shutdown ([`shutdown`]). [`common`] is
//! their shared harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pipeline;
mod rest;
mod resync;
mod shutdown;
mod subscriptions;
mod upstream;
mod ws;
