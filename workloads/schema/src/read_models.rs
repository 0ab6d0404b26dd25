//! The read models' SQL, shared by the processor (which owns the write path), odds-service
//! (which reads) and the tests (which seed Postgres exactly as the processor does): each
//! statement once, in one place.
//!
//! Current odds are kept per (event, market); history once per (event, market, version).
//! Versions rise per event across all its markets, so comparing versions within one market
//! is the same order the supplier meant.

use chrono::{DateTime, Utc};
use odds_contracts::{Odds, OddsUpdate};
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::query::Query;
use sqlx::Row;
use std::collections::HashMap;

/// [`APPLY_BATCH`] and [`APPLY_NEW_BATCH`], which differ only in how history rows go in
/// (`$history_rows`: the end of the history `INSERT ... SELECT`).
macro_rules! apply_batch_sql {
    ($history_rows:literal) => {
        concat!(
            r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                         $5::numeric[], $6::numeric[], $7::numeric[], $8::int8[],
                         $9::timestamptz[], $10::text[], $11::int4[]) WITH ORDINALITY
        AS t(event_id, home_team, away_team, market, home_odds, draw_odds, away_odds,
             version, updated_at, source, newest_rank, ord)
), newest AS (
    -- Marked by the caller (`newest_indices`): ties (one version, two contents) go to the
    -- first read, as in history and in Redis; ranked in key order, so row locks are taken
    -- in the same order by every batch.
    SELECT * FROM input WHERE newest_rank IS NOT NULL ORDER BY newest_rank
), history AS (
    INSERT INTO odds_history (event_id, version, market, home_odds, draw_odds, away_odds,
                              updated_at, source)
    SELECT event_id, version, market, home_odds, draw_odds, away_odds, updated_at, source
"#,
            $history_rows,
            r#"    RETURNING 1
), upsert AS (
    INSERT INTO odds_current (event_id, home_team, away_team, market, home_odds, draw_odds,
                              away_odds, version, updated_at, source)
    SELECT event_id, home_team, away_team, market, home_odds, draw_odds, away_odds, version,
           updated_at, source
    FROM newest
    ON CONFLICT (event_id, market) DO UPDATE SET
        home_team = EXCLUDED.home_team, away_team = EXCLUDED.away_team,
        home_odds = EXCLUDED.home_odds,
        draw_odds = EXCLUDED.draw_odds, away_odds = EXCLUDED.away_odds,
        version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
        source = EXCLUDED.source, stored_at = now()
    WHERE odds_current.version < EXCLUDED.version
    RETURNING 1
)
-- The main query sees odds_current as it was before this statement: the batch's newest is
-- current afterwards exactly when nothing newer (or nothing at all) was stored before.
-- An equal stored version counts only with the same content (a replay, which may re-cache
-- it); a different content at that version lost the tie to what was stored first.
SELECT n.event_id, n.market,
       (c.version IS NULL OR c.version < n.version
        OR (c.version = n.version
            AND c.home_odds = n.home_odds AND c.draw_odds = n.draw_odds
            AND c.away_odds = n.away_odds)) AS is_current,
       c.version AS stored_version,
       (SELECT count(*) FROM history) AS history_inserted,
       (SELECT count(*) FROM upsert) AS current_advanced
FROM newest n
    LEFT JOIN odds_current c ON c.event_id = n.event_id AND c.market = n.market
"#
        )
    };
}

/// Applies a batch in one statement: every update into `odds_history` (`ON CONFLICT DO
/// NOTHING`), the newest per (event, market) into `odds_current` only where strictly newer.
/// Ties (two contents at one version) go to the first one read. Returns one row per (event,
/// market) of the batch: `event_id`, `market`, `is_current` (the batch's newest is what is
/// stored now), `stored_version` (the version stored before the statement, NULL for none),
/// and the counts `history_inserted` and `current_advanced` (the same on every row).
pub const APPLY_BATCH: &str = apply_batch_sql!(
    "    FROM input ORDER BY ord
    ON CONFLICT (event_id, market, version) DO NOTHING
"
);

