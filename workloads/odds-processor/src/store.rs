//! The Postgres read models: `odds_current` and `odds_history`, written one batch at a time.
//!
//! A batch is one SQL statement (hence one transaction): the arrays of the batch are UNNESTed
//! once, every update is inserted into history (a plain insert; when a version was stored
//! already, the same statement again with `ON CONFLICT DO NOTHING`, so replays are harmless),
//! and the newest update per (event, market) is upserted into `odds_current` only where it is
//! strictly newer than the stored row. One rule settles two contents at one version, the same
//! in Postgres, Redis and on the WebSocket: the first one read wins (history keeps it,
//! `odds_current` keeps it, and Redis's set-if-newer script refuses the later one). Set-based
//! statements keep a batch of thousands of updates at one round trip.

use odds_contracts::OddsUpdate;
use odds_schema::pool::{DeadlinePool, PoolSettings};
use odds_schema::read_models;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

/// How many connections write one batch, each a disjoint set of events in its own
/// transaction. One statement per batch left Postgres working a single backend (and one
/// fsync) while the processor waited, the pipeline's limit at 60 000 updates/s (issue #26);
/// disjoint events take no row lock another part holds, so the parts never wait on each other.
pub const DB_WRITERS: usize = 4;

#[derive(Debug, thiserror::Error)]
#[error("postgres: {0}")]
pub struct StoreError(#[from] sqlx::Error);

impl StoreError {
    /// Whether Postgres refused the data itself (SQLSTATE class 22, data exception, or 23,
    /// integrity constraint violation): retrying the same rows can never succeed. Everything
    /// else (connection lost, timeout, shutdown, a server in recovery) is an outage that a
    /// retry outlives.
    pub fn is_permanent(&self) -> bool {
        match &self.0 {
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }
}

/// A batch written around the updates storage refused.
#[derive(Debug, Default)]
pub struct Isolated {
    pub applied: Applied,
    /// Index (into the batch's updates) and the database's message of each refused update.
    pub refused: Vec<(usize, String)>,
}

impl Applied {
    /// Adds what another part of the same batch changed.
    fn merge(&mut self, other: Applied) {
        self.history_inserted += other.history_inserted;
        self.current_advanced += other.current_advanced;
        for (event, markets) in other.current_markets {
            self.current_markets
                .entry(event)
                .or_default()
                .extend(markets);
        }
        // Parts are applied in read order: the first part that held a market saw the
        // version stored before the batch.
        for (event, markets) in other.stored_versions {
            let held = self.stored_versions.entry(event).or_default();
            for (market, version) in markets {
                if !held.iter().any(|(m, _)| *m == market) {
                    held.push((market, version));
                }
            }
        }
    }
}

/// What one batch changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub history_inserted: u64,
    pub current_advanced: u64,
    /// Per event, the markets whose stored current version is, after the batch, the batch's
    /// newest update: exactly these may go to the cache. A market missing here had a newer
    /// stored version already (a stale or replayed update). Keyed by event, so a lookup
    /// borrows the update's strings instead of building an owned pair.
    pub current_markets: HashMap<String, Vec<String>>,
    /// Per event, the version Postgres held for each market of the batch before it (markets
    /// with no row yet are absent): what tells a regression.
    pub stored_versions: HashMap<String, Vec<(String, u64)>>,
}

impl Applied {
    /// The version Postgres held for `update`'s (event, market) before the batch.
    pub fn stored_before(&self, update: &OddsUpdate) -> Option<u64> {
        self.stored_versions
            .get(&update.event_id)?
            .iter()
            .find(|(market, _)| *market == update.market)
            .map(|(_, version)| *version)
    }

    /// Whether `update` (the batch's newest of its market) is what Postgres now holds.
    pub fn is_current(&self, update: &OddsUpdate) -> bool {
        self.current_markets
            .get(&update.event_id)
            .is_some_and(|markets| markets.contains(&update.market))
    }
}

/// The read models behind a pool whose statements end (see [`odds_schema::pool`]): a batch
/// waiting on a lock or a frozen server becomes an outage the durable phase retries and
/// reports.
#[derive(Clone, Debug)]
pub struct Store {
    db: DeadlinePool,
}

impl Store {
    /// A store over a lazily connecting pool: the processor starts (and reports not ready)
    /// even when Postgres is down, and connects once it is up.
    pub fn connect_lazy(
        database_url: &str,
        statement_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let settings = PoolSettings {
            // The writers of one batch, plus the cache repair or ping beside them.
            max_connections: (DB_WRITERS + 1) as u32,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout,
            lock_timeout: Duration::ZERO,
        };
        Ok(Store {
            db: DeadlinePool::connect_lazy(database_url, &settings)?,
        })
    }

    /// A store over an existing pool (tests), with the default statement deadline.
    pub fn from_pool(pool: PgPool) -> Store {
        let timeout = Duration::from_millis(crate::config::DEFAULT_STATEMENT_TIMEOUT_MS);
        Store {
            db: DeadlinePool::new(pool, timeout),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run(async |conn| sqlx::query("SELECT 1").execute(conn).await)
            .await?;
        Ok(())
    }

    /// Applies a batch of valid updates atomically (see the module doc).
    pub async fn apply_batch(&self, updates: &[OddsUpdate]) -> Result<Applied, StoreError> {
        if updates.is_empty() {
            return Ok(Applied::default());
        }
        // Versions new to history are the rule: the plain insert first, and only when one was
        // stored already (a replay) the statement that skips them (see `APPLY_NEW_BATCH`).
        let new = self
            .db
            .run(async |conn| read_models::apply_new_batch(updates).fetch_all(conn).await)
            .await;
        let rows = match new {
            Err(error) if read_models::is_history_key_violation(&error) => {
                self.db
                    .run(async |conn| read_models::apply_batch(updates).fetch_all(conn).await)
                    .await?
            }
            written => written?,
        };
        let mut applied = Applied::default();
        for row in rows {
            applied.history_inserted = count(row.try_get("history_inserted")?);
            applied.current_advanced = count(row.try_get("current_advanced")?);
            let event_id: String = row.try_get("event_id")?;
            let market: String = row.try_get("market")?;
            if let Some(stored) = row.try_get::<Option<i64>, _>("stored_version")? {
                applied
                    .stored_versions
                    .entry(event_id.clone())
                    .or_default()
                    .push((market.clone(), count(stored)));
            }
            if row.try_get::<bool, _>("is_current")? {
                applied
                    .current_markets
                    .entry(event_id)
                    .or_default()
                    .push(market);
            }
        }
        Ok(applied)
    }

    /// Applies `updates`, isolating the ones storage refuses for good: the whole batch first,
    /// and when Postgres refuses it, halves of it, recursively, down to single updates. A
    /// poison update thus costs about 2·log2(n) extra statements and never blocks the others;
    /// parts written before a later part fails are harmless to write again (version guards).
    /// An outage error ends the attempt: the caller retries the whole batch.
    pub async fn apply_isolating(&self, updates: &[OddsUpdate]) -> Result<Isolated, StoreError> {
        let mut isolated = Isolated::default();
        let mut parts = vec![(0, updates.len())];
        while let Some((start, end)) = parts.pop() {
            match self.apply_batch(&updates[start..end]).await {
                Ok(applied) => isolated.applied.merge(applied),
                Err(error) if error.is_permanent() && end - start == 1 => {
                    isolated.refused.push((start, error.to_string()));
                }
                Err(error) if error.is_permanent() => {
                    let middle = start + (end - start) / 2;
                    parts.push((middle, end));
                    parts.push((start, middle));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(isolated)
    }

    /// Applies `updates` as [`Store::apply_isolating`] does, each of `parts` (disjoint ranges
    /// of `updates` holding disjoint events, see [`crate::batch::Decoded::group_by_writer`])
    /// on its own connection at once. The batch is durable when every part is: an outage in
    /// any part fails the whole, and the caller's retry writes again the parts that had
    /// committed, which the version guards make harmless. Refused indices are into `updates`.
    pub async fn apply_parts(
        &self,
        updates: &[OddsUpdate],
        parts: &[Range<usize>],
    ) -> Result<Isolated, StoreError> {
        let written = futures_util::future::join_all(
            parts
                .iter()
                .map(|part| self.apply_isolating(&updates[part.clone()])),
        )
        .await;
        let mut whole = Isolated::default();
        for (part, isolated) in parts.iter().zip(written) {
            let isolated = isolated?;
            // Parts hold disjoint events, so merging loses no stored version.
            whole.applied.merge(isolated.applied);
            whole.refused.extend(
                isolated
                    .refused
                    .into_iter()
                    .map(|(index, message)| (part.start + index, message)),
            );
        }
        Ok(whole)
    }

    /// Up to `limit` current rows after the (event, market) key `after`, in key order
    /// (keyset paging for the cache repair; start with two empty strings).
    pub async fn current_page(
        &self,
        after: (&str, &str),
        limit: i64,
    ) -> Result<Vec<OddsUpdate>, StoreError> {
        let page = sqlx::query(read_models::CURRENT_PAGE)
            .bind(after.0)
            .bind(after.1)
            .bind(limit);
        let rows = self.db.run(async |conn| page.fetch_all(conn).await).await?;
        rows.iter()
            .map(read_models::current_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError)
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
