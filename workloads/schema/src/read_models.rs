//! The read models' write path, shared by the processor (which owns it) and the odds-service
//! tests (which seed Postgres exactly as the processor does): one statement, one place.

use odds_contracts::OddsUpdate;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

/// Applies a batch in one statement: every update into `odds_history` (`ON CONFLICT DO
/// NOTHING`), the newest per event into `odds_current` only where strictly newer. Ties (two
/// contents at one version) go to the first one read. Returns one row per event of the batch:
/// `event_id`, `is_current` (the batch's newest is what is stored now), and the counts
/// `history_inserted` and `current_advanced` (the same on every row).
pub const APPLY_BATCH: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                         $5::float8[], $6::float8[], $7::float8[], $8::int8[],
                         $9::timestamptz[], $10::text[]) WITH ORDINALITY
        AS t(event_id, home_team, away_team, market, home_odds, draw_odds, away_odds,
             version, updated_at, source, ord)
), newest AS (
    -- Ties (one version, two contents) go to the first read, as in history and in Redis.
    SELECT DISTINCT ON (event_id) * FROM input ORDER BY event_id, version DESC, ord
), history AS (
    INSERT INTO odds_history (event_id, version, market, home_odds, draw_odds, away_odds,
                              updated_at, source)
    SELECT event_id, version, market, home_odds::numeric, draw_odds::numeric,
           away_odds::numeric, updated_at, source
    FROM input ORDER BY ord
    ON CONFLICT (event_id, version) DO NOTHING
    RETURNING 1
), upsert AS (
    INSERT INTO odds_current (event_id, home_team, away_team, market, home_odds, draw_odds,
                              away_odds, version, updated_at, source)
    SELECT event_id, home_team, away_team, market, home_odds::numeric, draw_odds::numeric,
           away_odds::numeric, version, updated_at, source
    FROM newest
    ON CONFLICT (event_id) DO UPDATE SET
        home_team = EXCLUDED.home_team, away_team = EXCLUDED.away_team,
        market = EXCLUDED.market, home_odds = EXCLUDED.home_odds,
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
SELECT n.event_id,
       (c.version IS NULL OR c.version < n.version
        OR (c.version = n.version AND c.market = n.market
            AND c.home_odds = n.home_odds::numeric AND c.draw_odds = n.draw_odds::numeric
            AND c.away_odds = n.away_odds::numeric)) AS is_current,
       (SELECT count(*) FROM history) AS history_inserted,
       (SELECT count(*) FROM upsert) AS current_advanced
FROM newest n LEFT JOIN odds_current c ON c.event_id = n.event_id
"#;

/// [`APPLY_BATCH`] with `updates` bound as its arrays.
pub fn apply_batch(updates: &[OddsUpdate]) -> Query<'_, Postgres, PgArguments> {
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
        home.push(u.odds.home);
        draw.push(u.odds.draw);
        away.push(u.odds.away);
        // Validation refuses versions beyond i64::MAX; saturate rather than wrap regardless.
        versions.push(i64::try_from(u.version).unwrap_or(i64::MAX));
        updated_at.push(u.updated_at);
        sources.push(u.source.as_str());
    }
    sqlx::query(APPLY_BATCH)
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
}
