//! What a processor tells readers about its Redis cache writes, on
//! [`crate::names::REDIS_CACHE_STATUS_CHANNEL`].
//!
//! A processor whose cache writes fail publishes `{"healthy":false,"reason":...}` at least
//! every [`CACHE_STATUS_EVERY_MS`] until a repair from Postgres succeeds, then
//! `{"healthy":true}` once. A reader treats the cache as untrusted (and the live feed as
//! stopped) from the first failure report until a healthy report, or until
//! [`CACHE_STATUS_LEASE_MS`] pass without a new failure report (the processor may have died
//! or been replaced): a report is a lease, so no reader waits for a message that never comes.

use crate::json::JsonMessage;
use serde::{Deserialize, Serialize};

/// How often a processor repeats a failure report while its cache writes keep failing.
pub const CACHE_STATUS_EVERY_MS: u64 = 1000;
/// How long a reader honours one failure report.
pub const CACHE_STATUS_LEASE_MS: u64 = 5000;

/// One report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub healthy: bool,
    /// Why writes fail (the Redis error), for logs and clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl JsonMessage for CacheStatus {}

impl CacheStatus {
    pub fn healthy() -> CacheStatus {
        CacheStatus {
            healthy: true,
            reason: None,
        }
    }

    pub fn failing(reason: impl Into<String>) -> CacheStatus {
        CacheStatus {
            healthy: false,
            reason: Some(reason.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_healthy_has_no_reason() {
        assert_eq!(CacheStatus::healthy().to_json(), r#"{"healthy":true}"#);
        let failing = CacheStatus::failing("OOM");
        assert_eq!(failing.to_json(), r#"{"healthy":false,"reason":"OOM"}"#);
        assert_eq!(
            CacheStatus::parse(failing.to_json().as_bytes()),
            Some(failing)
        );
        assert_eq!(CacheStatus::parse(b"not json"), None);
    }
}
