//! The freshness canary: a WebSocket client of odds-service that measures what clients see.
//!
//! Every internal metric of the pipeline can look healthy while customers stare at old
//! prices (a wedged fan-out, a NetworkPolicy, a Service pointing at the wrong pods). So the
//! objective a pipeline is judged by is measured from the outside, as a client: the age of
//! each price when it reaches the socket, and every freeze (a market that moved upstream but
//! not on the screen), summarised over a sliding window ([`window`]).
//!
//! Age is cluster time minus cluster time: ingest stamps each update with the moment it
//! accepted it (`OddsUpdate::ingested_at`), the stamp rides the Kafka record, the Redis
//! pub/sub message and the `odds` frame unchanged, and the canary subtracts it from its own
//! receive time. The supplier's clock is never read for the age; its skew (`ingested_at −
//! updated_at`) is reported apart.
//!
//! Where it runs: the operator's leader starts one per pipeline, pointed at the pipeline's
//! odds-service Service (see the operator's `freshness` module for why), `make demo` runs one
//! beside its status line, and `odds-demo bench` one beside its clients, so every place shows
//! the same measurement made by the same code. Each of them also publishes its figures to
//! the pipeline's Redis ([`publish`]), where odds-service serves them to the odds page, and
//! judges them with the same [`verdict`].

pub mod client;
pub mod publish;
pub mod verdict;
pub mod window;

pub use client::{Canary, CanaryConfig, Endpoints};
pub use window::{Blindness, FrameKind, Key, Recorder, Sight, Summary};
