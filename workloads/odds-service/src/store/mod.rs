//! The read side: current odds from the Redis cache first, Postgres when the cache misses or
//! Redis is down, and history and listings from Postgres.
//!
//! The processor writes Postgres first and the cache second, so Postgres is the truth and the
//! cache an accelerator. A miss fills the cache with `SET NX`: if the processor wrote a newer
//! version meanwhile, its value stays (ours is never newer than what Postgres had).
//!
//! The cache is trusted only while the [`Feed`] says so: while pub/sub is down, or from a
//! processor's report that its cache writes fail until a repair is seen, the cache may hold
//! values older than Postgres', so current odds are read from Postgres (503 if it cannot
//! answer), never served stale without saying so.
//!
//! Postgres found unreachable is skipped until a background probe reaches it again
//! ([`postgres`]): reads then go to the cache, or fail, at once instead of each waiting for a
//! connection that will not come.

mod postgres;
mod redis_cache;

use crate::feed::Feed;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use odds_contracts::freshness::FreshnessReport;
use odds_contracts::names::{redis_current_key, REDIS_CURRENT_PREFIX, REDIS_FRESHNESS_KEY};
use odds_contracts::{JsonMessage, Market, Odds, OddsUpdate};
use odds_schema::pool::{DeadlinePool, PoolSettings};
use odds_schema::read_models;
use postgres::Postgres;
use redis_cache::RedisCache;
use serde::Serialize;
use sqlx::postgres::PgRow;
use std::sync::Arc;
use std::time::Duration;

/// Why a read could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("neither Redis nor Postgres can answer: {0}")]
    Unavailable(String),
    #[error("Postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// Where an answer came from (sent as the `x-odds-source` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Database,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Database => "database",
        }
    }
}

/// One row of an event's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub market: String,
    pub odds: Odds,
    pub updated_at: DateTime<Utc>,
    pub source: String,
}

/// Cache-first access to the read models.
pub struct OddsStore {
    redis: RedisCache,
    /// Every read ends within the statement timeout (plus the client margin), so a lock or a
    /// frozen Postgres costs a 503, not a request (and a shutdown) that never ends.
    pg: Postgres,
    metrics: Metrics,
    feed: Arc<Feed>,
}

/// version, market, home, draw, away, updated_at, source
type HistoryRow = (i64, String, f64, f64, f64, DateTime<Utc>, String);

/// Every market's key of one event (the markets are a fixed set, so no SCAN is needed).
fn market_keys(event_id: &str) -> Vec<String> {
    Market::ALL
        .iter()
        .map(|m| redis_current_key(event_id, m.as_str()))
        .collect()
}

impl OddsStore {
    /// Connects lazily: the service starts (and answers 503) while a dependency is down.
    pub fn new(
        redis_url: &str,
        redis_timeout: Duration,
        database_url: &str,
        settings: &PoolSettings,
        metrics: Metrics,
        feed: Arc<Feed>,
    ) -> Result<OddsStore, StoreError> {
        let client = redis::Client::open(redis_url)
            .map_err(|e| StoreError::Config(format!("REDIS_URL: {e}")))?;
        let pool = DeadlinePool::connect_lazy(database_url, settings)
            .map_err(|e| StoreError::Config(format!("DATABASE_URL: {e}")))?;
        Ok(OddsStore {
            redis: RedisCache::new(client, redis_timeout),
            pg: Postgres::new(pool, metrics.clone()),
            metrics,
            feed,
        })
    }

    /// Current odds of every market of one event from Postgres only (empty when unknown),
    /// for when the cache may be stale.
    pub async fn markets_from_database(
        &self,
        event_id: &str,
    ) -> Result<Vec<OddsUpdate>, StoreError> {
        self.database_rows(sqlx::query(read_models::CURRENT_OF_EVENT).bind(event_id))
            .await
    }

