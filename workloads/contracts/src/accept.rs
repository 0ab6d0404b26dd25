//! Ingest's accept step: a supplier frame checked against the contract and turned into the
//! record that goes on the topic, without copying its strings or re-encoding it.
//!
//! Decoding into an [`OddsUpdate`] (five owned strings) and encoding it again was most of
//! ingest's own CPU per update. A frame that carries exactly the contract's fields is already
//! in the contract's shape, so its record is the frame's own bytes with `ingested_at` added
//! before the closing brace, and checking it needs only borrowed strings. A frame with any
//! other field, or with an `ingested_at` of its own (only ingest's clock counts), is decoded
//! and re-encoded as before, so what goes on the topic is the contract's shape whatever a
//! supplier sends. The same bytes are accepted or rejected, with the same reason, as by
//! [`parse_update`], which the processor uses: the borrowed decoding accepts a subset of what
//! it accepts, and the rules are the same (`update::Fields`).

use crate::reject::{parse_update, RejectReason, MAX_UPDATE_BYTES};
use crate::update::{accepted_instant, fields_of, ingested_at_millis, Odds};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::borrow::Cow;
use std::cell::RefCell;

/// What ingest needs of an accepted update once its record is written: its key, what its
/// version is checked against, and the supplier's clock for the first hop.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedUpdate<'a> {
    pub event_id: Cow<'a, str>,
    pub market: Cow<'a, str>,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// The contract's fields and nothing else, strings borrowed from the frame where they hold no
/// escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFields<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    home_team: Cow<'a, str>,
    #[serde(borrow)]
    away_team: Cow<'a, str>,
    #[serde(borrow)]
    market: Cow<'a, str>,
    odds: Odds,
    updated_at: DateTime<Utc>,
    #[serde(default, borrow)]
    source: Cow<'a, str>,
    version: u64,
    /// Refused from a supplier (ingest stamps its own), carried by what the processor publishes.
    #[serde(default, with = "ingested_at_millis")]
    ingested_at: Option<DateTime<Utc>>,
}

/// Checks `frame` as [`parse_update`] does and, when it is valid, writes into `record`
/// (cleared first) the update stamped as accepted by ingest at `at`
/// ([`crate::OddsUpdate::accepted_at`]): the JSON that goes on the topic.
pub fn accept_update<'a>(
    frame: &'a str,
    at: DateTime<Utc>,
    record: &mut Vec<u8>,
) -> Result<AcceptedUpdate<'a>, RejectReason> {
    record.clear();
    let bytes = frame.as_bytes();
    if bytes.len() <= MAX_UPDATE_BYTES {
        // From `str`, not bytes: the frame is known UTF-8 (a WebSocket text frame), and
        // decoding bytes checks every key and string for UTF-8 again.
        if let Ok(fields) = serde_json::from_str::<ContractFields<'a>>(frame) {
            if let (Some(closing), None) = (closing_brace(bytes), fields.ingested_at) {
                fields_of!(fields).validate()?;
                record.extend_from_slice(&bytes[..closing]);
                record.extend_from_slice(b",\"ingested_at\":\"");
                push_ingested_at(at, record);
                record.extend_from_slice(b"\"}");
                return Ok(AcceptedUpdate {
                    event_id: fields.event_id,
                    market: fields.market,
                    version: fields.version,
                    updated_at: fields.updated_at,
                });
            }
        }
    }
    // Other fields, an `ingested_at` of the supplier's, or not an update at all: the full
    // decoding decides, with its reason.
    let update = parse_update(bytes)?.accepted_at(at);
    update.write_json(record);
    Ok(AcceptedUpdate {
        event_id: Cow::Owned(update.event_id),
        market: Cow::Owned(update.market),
        version: update.version,
        updated_at: update.updated_at,
    })
}

thread_local! {
    /// The last millisecond stamped and its text: at tens of thousands of updates a second
    /// most frames of a millisecond share it, and formatting the time was a visible part of
    /// the accept step.
    static LAST_STAMP: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// Appends `at`'s `ingested_at` text ([`ingested_at_millis::text`] of the accepted instant).
fn push_ingested_at(at: DateTime<Utc>, record: &mut Vec<u8>) {
    let at = accepted_instant(at);
    let millis = at.timestamp_millis();
    LAST_STAMP.with_borrow_mut(|(last, text)| {
        if *last != millis {
            *text = ingested_at_millis::text(&at);
            *last = millis;
        }
        record.extend_from_slice(text.as_bytes());
    });
}

/// An update read from Redis' pub/sub channel and checked as [`parse_update`] checks it: what
/// the odds service routes and orders it by, and the JSON its clients get.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedUpdate<'a> {
    pub event_id: Cow<'a, str>,
    pub market: Cow<'a, str>,
    pub version: u64,
    /// The update's JSON: the payload's own text when it holds only the contract's fields
    /// (what the processor publishes, [`crate::OddsUpdate::to_json`]), else the payload decoded
    /// and encoded again, so clients always get the contract's fields.
    pub json: Cow<'a, str>,
}

