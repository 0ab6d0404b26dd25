//! Property and example tests of the event contract and the WebSocket protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};
use odds_contracts::ws::{ClientMessage, ErrorCode, ServerMessage};
use odds_contracts::{
    parse_update, Market, Odds, OddsUpdate, RejectReason, ValidationError, MAX_EVENT_ID_LEN,
    MAX_UPDATED_AT_YEAR, MAX_UPDATE_BYTES, MIN_UPDATED_AT_YEAR,
};
use proptest::prelude::*;

fn price() -> impl Strategy<Value = f64> {
    // Two-decimal prices as suppliers send them, strictly above 1.0.
    (101u32..=100_000).prop_map(|cents| f64::from(cents) / 100.0)
}

/// Seconds of the first and the last `updated_at` validation accepts.
fn accepted_seconds() -> (i64, i64) {
    let first = Utc.with_ymd_and_hms(MIN_UPDATED_AT_YEAR, 1, 1, 0, 0, 0);
    let last = Utc.with_ymd_and_hms(MAX_UPDATED_AT_YEAR, 12, 31, 23, 59, 59);
    (first.unwrap().timestamp(), last.unwrap().timestamp())
}

/// Every instant the parser can read (chrono's whole range), in seconds.
fn parseable_seconds() -> (i64, i64) {
    (
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    )
}

/// Times of the accepted range, its edges included.
fn accepted_time() -> impl Strategy<Value = DateTime<Utc>> {
    let (first, last) = accepted_seconds();
    let seconds = prop_oneof![
        first..=last,
        prop::sample::select(vec![first, last, 0, first + 1, last - 1]),
    ];
    (seconds, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        Utc.timestamp_opt(secs, nanos)
            .single()
            .expect("in chrono's range")
    })
}

/// Times the parser reads but validation must refuse: either side of the accepted range, up
/// to the ends of what the parser reads.
fn refused_time() -> impl Strategy<Value = DateTime<Utc>> {
    let (first, last) = accepted_seconds();
    let (min, max) = parseable_seconds();
    prop_oneof![
        min..first,
        (last + 1)..=max,
        Just(first - 1),
        Just(last + 1)
    ]
    .prop_map(|secs| {
        Utc.timestamp_opt(secs, 0)
            .single()
            .expect("in chrono's range")
    })
}

fn valid_update() -> impl Strategy<Value = OddsUpdate> {
    (
        "[A-Za-z0-9_:.-]{1,64}",
        "[A-Za-z][A-Za-z .']{0,40}",
        "[A-Za-z][A-Za-z .']{0,40}",
        prop::sample::select(Market::ALL.to_vec()),
        (price(), price(), price()),
        accepted_time(),
        "[a-z-]{0,20}",
        1u64..=odds_contracts::MAX_VERSION,
    )
        .prop_map(
            |(event_id, home, away, market, (h, d, a), updated_at, source, version)| OddsUpdate {
                event_id,
                home_team: home,
                away_team: away,
                market: market.as_str().to_owned(),
                odds: Odds {
                    home: h,
                    draw: d,
                    away: a,
                },
                updated_at,
                source,
                version,
                ingested_at: None,
            },
        )
}

/// Ways to break exactly one rule of a valid update, with the field the error must name.
#[derive(Debug, Clone)]
enum Mutation {
    EmptyId,
    LongId(usize),
    SpaceInId,
    ControlInId,
    EmptyHome,
    BlankAway,
    UnknownMarket(String),
    LowOdds(u8, f64),
    NonFinite(u8, f64),
    HighOdds(u8, f64),
    /// A price above 1.0 that storage's 15 significant digits round to 1.0.
    RoundsToOne(u8, u32),
    /// A time the parser reads that storage (or RFC 3339) cannot hold.
    TimeOutOfRange(DateTime<Utc>),
    ZeroVersion,
    HugeVersion(u64),
    /// A control character (NUL included, which Postgres text cannot hold) in a team or source.
    ControlInText(u8, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::EmptyId),
        (MAX_EVENT_ID_LEN + 1..500).prop_map(Mutation::LongId),
        Just(Mutation::SpaceInId),
        Just(Mutation::ControlInId),
        Just(Mutation::EmptyHome),
        Just(Mutation::BlankAway),
        "[a-z_]{0,10}".prop_map(Mutation::UnknownMarket),
        (0u8..3, -1000.0f64..=1.0).prop_map(|(i, v)| Mutation::LowOdds(i, v)),
        (
            0u8..3,
            prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
        )
            .prop_map(|(i, v)| Mutation::NonFinite(i, v)),
        (0u8..3, 1000.001f64..1e12).prop_map(|(i, v)| Mutation::HighOdds(i, v)),
        (0u8..3, 1u32..=4).prop_map(|(i, ulps)| Mutation::RoundsToOne(i, ulps)),
        refused_time().prop_map(Mutation::TimeOutOfRange),
        Just(Mutation::ZeroVersion),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Mutation::HugeVersion),
        (
            0u8..3,
            prop::sample::select(vec!['\0', '\u{1}', '\n', '\u{7f}', '\u{85}'])
        )
            .prop_map(|(i, c)| Mutation::ControlInText(i, c)),
    ]
}