    /// Every row of `query`, decoded; any failure is the store's `Unavailable`.
    async fn database_rows(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<OddsUpdate>, StoreError> {
        let rows = self
            .pg
            .run(async |conn| query.fetch_all(conn).await)
            .await
            .map_err(|e| StoreError::Unavailable(format!("Postgres: {e}")))?;
        decode(&rows).map_err(|e| StoreError::Unavailable(format!("Postgres: {e}")))
    }

    /// Current odds of every market of one event, in market order: Postgres (the truth; an
    /// event's markets are only complete there, since the cache evicts keys one by one), else
    /// the cache while the live feed is up. `Ok(None)` when the event is unknown.
    pub async fn markets(
        &self,
        event_id: &str,
    ) -> Result<Option<(Vec<OddsUpdate>, Source)>, StoreError> {
        let db_error = match self.markets_from_database(event_id).await {
            Ok(updates) if updates.is_empty() => return Ok(None),
            Ok(updates) => return Ok(Some((updates, Source::Database))),
            Err(e) => e,
        };
        if let Some(why) = self.feed.cache_distrusted() {
            return Err(StoreError::Unavailable(format!(
                "{db_error}; the cache is not trusted ({why})"
            )));
        }
        self.metrics.store_fallbacks.inc();
        let values: Vec<Option<String>> = self
            .redis
            .run(redis::cmd("MGET").arg(market_keys(event_id)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{db_error}; Redis: {e}")))?;
        let updates: Vec<OddsUpdate> = values
            .into_iter()
            .flatten()
            .filter_map(|json| odds_contracts::parse_update(json.as_bytes()).ok())
            .filter(|u| u.event_id == event_id)
            .collect();
        Ok((!updates.is_empty()).then_some((updates, Source::Cache)))
    }

    /// Current odds of one event in one market from Postgres only.
    async fn current_from_database(
        &self,
        event_id: &str,
        market: &str,
    ) -> Result<Option<OddsUpdate>, sqlx::Error> {
        let query = sqlx::query(read_models::CURRENT_OF_MARKET)
            .bind(event_id)
            .bind(market);
        let row = self
            .pg
            .run(async |conn| query.fetch_optional(conn).await)
            .await?;
        row.as_ref().map(read_models::current_from_row).transpose()
    }

    /// Current odds of one event in one market: cache, else Postgres (filling the cache);
    /// Postgres only while the live feed is down. `Ok(None)` when the pair is unknown to
    /// whichever store answered.
    pub async fn current(
        &self,
        event_id: &str,
        market: &str,
    ) -> Result<Option<(OddsUpdate, Source)>, StoreError> {
        if let Some(why) = self.feed.cache_distrusted() {
            self.metrics.store_fallbacks.inc();
            return match self.current_from_database(event_id, market).await {
                Ok(update) => Ok(update.map(|u| (u, Source::Database))),
                Err(e) => Err(StoreError::Unavailable(format!(
                    "Postgres: {e}; the cache is not trusted ({why})"
                ))),
            };
        }
        let key = redis_current_key(event_id, market);
        let redis_error = match self
            .redis
            .run::<Option<String>>(redis::cmd("GET").arg(&key))
            .await
        {
            Ok(Some(json)) => match odds_contracts::parse_update(json.as_bytes()) {
                Ok(update) if update.event_id == event_id && update.market == market => {
                    return Ok(Some((update, Source::Cache)))
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(%key, "cache entry is not a valid update for its key; reading Postgres");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let row = self.current_from_database(event_id, market).await;
        let update = match (row, &redis_error) {
            (Ok(update), _) => update,
            (Err(db), Some(redis)) => {
                return Err(StoreError::Unavailable(format!(
                    "Redis: {redis}; Postgres: {db}"
                )))
            }
            (Err(db), None) => return Err(StoreError::Database(db)),
        };
        let Some(update) = update else {
            return Ok(None);
        };
        if redis_error.is_some() {
            self.metrics.store_fallbacks.inc();
        } else {
            // NX: never overwrite what the processor may have written meanwhile (newer).
            let fill = redis::cmd("SET")
                .arg(&key)
                .arg(update.to_json())
                .arg("NX")
                .clone();
            if let Err(e) = self.redis.run::<Option<String>>(&fill).await {
                tracing::debug!(%key, error = %e, "cache fill failed");
            }
        }
        Ok(Some((update, Source::Database)))
    }

    /// Every market of up to `limit` events with ids after `after`, in (event, market) order.
    pub async fn list_events(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OddsUpdate>, StoreError> {
        let query = sqlx::query(read_models::CURRENT_OF_EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit));
        self.database_rows(query).await
    }

    /// Current odds of every market of up to `limit` events with ids after `after`, in
    /// (event, market) order (keyset paging by event): Postgres, else the cache (SCAN) while
    /// it is trusted.
    pub async fn current_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OddsUpdate>, StoreError> {
        let db_error = match self.list_events(after, limit).await {
            Ok(all) => return Ok(all),
            Err(e) => e,
        };
        if let Some(why) = self.feed.cache_distrusted() {
            return Err(StoreError::Unavailable(format!(
                "{db_error}; the cache is not trusted ({why})"
            )));
        }
        self.metrics.store_fallbacks.inc();
        let mut cursor: u64 = 0;
        let mut updates = Vec::new();
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{REDIS_CURRENT_PREFIX}*"))
                .arg("COUNT")
                .arg(500)
                .clone();
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .run(&scan)
                .await
                .map_err(|e| StoreError::Unavailable(format!("{db_error}; Redis: {e}")))?;
            if !keys.is_empty() {
                let values: Vec<Option<String>> = self
                    .redis
                    .run(redis::cmd("MGET").arg(&keys))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("{db_error}; Redis: {e}")))?;
                updates.extend(
                    values
                        .into_iter()
                        .flatten()
                        .filter_map(|json| odds_contracts::parse_update(json.as_bytes()).ok()),
                );
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        updates.retain(|u| after.is_none_or(|after| u.event_id.as_str() > after));
        updates.sort_by(|a, b| (&a.event_id, &a.market).cmp(&(&b.event_id, &b.market)));
        keep_events(&mut updates, limit as usize);
        Ok(updates)
    }

    /// Newest-first history of one event, of one market or of all.
    pub async fn history(
        &self,
        event_id: &str,
        market: Option<Market>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let markets: Vec<&str> = match market {
            Some(m) => vec![m.as_str()],
            None => Market::ALL.iter().map(|m| m.as_str()).collect(),
        };
        let query = sqlx::query_as(read_models::HISTORY_NEWEST_FIRST)
            .bind(event_id)
            .bind(i64::from(limit))
            .bind(markets);
        let rows: Vec<HistoryRow> = self
            .pg
            .run(async |conn| query.fetch_all(conn).await)
            .await
            .map_err(|e| StoreError::Unavailable(format!("Postgres: {e}")))?;
        Ok(rows
            .into_iter()
            .map(
                |(version, market, home, draw, away, updated_at, source)| HistoryEntry {
                    version: u64::try_from(version).unwrap_or(0),
                    market,
                    odds: Odds { home, draw, away },
                    updated_at,
                    source,
                },
            )
            .collect())
    }

    /// The freshness canary's latest report (`None` when no canary published one within its
    /// time-to-live); Redis only: the report lives nowhere else.
    pub async fn freshness(&self) -> Result<Option<FreshnessReport>, StoreError> {
        let text = self
            .redis
            .run::<Option<String>>(redis::cmd("GET").arg(REDIS_FRESHNESS_KEY))
            .await
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        Ok(text.and_then(|text| {
            let report = FreshnessReport::parse(text.as_bytes());
            if report.is_none() {
                tracing::warn!(%text, "the freshness report in Redis is not one");
            }
            report
        }))
    }

    /// True when Redis or Postgres answers (readiness: either can serve reads).
    pub async fn reachable(&self) -> bool {
        if self.redis.run::<String>(&redis::cmd("PING")).await.is_ok() {
            return true;
        }
        self.pg.ping().await
    }
}

/// Where each event starts in `rows` (ordered by event): the index of its first market.
fn event_starts(rows: &[OddsUpdate]) -> impl Iterator<Item = usize> + '_ {
    (0..rows.len()).filter(|&i| i == 0 || rows[i - 1].event_id != rows[i].event_id)
}

/// How many events `rows` (ordered by event) hold.
pub fn event_count(rows: &[OddsUpdate]) -> usize {
    event_starts(rows).count()
}

/// Keeps every market of the first `events` events of `rows` (ordered by event); returns
/// whether rows of further events were cut.
pub fn keep_events(rows: &mut Vec<OddsUpdate>, events: usize) -> bool {
    let cut = event_starts(rows).nth(events);
    if let Some(cut) = cut {
        rows.truncate(cut);
    }
    cut.is_some()
}

fn decode(rows: &[PgRow]) -> Result<Vec<OddsUpdate>, sqlx::Error> {
    rows.iter().map(read_models::current_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use odds_testkit::{sample_update, sample_update_in};

    #[test]
    fn a_page_of_events_keeps_every_market_of_each() {
        let mut rows = vec![
            sample_update("A", 1),
            sample_update_in("A", "HT_1X2", 2),
            sample_update("B", 1),
            sample_update("C", 1),
            sample_update_in("C", "HT_1X2", 2),
        ];
        assert_eq!(event_count(&rows), 3);
        assert!(!keep_events(&mut rows, 3), "nothing beyond three events");
        assert!(keep_events(&mut rows, 2));
        let kept: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(kept, ["A", "A", "B"]);
        assert_eq!(event_count(&[]), 0);
    }
}