/// Checks a pub/sub payload (its trace context already split off) as [`parse_update`] does,
/// without copying its strings or encoding it again when it holds only the contract's fields.
///
/// Decoding and re-encoding each update was most of the odds service's own work per update.
/// The payload's text is used as it is only where [`parse_update`] reads it as the same update
/// as the re-encoded text: exactly the contract's fields (no other, none twice), and an
/// `ingested_at` with no digits below the millisecond (the encoder writes milliseconds). For
/// what the processor publishes the text is byte for byte the re-encoded one.
pub fn check_published(payload: &[u8]) -> Result<PublishedUpdate<'_>, RejectReason> {
    // UTF-8 checked once, here (and only for a payload short enough to take this path):
    // decoding from bytes would check every key and string again.
    let text = if payload.len() <= MAX_UPDATE_BYTES {
        std::str::from_utf8(payload).ok()
    } else {
        None
    };
    if let Some(text) = text {
        if let Ok(fields) = serde_json::from_str::<ContractFields<'_>>(text) {
            let in_millis = fields
                .ingested_at
                .is_none_or(|at| accepted_instant(at) == at);
            if let (Some(closing), true) = (closing_brace(payload), in_millis) {
                fields_of!(fields).validate()?;
                return Ok(PublishedUpdate {
                    event_id: fields.event_id,
                    market: fields.market,
                    version: fields.version,
                    json: Cow::Borrowed(&text[..=closing]),
                });
            }
        }
    }
    let update = parse_update(payload)?;
    Ok(PublishedUpdate {
        json: Cow::Owned(update.to_json()),
        event_id: Cow::Owned(update.event_id),
        market: Cow::Owned(update.market),
        version: update.version,
    })
}