fn set_price(update: &mut OddsUpdate, which: u8, value: f64) -> &'static str {
    match which {
        0 => {
            update.odds.home = value;
            "odds.home"
        }
        1 => {
            update.odds.draw = value;
            "odds.draw"
        }
        _ => {
            update.odds.away = value;
            "odds.away"
        }
    }
}

/// Applies the mutation and returns the field the validator must blame.
fn apply(update: &mut OddsUpdate, mutation: &Mutation) -> &'static str {
    match mutation {
        Mutation::EmptyId => {
            update.event_id.clear();
            "event_id"
        }
        Mutation::LongId(len) => {
            update.event_id = "x".repeat(*len);
            "event_id"
        }
        Mutation::SpaceInId => {
            update.event_id.push(' ');
            "event_id"
        }
        Mutation::ControlInId => {
            update.event_id.insert(0, '\u{7}');
            "event_id"
        }
        Mutation::EmptyHome => {
            update.home_team.clear();
            "home_team"
        }
        Mutation::BlankAway => {
            update.away_team = "   ".into();
            "away_team"
        }
        Mutation::UnknownMarket(name) => {
            update.market = format!("X{name}");
            "market"
        }
        Mutation::LowOdds(i, v) | Mutation::NonFinite(i, v) | Mutation::HighOdds(i, v) => {
            set_price(update, *i, *v)
        }
        Mutation::RoundsToOne(i, ulps) => {
            let value = f64::from_bits(1.0f64.to_bits() + u64::from(*ulps));
            set_price(update, *i, value)
        }
        Mutation::TimeOutOfRange(time) => {
            update.updated_at = *time;
            "updated_at"
        }
        Mutation::ZeroVersion => {
            update.version = 0;
            "version"
        }
        Mutation::HugeVersion(version) => {
            update.version = *version;
            "version"
        }
        Mutation::ControlInText(which, c) => match which {
            0 => {
                update.home_team.push(*c);
                "home_team"
            }
            1 => {
                update.away_team.insert(1, *c);
                "away_team"
            }
            _ => {
                update.source.push(*c);
                "source"
            }
        },
    }
}

proptest! {
    #[test]
    fn valid_updates_round_trip_through_json(update in valid_update()) {
        prop_assert_eq!(update.validate(), Ok(()));
        let json = update.to_json();
        let decoded = parse_update(json.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, update);
    }

    #[test]
    fn every_mutation_is_rejected_naming_its_field(update in valid_update(), m in mutation()) {
        let mut bad = update;
        let field = apply(&mut bad, &m);
        let err = bad.validate().expect_err("mutated update must be rejected");
        prop_assert_eq!(err.field(), field, "{:?} gave {}", m, err);
        // Finite values survive JSON, so the whole parse path rejects them too.
        if !matches!(m, Mutation::NonFinite(..)) {
            let reason = parse_update(bad.to_json().as_bytes()).expect_err("rejected after JSON");
            prop_assert_eq!(reason.code(), "invalid_update");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_update(&bytes);
    }
}

#[test]
fn update_json_is_snake_case_with_rfc3339_time() {
    let json = r#"{"event_id":"MATCH_002","home_team":"Liverpool","away_team":"Everton",
        "market":"1X2","odds":{"home":1.85,"draw":3.6,"away":4.2},
        "updated_at":"2026-11-28T10:00:00.123Z","source":"sim","version":7}"#;
    let update = parse_update(json.as_bytes()).expect("valid");
    assert_eq!(update.version, 7);
    assert_eq!(update.odds.draw, 3.6);
    let encoded = update.to_json();
    assert!(
        encoded.contains(r#""updated_at":"2026-11-28T10:00:00.123Z""#),
        "{encoded}"
    );
}

#[test]
fn reject_reasons_have_stable_codes() {
    assert_eq!(parse_update(b"{nope").unwrap_err().code(), "invalid_json");
    assert_eq!(
        parse_update(br#"{"event_id": NaN}"#).unwrap_err().code(),
        "invalid_json"
    );
    let big = vec![b' '; MAX_UPDATE_BYTES + 1];
    assert_eq!(
        parse_update(&big).unwrap_err(),
        RejectReason::Oversize {
            len: MAX_UPDATE_BYTES + 1,
            max: MAX_UPDATE_BYTES
        }
    );
    let missing_team = r#"{"event_id":"E","away_team":"B","market":"1X2",
        "odds":{"home":2.0,"draw":3.0,"away":4.0},"updated_at":"2026-01-01T00:00:00Z","version":1}"#;
    assert_eq!(
        parse_update(missing_team.as_bytes()).unwrap_err().code(),
        "invalid_json"
    );
    let half_odds = r#"{"event_id":"E","home_team":"A","away_team":"B","market":"1X2",
        "odds":{"home":0.5,"draw":3.0,"away":4.0},"updated_at":"2026-01-01T00:00:00Z","version":1}"#;
    assert_eq!(
        parse_update(half_odds.as_bytes()).unwrap_err(),
        RejectReason::Invalid(ValidationError::OddsTooLow {
            field: "odds.home",
            value: 0.5
        })
    );
}

