//! The `OddsUpdate` event and the rules that make one valid.
//!
//! Validation is a separate step from decoding so that a well-formed but wrong update can be
//! rejected with the field and the reason, which is what lands in the DLQ and in logs.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted `event_id`, in bytes. Ids end up in Redis keys and URLs, so they stay short.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest accepted team name, in characters.
pub const MAX_TEAM_LEN: usize = 128;
/// Longest accepted `source`, in characters.
pub const MAX_SOURCE_LEN: usize = 64;
/// Highest accepted decimal odds; anything above is a feed error, not a price (exchanges cap at 1000).
pub const MAX_ODDS: f64 = 1000.0;
/// Significant digits a price keeps in storage. Postgres converts `float8` to `numeric` with 15
/// significant digits (`DBL_DIG`), so validation judges a price by that rounded value: a price
/// such as 1.0000000000000002 would be stored as 1 and refused by the `> 1` check.
pub const ODDS_SIGNIFICANT_DIGITS: usize = 15;
/// Highest version storage can hold (Postgres `BIGINT`).
pub const MAX_VERSION: u64 = i64::MAX as u64;
/// Earliest and latest year (in UTC) of an accepted `updated_at`: the years RFC 3339 can
/// write (four digits). The parser takes signed years of up to six digits and Postgres
/// refuses those before 4714 BC, so without this bound such an update passed validation and
/// was dead-lettered only after storage refused it; a year past 9999 would be re-encoded as
/// `+10000-…`, which is not RFC 3339 either.
pub const MIN_UPDATED_AT_YEAR: i32 = 0;
pub const MAX_UPDATED_AT_YEAR: i32 = 9999;

/// Prices at or above this keep a value above 1 at storage precision, so validation rounds
/// (a string format and parse) only the rare price just above 1.0, not every price.
const ROUNDS_TO_ONE_BELOW: f64 = 1.0 + 1e-13;

/// A price as storage keeps it: rounded to [`ODDS_SIGNIFICANT_DIGITS`] significant digits.
pub fn stored_price(value: f64) -> f64 {
    if !value.is_finite() {
        return value;
    }
    format!("{:.*e}", ODDS_SIGNIFICANT_DIGITS - 1, value)
        .parse()
        .unwrap_or(value)
}

/// One price change of one event, as sent by a supplier and carried through the pipeline.
///
/// JSON is snake_case with an RFC 3339 `updated_at`. `version` rises by one with every update of
/// an event; consumers use it to ignore anything not newer than what they hold.
///
/// `ingested_at` is the cluster's clock, not the supplier's: the moment ingest accepted the
/// update (set by ingest, whatever a supplier sends in its place). It travels to the Redis
/// pub/sub message and so to the `odds` frame, so a client's age of a price
/// (now − `ingested_at`) compares two readings of cluster time; `updated_at` − `ingested_at`
/// is the supplier's skew plus its hop, reported apart. Absent (and left out of the JSON) on
/// updates read back from Postgres, which does not store it, and on records of an older
/// ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OddsUpdate {
    pub event_id: String,
    pub home_team: String,
    pub away_team: String,
    pub market: String,
    pub odds: Odds,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub source: String,
    pub version: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "ingested_at_millis"
    )]
    pub ingested_at: Option<DateTime<Utc>>,
}

/// `ingested_at` as RFC 3339 with milliseconds (`2026-12-06T11:00:00.123Z`): enough for an age
/// measured in milliseconds, and shorter on every frame than chrono's nanoseconds.
pub(crate) mod ingested_at_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// The text of an `ingested_at` that [`crate::OddsUpdate::accepted_at`] truncated.
    pub fn text(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(at) => serializer.serialize_str(&text(at)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(deserializer)
    }
}

/// The instant ingest stamps as `ingested_at` for an update accepted at `at`: kept at the
/// millisecond the JSON carries.
pub(crate) fn accepted_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(at, 3)
}

/// Decimal odds of the three outcomes of a 1X2-style market.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Odds {
    pub home: f64,
    pub draw: f64,
    pub away: f64,
}