/// [`APPLY_BATCH`] for a batch none of whose versions is in history yet, the common case:
/// history rows go in as a plain `INSERT`. `ON CONFLICT` costs every row a speculative
/// insertion (a probe of the unique index before the insert and a WAL record confirming it),
/// and the history insert is most of the statement's time (EXPLAIN ANALYZE, issue #26,
/// docs/performance.md); here a version already
/// stored, or twice in the batch, fails the whole statement with a unique violation of
/// [`HISTORY_KEY`] and changes nothing, and the caller applies the batch with
/// [`APPLY_BATCH`] instead (see [`is_history_key_violation`]).
pub const APPLY_NEW_BATCH: &str = apply_batch_sql!(
    "    FROM input
"
);

/// The unique constraint of `odds_history`: one row per (event, market, version).
pub const HISTORY_KEY: &str = "odds_history_event_market_version_key";

/// Whether `error` is [`APPLY_NEW_BATCH`] finding a version already in history (or twice in
/// its batch): a unique violation (SQLSTATE 23505) of [`HISTORY_KEY`].
pub fn is_history_key_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(HISTORY_KEY)
        }
        _ => false,
    }
}

/// The columns of `odds_current` as [`current_from_row`] reads them (prices as `float8`).
macro_rules! current_columns {
    () => {
        "event_id, home_team, away_team, market, home_odds::float8 AS home_odds, \
         draw_odds::float8 AS draw_odds, away_odds::float8 AS away_odds, version, \
         updated_at, source"
    };
}

/// The current odds of every market of event `$1`, in market order.
pub const CURRENT_OF_EVENT: &str = concat!(
    "SELECT ",
    current_columns!(),
    " FROM odds_current WHERE event_id = $1 ORDER BY market"
);

/// The current odds of event `$1` in market `$2`.
pub const CURRENT_OF_MARKET: &str = concat!(
    "SELECT ",
    current_columns!(),
    " FROM odds_current WHERE event_id = $1 AND market = $2"
);

/// Up to `$3` current rows after the key (`$1` event, `$2` market) in key order: keyset
/// paging over every (event, market), for the processor's cache repair.
pub const CURRENT_PAGE: &str = concat!(
    "SELECT ",
    current_columns!(),
    " FROM odds_current WHERE (event_id, market) > ($1, $2) \
     ORDER BY event_id, market LIMIT $3"
);

/// Every market of up to `$2` events with ids after `$1` (all events when `$1` is NULL), in
/// (event, market) order: keyset paging by event, so a page never splits an event.
pub const CURRENT_OF_EVENTS_AFTER: &str = concat!(
    "SELECT ",
    current_columns!(),
    " FROM odds_current WHERE event_id IN ( \
         SELECT DISTINCT event_id FROM odds_current \
         WHERE $1::text IS NULL OR event_id > $1 ORDER BY event_id LIMIT $2) \
     ORDER BY event_id, market"
);

/// Decodes a row of the `current_columns` shape.
pub fn current_from_row(row: &PgRow) -> Result<OddsUpdate, sqlx::Error> {
    Ok(OddsUpdate {
        event_id: row.try_get("event_id")?,
        home_team: row.try_get("home_team")?,
        away_team: row.try_get("away_team")?,
        market: row.try_get("market")?,
        odds: Odds {
            home: row.try_get("home_odds")?,
            draw: row.try_get("draw_odds")?,
            away: row.try_get("away_odds")?,
        },
        updated_at: row.try_get::<DateTime<Utc>, _>("updated_at")?,
        source: row.try_get("source")?,
        // The schema's CHECK (version >= 1) makes this conversion total.
        version: u64::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
        ingested_at: None,
    })
}

/// Newest-first history of event `$1`, at most `$2` rows, over the markets in `$3`: one
/// backward scan of the unique index per market, each stopping at the limit, then a sort of
/// at most markets × limit rows, however long the event's history is.
pub const HISTORY_NEWEST_FIRST: &str = "SELECT h.version, h.market, \
    h.home_odds::float8, h.draw_odds::float8, h.away_odds::float8, h.updated_at, h.source \
    FROM unnest($3::text[]) AS m(market) CROSS JOIN LATERAL ( \
        SELECT * FROM odds_history \
        WHERE event_id = $1 AND market = m.market ORDER BY version DESC LIMIT $2) h \
    ORDER BY h.version DESC, h.market LIMIT $2";

