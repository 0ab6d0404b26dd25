//! A stand-in for an external odds supplier.
//!
//! Real suppliers push price changes over a WebSocket; to develop, test and benchmark the
//! pipeline without one, this crate generates a realistic, reproducible stream: prices move as
//! a bounded random walk with a bookmaker margin ([`feed`]), and every connected client receives
//! the same frames ([`server`]). A client that cannot keep up is disconnected instead of
//! slowing the others down.

pub mod config;
pub mod feed;
pub mod server;

pub use config::SimulatorConfig;
pub use feed::OddsFeed;
pub use server::{metrics_registry, run, SimulatorServer};