/// The markets the pipeline knows. All are three-way (home / draw / away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Market {
    /// Full-time result, "1X2".
    MatchResult,
    /// Half-time result, "HT_1X2".
    HalfTimeResult,
}

impl Market {
    pub const ALL: [Market; 2] = [Market::MatchResult, Market::HalfTimeResult];

    /// The wire name used in `OddsUpdate::market`.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::MatchResult => "1X2",
            Market::HalfTimeResult => "HT_1X2",
        }
    }

    pub fn parse(name: &str) -> Option<Market> {
        Market::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// An unknown market name; its message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown market {0:?} (known: {known})", known = Market::names())]
pub struct UnknownMarket(pub String);

impl Market {
    /// The known names, comma-separated (for messages).
    pub fn names() -> String {
        Market::ALL.map(Market::as_str).join(", ")
    }
}

impl std::str::FromStr for Market {
    type Err = UnknownMarket;

    fn from_str(name: &str) -> Result<Market, UnknownMarket> {
        Market::parse(name).ok_or_else(|| UnknownMarket(name.to_owned()))
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decoded update is not acceptable. Each variant names its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("event_id: must not be empty")]
    EmptyEventId,
    #[error("event_id: {len} bytes, at most {MAX_EVENT_ID_LEN} allowed")]
    EventIdTooLong { len: usize },
    #[error("event_id: only printable ASCII without spaces is allowed")]
    EventIdNotPrintable,
    #[error("{field}: team name must not be empty")]
    MissingTeam { field: &'static str },
    #[error("{field}: team name longer than {MAX_TEAM_LEN} characters")]
    TeamTooLong { field: &'static str },
    /// Storage (Postgres `text`) cannot hold NUL, and no control character belongs in a name.
    #[error("{field}: control characters are not allowed")]
    ControlCharacter { field: &'static str },
    #[error("market: unknown market {0:?} (known: 1X2, HT_1X2)")]
    UnknownMarket(String),
    #[error("{field}: odds must be a finite number, got {value}")]
    OddsNotFinite { field: &'static str, value: f64 },
    #[error("{field}: odds must be greater than 1.0 at {ODDS_SIGNIFICANT_DIGITS} significant digits, got {value}")]
    OddsTooLow { field: &'static str, value: f64 },
    #[error("{field}: odds must be at most {MAX_ODDS}, got {value}")]
    OddsTooHigh { field: &'static str, value: f64 },
    #[error(
        "updated_at: year {year} is outside {MIN_UPDATED_AT_YEAR}..={MAX_UPDATED_AT_YEAR} (UTC)"
    )]
    UpdatedAtOutOfRange { year: i32 },
    #[error("version: must be at least 1")]
    ZeroVersion,
    #[error("version: {0} exceeds the largest storable version {MAX_VERSION}")]
    VersionTooLarge(u64),
    #[error("source: longer than {MAX_SOURCE_LEN} characters")]
    SourceTooLong,
}

impl ValidationError {
    /// The JSON path of the offending field, e.g. `odds.home`.
    pub fn field(&self) -> &'static str {
        match self {
            ValidationError::EmptyEventId
            | ValidationError::EventIdTooLong { .. }
            | ValidationError::EventIdNotPrintable => "event_id",
            ValidationError::MissingTeam { field }
            | ValidationError::TeamTooLong { field }
            | ValidationError::ControlCharacter { field }
            | ValidationError::OddsNotFinite { field, .. }
            | ValidationError::OddsTooLow { field, .. }
            | ValidationError::OddsTooHigh { field, .. } => field,
            ValidationError::UnknownMarket(_) => "market",
            ValidationError::UpdatedAtOutOfRange { .. } => "updated_at",
            ValidationError::ZeroVersion | ValidationError::VersionTooLarge(_) => "version",
            ValidationError::SourceTooLong => "source",
        }
    }
}

/// Checks an event id on its own; the odds service uses it for ids in URLs and subscriptions.
pub fn validate_event_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyEventId);
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(ValidationError::EventIdTooLong { len: id.len() });
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::EventIdNotPrintable);
    }
    Ok(())
}