/// [`APPLY_BATCH`] with `updates` bound as its arrays.
pub fn apply_batch(updates: &[OddsUpdate]) -> Query<'_, Postgres, PgArguments> {
    bind_batch(APPLY_BATCH, updates)
}

/// [`APPLY_NEW_BATCH`] with `updates` bound as its arrays.
pub fn apply_new_batch(updates: &[OddsUpdate]) -> Query<'_, Postgres, PgArguments> {
    bind_batch(APPLY_NEW_BATCH, updates)
}

/// `statement` (one of the batch statements) with `updates` bound as its arrays.
///
/// Prices go as text in the form Postgres' own `float8` to `numeric` cast gives them
/// ([`numeric_text`]): that cast prints each value with `snprintf` and parses it again, about
/// 0.3 µs per price in the server against 0.1 µs for reading the text, and a batch has three
/// prices per update (issue #26). The newest update per (event, market) is marked here
/// ([`newest_indices`]) instead of sorted out in the statement.
fn bind_batch<'a>(
    statement: &'static str,
    updates: &'a [OddsUpdate],
) -> Query<'a, Postgres, PgArguments> {
    let n = updates.len();
    let mut event_ids = Vec::with_capacity(n);
    let mut home_teams = Vec::with_capacity(n);
    let mut away_teams = Vec::with_capacity(n);
    let mut markets = Vec::with_capacity(n);
    let mut home = Vec::with_capacity(n);
    let mut draw = Vec::with_capacity(n);
    let mut away = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    for u in updates {
        event_ids.push(u.event_id.as_str());
        home_teams.push(u.home_team.as_str());
        away_teams.push(u.away_team.as_str());
        markets.push(u.market.as_str());
        home.push(numeric_text(u.odds.home));
        draw.push(numeric_text(u.odds.draw));
        away.push(numeric_text(u.odds.away));
        // Validation refuses versions beyond i64::MAX; saturate rather than wrap regardless.
        versions.push(i64::try_from(u.version).unwrap_or(i64::MAX));
        updated_at.push(u.updated_at);
        sources.push(u.source.as_str());
    }
    let mut newest_rank: Vec<Option<i32>> = vec![None; n];
    for (rank, index) in newest_indices(updates).into_iter().enumerate() {
        newest_rank[index] = Some(i32::try_from(rank).unwrap_or(i32::MAX));
    }
    sqlx::query(statement)
        .bind(event_ids)
        .bind(home_teams)
        .bind(away_teams)
        .bind(markets)
        .bind(home)
        .bind(draw)
        .bind(away)
        .bind(versions)
        .bind(updated_at)
        .bind(sources)
        .bind(newest_rank)
}

/// The index of the newest update of each (event, market) in `updates`, in key order (bytes,
/// so the same order everywhere). Ties (two contents at one version) go to the first read,
/// as in history and in Redis.
pub fn newest_indices(updates: &[OddsUpdate]) -> Vec<usize> {
    let mut newest: HashMap<(&str, &str), usize> = HashMap::with_capacity(updates.len());
    for (index, update) in updates.iter().enumerate() {
        newest
            .entry((update.event_id.as_str(), update.market.as_str()))
            .and_modify(|held| {
                if update.version > updates[*held].version {
                    *held = index;
                }
            })
            .or_insert(index);
    }
    let mut out: Vec<(&(&str, &str), usize)> =
        newest.iter().map(|(key, index)| (key, *index)).collect();
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.into_iter().map(|(_, index)| index).collect()
}

/// `value` as Postgres' `float8::numeric` cast writes it (`%.15g`: at most 15 significant
/// digits, trailing zeros dropped), for the server to read as `numeric` text: the same value
/// and scale as the cast gave. The shortest text that reads back as `value` is that text
/// whenever it has at most 15 significant digits (every price a supplier writes with a few
/// decimals); longer ones are rounded to 15 in exponent form.
pub fn numeric_text(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let shortest = value.to_string();
    let digits = || shortest.bytes().filter(u8::is_ascii_digit);
    let leading = digits().take_while(|d| *d == b'0').count();
    let trailing = digits().rev().take_while(|d| *d == b'0').count();
    let significant = digits().count().saturating_sub(leading + trailing);
    if significant <= 15 {
        return shortest;
    }
    let rounded = format!("{value:.14e}");
    match rounded.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        None => rounded,
    }
}
