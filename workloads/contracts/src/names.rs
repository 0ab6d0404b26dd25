//! Names shared across process boundaries: Kafka topics, DLQ headers, Redis keys and channels.
//!
//! A rename here is a wire change: every stage must be deployed with the same version.

/// Topic carrying valid [`crate::OddsUpdate`]s, keyed by `event_id`.
pub const TOPIC_ODDS_UPDATES: &str = "odds_updates";
/// Topic carrying rejected input together with why it was rejected.
pub const TOPIC_ODDS_UPDATES_DLQ: &str = "odds_updates_dlq";

/// Headers every dead-lettered record carries.
pub mod dlq_headers {
    /// Machine-readable reason code, see [`crate::RejectReason::code`].
    pub const REASON: &str = "odds-reject-reason";
    /// Human-readable detail (the parser's or validator's message).
    pub const DETAIL: &str = "odds-reject-detail";
    /// RFC 3339 time of rejection.
    pub const REJECTED_AT: &str = "odds-rejected-at";
    /// Size of the rejected input when the DLQ payload holds only its beginning.
    pub const ORIGINAL_BYTES: &str = "odds-original-bytes";
    /// Hex SHA-256 of the whole rejected input (absent when the stage never held its bytes):
    /// identifies a record whose DLQ payload holds only its beginning.
    pub const ORIGINAL_SHA256: &str = "odds-original-sha256";
    /// Which stage rejected it (`odds-ingest`, `odds-processor`).
    pub const STAGE: &str = "odds-reject-stage";
    /// For records rejected after Kafka: where they were read from.
    pub const SOURCE_TOPIC: &str = "odds-source-topic";
    pub const SOURCE_PARTITION: &str = "odds-source-partition";
    pub const SOURCE_OFFSET: &str = "odds-source-offset";
}

/// Redis key prefix of the current-odds cache: `odds:current:{event_id}:{market}` holds the
/// JSON of the newest [`crate::OddsUpdate`] of that event in that market.
pub const REDIS_CURRENT_PREFIX: &str = "odds:current:";
/// Pub/sub channel on which the processor publishes every update that advanced an event.
pub const REDIS_UPDATES_CHANNEL: &str = "odds:updates";

/// Pub/sub channel on which processors report whether their cache writes succeed (JSON
/// [`crate::cache_status::CacheStatus`]). PUBLISH still works when Redis refuses writes (out
/// of memory under `noeviction`, a read-only replica), so readers learn that the cache and
/// the updates channel have gone quiet for a reason, not because prices stopped moving.
pub const REDIS_CACHE_STATUS_CHANNEL: &str = "odds:cache-status";

/// Pub/sub channel on which every processor beats (JSON [`crate::heartbeat::Heartbeat`]), so
/// readers can tell a quiet market from a pipeline stopped upstream of Redis.
pub const REDIS_HEARTBEAT_CHANNEL: &str = "odds:heartbeat";

/// Key holding the freshness canary's latest JSON [`crate::freshness::FreshnessReport`]
/// (written with a time-to-live, so it disappears when no canary runs).
pub const REDIS_FRESHNESS_KEY: &str = "odds:freshness";

/// The cache key of one event's current odds in one market. The market comes last and is
/// one of a fixed set of names without `:`, so no two (event, market) pairs share a key even
/// when event ids contain `:`.
pub fn redis_current_key(event_id: &str, market: &str) -> String {
    format!("{REDIS_CURRENT_PREFIX}{event_id}:{market}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_key_embeds_event_and_market() {
        assert_eq!(
            redis_current_key("MATCH_001", "HT_1X2"),
            "odds:current:MATCH_001:HT_1X2"
        );
        // An id that ends like a market still gets its own key.
        assert_ne!(
            redis_current_key("E:HT", "1X2"),
            redis_current_key("E", "HT_1X2")
        );
    }
}
