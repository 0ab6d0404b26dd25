//! The contracts every stage of the odds pipeline agrees on.
//!
//! Stages are separate processes that only meet through Kafka, Redis and WebSockets, so the
//! shapes and names that cross those boundaries live here, once: the [`OddsUpdate`] event and
//! its validation, the reasons an input is rejected ([`RejectReason`]), topic and Redis names
//! ([`names`]), ports ([`ports`]), the client protocol of `/ws/odds` ([`ws`]), the freshness
//! canary's published figures ([`freshness`]), one way to write and read such JSON messages
//! ([`JsonMessage`]), and where a sampled update's trace context travels ([`traced`]). A
//! workload crate depends on this crate and never on another workload.

mod accept;
pub mod cache_status;
pub mod dead_letter;
pub mod env;
pub mod freshness;
pub mod heartbeat;
mod json;
pub mod names;
pub mod ports;
mod reject;
pub mod traced;
mod update;
pub mod ws;

pub use accept::{accept_update, check_published, AcceptedUpdate, PublishedUpdate};
pub use json::JsonMessage;
pub use reject::{parse_update, RejectReason, MAX_UPDATE_BYTES, STORAGE_REJECTED};
pub use update::{
    stored_price, validate_event_id, Market, Odds, OddsUpdate, UnknownMarket, ValidationError,
    MAX_EVENT_ID_LEN, MAX_ODDS, MAX_SOURCE_LEN, MAX_TEAM_LEN, MAX_UPDATED_AT_YEAR, MAX_VERSION,
    MIN_UPDATED_AT_YEAR, ODDS_SIGNIFICANT_DIGITS,
};
