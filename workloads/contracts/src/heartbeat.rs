//! The processors' heartbeat, on [`crate::names::REDIS_HEARTBEAT_CHANNEL`]: how a reader of
//! the live feed tells a calm market from a pipeline that stopped upstream of it.
//!
//! `odds:updates` carries something only when a price changes, so its silence alone says
//! nothing: the processor may be dead, Kafka or Postgres may be out, or the supplier may have
//! gone quiet. Every processor therefore publishes a [`Heartbeat`] every
//! [`HEARTBEAT_EVERY_MS`] with what it knows. A reader that hears no beat (and no update) for
//! its timeout, or hears a processor say it cannot move prices, tells its clients that live
//! updates stopped, and that they flow again once beats say so.

use crate::json::JsonMessage;
use serde::{Deserialize, Serialize};

/// How often a processor beats.
pub const HEARTBEAT_EVERY_MS: u64 = 1000;

/// One beat of one processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// This processor run (a restarted processor is a new one).
    pub processor: String,
    /// Milliseconds since it started: with the arrival time, when it started.
    pub uptime_ms: u64,
    /// Milliseconds since it last read a record from Kafka (since it started if none yet).
    pub idle_ms: u64,
    /// False while its Postgres writes fail (its batches wait and are retried).
    pub postgres: bool,
    /// False while it cannot reach Kafka.
    pub kafka: bool,
    /// False from a failed cache write until its cache repair from Postgres succeeds.
    pub cache_fresh: bool,
    /// Cache repairs from Postgres it completed since it started (one at startup).
    pub cache_repairs: u64,
    /// The last beat of a processor that is stopping: forget it now, not after a timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

impl JsonMessage for Heartbeat {}

impl Heartbeat {
    /// Why this processor cannot move prices, when its beat says so.
    pub fn stall(&self) -> Option<&'static str> {
        if !self.kafka {
            Some("the processor cannot reach Kafka")
        } else if !self.postgres {
            Some("the processor cannot write to Postgres")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_round_trip_and_say_why_prices_cannot_move() {
        let beat = Heartbeat {
            processor: "p-1".into(),
            uptime_ms: 5000,
            idle_ms: 20,
            postgres: true,
            kafka: true,
            cache_fresh: true,
            cache_repairs: 1,
            leaving: false,
        };
        let json = beat.to_json();
        assert!(!json.contains("leaving"), "{json}");
        assert_eq!(Heartbeat::parse(json.as_bytes()), Some(beat.clone()));
        assert_eq!(beat.stall(), None);
        let stuck = Heartbeat {
            postgres: false,
            ..beat.clone()
        };
        assert_eq!(
            stuck.stall(),
            Some("the processor cannot write to Postgres")
        );
        assert_eq!(Heartbeat::parse(b"{}"), None);
    }
}