/// Where the object's closing brace is: the last byte that is not JSON whitespace.
fn closing_brace(frame: &[u8]) -> Option<usize> {
    let last = frame
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    (frame[last] == b'}').then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OddsUpdate;

    const FRAME: &str = r#"{"event_id":"MATCH_002","home_team":"Liverpool","away_team":"Everton","market":"1X2","odds":{"home":1.85,"draw":3.6,"away":4.2},"updated_at":"2026-11-28T10:00:00.123Z","source":"supplier-simulator","version":7}"#;

    fn at() -> DateTime<Utc> {
        "2026-12-06T11:00:00.123456789Z".parse().unwrap()
    }

    /// What the record must decode to: the frame as `parse_update` reads it, accepted at `at`.
    fn expected(frame: &str) -> OddsUpdate {
        parse_update(frame.as_bytes()).unwrap().accepted_at(at())
    }

    fn accept(frame: &str) -> (Result<AcceptedUpdate<'_>, RejectReason>, Vec<u8>) {
        let mut record = b"left over from the last frame".to_vec();
        let accepted = accept_update(frame, at(), &mut record);
        (accepted, record)
    }

    #[test]
    fn a_contract_frame_is_forwarded_as_it_is_with_ingested_at_added() {
        let (accepted, record) = accept(FRAME);
        let accepted = accepted.unwrap();
        let text = std::str::from_utf8(&record).unwrap();
        assert_eq!(
            text,
            format!(
                "{},\"ingested_at\":\"2026-12-06T11:00:00.123Z\"}}",
                &FRAME[..FRAME.len() - 1]
            )
        );
        assert!(matches!(accepted.event_id, Cow::Borrowed("MATCH_002")));
        assert_eq!(accepted.market, "1X2");
        assert_eq!(accepted.version, 7);
        assert_eq!(accepted.updated_at, expected(FRAME).updated_at);
        let decoded: OddsUpdate = serde_json::from_slice(&record).unwrap();
        assert_eq!(decoded, expected(FRAME));
    }

    #[test]
    fn every_accepted_frame_becomes_the_contracts_fields_stamped_with_ingest_time() {
        let extra = FRAME.replace("\"version\":7", "\"version\":7,\"extra\":[1,{\"a\":2}]");
        let stamped = FRAME.replace(
            "\"version\":7",
            "\"version\":7,\"ingested_at\":\"2030-01-01T00:00:00Z\"",
        );
        let escaped = FRAME.replace("Everton", "Ever\\u0074on \\\"FC\\\"");
        let spaced = format!("  {}  \n", FRAME.replace(",", " , "));
        for frame in [&extra, &stamped, &escaped, &spaced] {
            let (accepted, record) = accept(frame);
            let accepted = accepted.unwrap();
            let decoded: OddsUpdate = serde_json::from_slice(&record).unwrap();
            assert_eq!(decoded, expected(frame), "{frame}");
            assert_eq!(accepted.event_id, "MATCH_002");
            let fields: serde_json::Value = serde_json::from_slice(&record).unwrap();
            assert!(fields.get("extra").is_none(), "{frame}");
            assert_eq!(fields["ingested_at"], "2026-12-06T11:00:00.123Z", "{frame}");
        }
    }

    /// What the odds service sent before [`check_published`]: the payload decoded and
    /// encoded again.
    fn reencoded(payload: &str) -> String {
        parse_update(payload.as_bytes()).unwrap().to_json()
    }

    #[test]
    fn what_the_processor_publishes_is_passed_on_byte_for_byte() {
        for ingested_at in [None, Some(at())] {
            let mut update = parse_update(FRAME.as_bytes()).unwrap();
            if let Some(at) = ingested_at {
                update = update.accepted_at(at);
            }
            let payload = update.to_json();
            let checked = check_published(payload.as_bytes()).unwrap();
            assert!(matches!(checked.json, Cow::Borrowed(_)));
            assert_eq!(checked.json, reencoded(&payload));
            assert!(matches!(checked.event_id, Cow::Borrowed("MATCH_002")));
            assert_eq!(checked.market, "1X2");
            assert_eq!(checked.version, 7);
        }
    }

    #[test]
    fn any_other_payload_gives_clients_the_same_update_as_before() {
        let stamped = FRAME.replace(
            "\"version\":7",
            "\"version\":7,\"ingested_at\":\"2026-12-06T11:00:00.123Z\"",
        );
        let fine = stamped.replace(".123Z", ".123456Z");
        let extra = FRAME.replace("\"version\":7", "\"version\":7,\"extra\":1");
        let escaped = FRAME.replace("Everton", "Ever\\u0074on \\\"FC\\\"");
        let spaced = format!("  {}  \n", stamped.replace(",", " , "));
        let unsourced = FRAME.replace(",\"source\":\"supplier-simulator\"", "");
        for payload in [&stamped, &fine, &extra, &escaped, &spaced, &unsourced] {
            let checked = check_published(payload.as_bytes()).unwrap();
            let before = reencoded(payload);
            assert_eq!(
                parse_update(checked.json.as_bytes()).unwrap(),
                parse_update(before.as_bytes()).unwrap(),
                "{payload}"
            );
            let fields: serde_json::Value = serde_json::from_str(&checked.json).unwrap();
            assert!(fields.get("extra").is_none(), "{payload}");
            assert_eq!(checked.event_id, "MATCH_002");
            assert_eq!(checked.version, 7);
        }
        assert!(matches!(
            check_published(fine.as_bytes()).unwrap().json,
            Cow::Owned(_)
        ));
    }

    #[test]
    fn each_frame_is_stamped_with_its_own_millisecond() {
        let mut record = Vec::new();
        let base = at();
        for (offset_us, stamp) in [
            (0, "2026-12-06T11:00:00.123Z"),
            (500, "2026-12-06T11:00:00.123Z"),
            (900, "2026-12-06T11:00:00.124Z"),
            (-1_000_000, "2026-12-06T10:59:59.123Z"),
            (900, "2026-12-06T11:00:00.124Z"),
        ] {
            let when = base + chrono::Duration::microseconds(offset_us);
            accept_update(FRAME, when, &mut record).unwrap();
            let fields: serde_json::Value = serde_json::from_slice(&record).unwrap();
            assert_eq!(fields["ingested_at"], stamp, "{when}");
        }
    }

    #[test]
    fn rejections_are_parse_updates_with_the_same_reason() {
        let frames = [
            FRAME.replace("\"version\":7", "\"version\":0"),
            FRAME.replace("1.85", "1.0"),
            FRAME.replace("\"1X2\"", "\"OU_2.5\""),
            FRAME
                .replace("\"version\":7", "\"version\":7,\"extra\":1")
                .replace("4.2", "1e999"),
            FRAME.replace("Everton", "Ever\\u0000ton"),
            FRAME.replace("\"version\":7}", "\"version\":7,\"version\":8}"),
            FRAME[..FRAME.len() - 1].to_owned(),
            "[]".to_owned(),
            " ".repeat(MAX_UPDATE_BYTES + 1),
            format!("{}{}", FRAME, " ".repeat(MAX_UPDATE_BYTES)),
        ];
        for frame in &frames {
            let (accepted, _) = accept(frame);
            let reason = parse_update(frame.as_bytes()).unwrap_err();
            assert_eq!(accepted.unwrap_err(), reason, "{frame}");
            assert_eq!(check_published(frame.as_bytes()).unwrap_err(), reason);
        }
    }
}
