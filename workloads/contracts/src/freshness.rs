//! The freshness canary's figures as the odds page reads them, under
//! [`crate::names::REDIS_FRESHNESS_KEY`].
//!
//! The canary that measures a pipeline runs outside odds-service (in the operator's leader,
//! beside `make demo`'s status line, beside the bench's clients), yet the page odds-service
//! serves must show the same figures. The pipeline's Redis is the one place both already
//! reach, so whoever runs a canary writes its latest [`FreshnessReport`] there every
//! [`FRESHNESS_PUBLISH_EVERY_MS`], with a time-to-live of [`FRESHNESS_TTL_MS`]: a canary that
//! died leaves no key after a few missed writes, so the page says "no canary figures" instead
//! of showing old figures as current. odds-service serves the key as `GET /v1/freshness`.

use crate::json::JsonMessage;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How often a canary's runner writes its report.
pub const FRESHNESS_PUBLISH_EVERY_MS: u64 = 2000;
/// How long a report lives in Redis: three missed writes and it is gone.
pub const FRESHNESS_TTL_MS: u64 = 3 * FRESHNESS_PUBLISH_EVERY_MS;

/// A canary's summary of its window, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessReport {
    /// Who runs the canary (`odds-demo`, `odds-operator`, `odds-demo bench`).
    pub publisher: String,
    /// When the summary was taken.
    pub measured_at: DateTime<Utc>,
    /// The window the figures cover, in seconds.
    pub window_seconds: u64,
    /// Aged `odds` frames in the window.
    pub frames: u64,
    /// Median and 99th percentile age (receive time minus ingest's accept time), in
    /// milliseconds; absent without frames.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// The longest freeze in the window (one in progress included), in milliseconds.
    pub longest_freeze_ms: u64,
    /// Where it was (`event market`); absent when it is the canary's blindness in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_freeze_at: Option<String>,
    /// Why the canary cannot see prices move now; absent while it watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<String>,
}

impl JsonMessage for FreshnessReport {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_in_camel_case_and_leave_out_what_is_absent() {
        let report = FreshnessReport {
            publisher: "odds-demo".into(),
            measured_at: DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            window_seconds: 60,
            frames: 1200,
            p50_ms: Some(4),
            p99_ms: Some(12),
            longest_freeze_ms: 210,
            longest_freeze_at: Some("MATCH_001 1X2".into()),
            blind: None,
        };
        let json = report.to_json();
        assert!(json.contains(r#""p99Ms":12"#), "{json}");
        assert!(json.contains(r#""longestFreezeMs":210"#), "{json}");
        assert!(
            json.contains(r#""measuredAt":"2026-12-06T12:00:00Z""#),
            "{json}"
        );
        assert!(!json.contains("blind"), "{json}");
        assert_eq!(FreshnessReport::parse(json.as_bytes()), Some(report));
        assert_eq!(FreshnessReport::parse(b"{}"), None);
    }
}