#[test]
fn client_messages_accept_the_seed_format() {
    assert_eq!(
        ClientMessage::parse(r#"{"type":"subscribe","eventId":"MATCH_002"}"#),
        Ok(ClientMessage::Subscribe {
            event_id: "MATCH_002".into(),
            conflate_ms: None
        })
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"unsubscribe","eventId":"*"}"#),
        Ok(ClientMessage::Unsubscribe {
            event_id: "*".into()
        })
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"ping"}"#),
        Ok(ClientMessage::Ping)
    );
}

#[test]
fn client_message_errors_carry_codes() {
    let code = |text: &str| ClientMessage::parse(text).unwrap_err().code;
    assert_eq!(code("not json"), ErrorCode::BadJson);
    assert_eq!(code("[1,2]"), ErrorCode::BadJson);
    assert_eq!(code(r#"{"eventId":"A"}"#), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::InvalidMessage);
}

#[test]
fn prebuilt_frames_match_serde_encoding() {
    let update: OddsUpdate = serde_json::from_str(
        r#"{"event_id":"M","home_team":"A","away_team":"B","market":"1X2",
        "odds":{"home":2.0,"draw":3.0,"away":4.0},"updated_at":"2026-01-01T00:00:00Z","version":3}"#,
    )
    .expect("valid json");
    let shared = ServerMessage::odds_frame(&update.to_json());
    let decoded: ServerMessage = serde_json::from_str(&shared).expect("frame is JSON");
    assert_eq!(
        decoded,
        ServerMessage::Odds {
            data: update.clone()
        }
    );
    let snap: ServerMessage =
        serde_json::from_str(&ServerMessage::snapshot_frame(&update.to_json())).expect("json");
    assert_eq!(snap, ServerMessage::Snapshot { data: update });
    let err = ServerMessage::error(ErrorCode::TooManySubscriptions, "limit 100", None).to_json();
    assert_eq!(
        err,
        r#"{"type":"error","code":"too_many_subscriptions","message":"limit 100"}"#
    );
}

#[test]
fn ingested_at_is_optional_millisecond_rfc3339_and_left_out_when_absent() {
    let old = r#"{"event_id":"M","home_team":"A","away_team":"B","market":"1X2",
        "odds":{"home":2.0,"draw":3.0,"away":4.0},"updated_at":"2026-01-01T00:00:00Z","version":3}"#;
    let update: OddsUpdate = serde_json::from_str(old).expect("an update without the stamp");
    assert_eq!(update.ingested_at, None);
    assert!(
        !update.to_json().contains("ingested_at"),
        "{}",
        update.to_json()
    );

    let at = Utc.with_ymd_and_hms(2026, 12, 6, 11, 0, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    let stamped = update.accepted_at(at);
    let json = stamped.to_json();
    assert!(
        json.contains(r#""ingested_at":"2026-12-06T11:00:00.123Z""#),
        "{json}"
    );
    let decoded = parse_update(json.as_bytes()).expect("valid");
    assert_eq!(decoded, stamped, "the stamp survives a round trip exactly");
    // A later stamp replaces an earlier one: ingest's accept time is the only truth.
    let restamped = decoded.accepted_at(at + chrono::Duration::seconds(1));
    assert_eq!(
        restamped.ingested_at,
        Some(
            Utc.with_ymd_and_hms(2026, 12, 6, 11, 0, 1).unwrap()
                + chrono::Duration::milliseconds(123)
        )
    );
    assert!(matches!(
        parse_update(br#"{"event_id":"M","home_team":"A","away_team":"B","market":"1X2","odds":{"home":2.0,"draw":3.0,"away":4.0},"updated_at":"2026-01-01T00:00:00Z","version":3,"ingested_at":"yesterday"}"#),
        Err(RejectReason::InvalidJson(_))
    ));
}
