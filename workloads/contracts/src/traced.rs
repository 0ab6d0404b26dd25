//! Where a sampled update's trace context travels (W3C `traceparent`, see
//! `odds_runtime::otel`), without changing the update itself.
//!
//! - **Kafka**: a record header named [`TRACEPARENT_HEADER`], set by ingest only on sampled
//!   updates. The record's value is the update's JSON, as always.
//! - **Redis pub/sub** (`odds:updates`): the processor appends [`PUBSUB_TRACE_SEPARATOR`] and
//!   the `traceparent` to the published JSON of a sampled update, and odds-service splits it
//!   off ([`split_pubsub`]) before it decodes the update and builds the WebSocket frame, so
//!   clients receive exactly what they did without tracing. The cached value
//!   (`odds:current:…`) never carries it. Compact JSON never holds a raw newline (one inside
//!   a string is escaped), so the separator cannot occur in the update. A reader that does
//!   not know the suffix sees invalid JSON: deploy the processor and odds-service together,
//!   as for any rename in [`crate::names`].

/// Kafka record header holding the W3C `traceparent` of the record's producing span.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Separates an update's JSON from its `traceparent` in a pub/sub message.
pub const PUBSUB_TRACE_SEPARATOR: u8 = b'\n';

/// A pub/sub message's update JSON and, when it carries one, its `traceparent`.
pub fn split_pubsub(message: &[u8]) -> (&[u8], Option<&[u8]>) {
    match message.iter().rposition(|b| *b == PUBSUB_TRACE_SEPARATOR) {
        Some(at) => (&message[..at], Some(&message[at + 1..])),
        None => (message, None),
    }
}

/// What the processor appends to a sampled update's published JSON.
pub fn pubsub_suffix(traceparent: &str) -> String {
    let mut suffix = String::with_capacity(traceparent.len() + 1);
    suffix.push(char::from(PUBSUB_TRACE_SEPARATOR));
    suffix.push_str(traceparent);
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OddsUpdate;

    #[test]
    fn the_update_comes_back_unchanged_with_or_without_a_trace() {
        let update: OddsUpdate = serde_json::from_value(serde_json::json!({
            "event_id": "MATCH_001", "home_team": "Line\nbreak", "away_team": "Away",
            "market": "1X2", "odds": {"home": 2.1, "draw": 3.3, "away": 3.6},
            "updated_at": "2026-12-06T12:00:00Z", "source": "test", "version": 7,
        }))
        .unwrap();
        assert!(update.home_team.contains('\n'));
        let json = update.to_json();
        assert!(!json.contains('\n'), "compact JSON escapes newlines");
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let message = format!("{json}{}", pubsub_suffix(traceparent));
        assert_eq!(
            split_pubsub(message.as_bytes()),
            (json.as_bytes(), Some(traceparent.as_bytes()))
        );
        assert_eq!(split_pubsub(json.as_bytes()), (json.as_bytes(), None));
    }
}