fn validate_team(field: &'static str, name: &str) -> Result<(), ValidationError> {
    if name.trim().is_empty() {
        return Err(ValidationError::MissingTeam { field });
    }
    if name.chars().count() > MAX_TEAM_LEN {
        return Err(ValidationError::TeamTooLong { field });
    }
    reject_control_characters(field, name)
}

fn reject_control_characters(field: &'static str, text: &str) -> Result<(), ValidationError> {
    if text.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter { field });
    }
    Ok(())
}

fn validate_price(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if !value.is_finite() {
        Err(ValidationError::OddsNotFinite { field, value })
    } else if value <= 1.0 || (value < ROUNDS_TO_ONE_BELOW && stored_price(value) <= 1.0) {
        Err(ValidationError::OddsTooLow { field, value })
    } else if value > MAX_ODDS {
        Err(ValidationError::OddsTooHigh { field, value })
    } else {
        Ok(())
    }
}

/// The fields the contract's rules judge, borrowed from whichever value holds them (an
/// [`OddsUpdate`], or a frame decoded without copying its strings at ingest): one set of
/// rules for both.
pub(crate) struct Fields<'a> {
    pub event_id: &'a str,
    pub home_team: &'a str,
    pub away_team: &'a str,
    pub market: &'a str,
    pub odds: Odds,
    pub updated_at: DateTime<Utc>,
    pub source: &'a str,
    pub version: u64,
}

/// The [`Fields`] of any value with the contract's field names (an [`OddsUpdate`], ingest's
/// borrowed decoding): one place that lists them.
macro_rules! fields_of {
    ($value:expr) => {
        $crate::update::Fields {
            event_id: &$value.event_id,
            home_team: &$value.home_team,
            away_team: &$value.away_team,
            market: &$value.market,
            odds: $value.odds,
            updated_at: $value.updated_at,
            source: &$value.source,
            version: $value.version,
        }
    };
}
pub(crate) use fields_of;

impl Fields<'_> {
    /// Checks every rule of the contract; the first broken one is returned.
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        validate_event_id(self.event_id)?;
        validate_team("home_team", self.home_team)?;
        validate_team("away_team", self.away_team)?;
        if Market::parse(self.market).is_none() {
            return Err(ValidationError::UnknownMarket(self.market.to_owned()));
        }
        validate_price("odds.home", self.odds.home)?;
        validate_price("odds.draw", self.odds.draw)?;
        validate_price("odds.away", self.odds.away)?;
        let year = self.updated_at.year();
        if !(MIN_UPDATED_AT_YEAR..=MAX_UPDATED_AT_YEAR).contains(&year) {
            return Err(ValidationError::UpdatedAtOutOfRange { year });
        }
        if self.version == 0 {
            return Err(ValidationError::ZeroVersion);
        }
        if self.version > MAX_VERSION {
            return Err(ValidationError::VersionTooLarge(self.version));
        }
        if self.source.chars().count() > MAX_SOURCE_LEN {
            return Err(ValidationError::SourceTooLong);
        }
        reject_control_characters("source", self.source)
    }
}

impl OddsUpdate {
    /// Checks every rule of the contract; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        fields_of!(self).validate()
    }

    /// The same update stamped as accepted by ingest at `at` (replacing any `ingested_at` a
    /// supplier sent: only ingest's clock counts).
    /// Kept at the millisecond the JSON carries, so the update equals its decoded copy.
    pub fn accepted_at(mut self, at: DateTime<Utc>) -> OddsUpdate {
        self.ingested_at = Some(accepted_instant(at));
        self
    }

    /// JSON encoding. Serializing this type cannot fail: it holds only strings, numbers
    /// (serde_json writes non-finite floats as `null`) and a timestamp.
    #[allow(clippy::expect_used)]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("OddsUpdate serialization is infallible")
    }

    /// [`OddsUpdate::to_json`] appended to `out` (a buffer reused from update to update).
    #[allow(clippy::expect_used)]
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("OddsUpdate serialization is infallible")
    }
}
