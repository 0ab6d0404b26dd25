//! The Redis side: the current-odds cache (`odds:current:{event_id}:{market}`) and the
//! `odds:updates` channel.
//!
//! One Lua script per batch does, atomically and in one round trip, for each (event, market): compare
//! the cached version with the update's, SET the key only if the update is strictly newer, and
//! PUBLISH exactly the updates that advanced a key. So the channel carries each version at
//! most once per cache state and never a regression, however often Kafka redelivers.
//!
//! Redis is a cache: when it is unreachable the batch still commits (Postgres is the truth)
//! and the cache is marked stale. Repair (see [`Cache::repair_from`]) replays every row of
//! `odds_current` through the same script once Redis answers again, which also publishes the
//! versions subscribers missed.
//!
//! While writes fail, a [`StatusReporter`] tells readers so on the cache-status channel (see
//! [`odds_contracts::cache_status`]): Redis that is out of memory or read-only still takes
//! PUBLISH, and the service then stops trusting the cache and tells its clients that live
//! updates stopped, instead of leaving them on a silent socket.
//!
//! Memory: the cache holds one key per (event, market) and is meant to run under an eviction policy
//! (`maxmemory` with `allkeys-lru`, as the chart's Redis and `make demo` set). An evicted key
//! is harmless: readers fall back to Postgres and the next update sets it again.

use crate::redis_link::RedisLink;
use crate::store::{Store, StoreError};
use odds_contracts::cache_status::{CacheStatus, CACHE_STATUS_EVERY_MS};
use odds_contracts::names::{redis_current_key, REDIS_CACHE_STATUS_CHANNEL, REDIS_UPDATES_CHANNEL};
use odds_contracts::{JsonMessage, OddsUpdate};
use redis::aio::MultiplexedConnection;
use redis::Script;
use std::time::Duration;
use tokio::sync::watch;

/// KEYS[i] is the cache key of the i-th update; ARGV[1] the channel; ARGV[3i-1] the update's
/// version (decimal), ARGV[3i] its JSON and ARGV[3i+1] what to append to the published
/// message: empty, or a sampled update's trace context (see [`odds_contracts::traced`]; the
/// cached value never carries it). Returns the (1-based) indexes of the updates that advanced.
///
/// Versions are compared as decimal text, never as Lua numbers: those are doubles, exact only
/// up to 2^53, and the contract allows versions up to 2^63 - 1, where neighbouring versions
/// would compare equal and the newer one would be dropped. The cached version is read from
/// the cached JSON's text for the same reason (cjson decodes numbers to doubles); the JSON is
/// ours (serde's compact encoding), so `"version":` occurs once, as the top-level key: a
/// `"` inside a string value is always escaped.
const SET_IF_NEWER: &str = r#"
local function canonical(text)
  if text == nil or not string.match(text, '^[1-9]%d*$') then return nil end
  return text
end
-- a > b for canonical decimal strings: longer is larger, else the first differing digit.
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
local advanced = {}
for i, key in ipairs(KEYS) do
  local version = canonical(ARGV[3 * i - 1])
  local json = ARGV[3 * i]
  local held = redis.call('GET', key)
  local held_version = nil
  if held then
    held_version = canonical(string.match(held, '"version":(%d+)[,}]'))
  end
  -- A missing or unreadable cached value is replaced: the update is the best we know.
  if version and (held_version == nil or newer(version, held_version)) then
    redis.call('SET', key, json)
    redis.call('PUBLISH', ARGV[1], json .. ARGV[3 * i + 1])
    advanced[#advanced + 1] = i
  end
end
return advanced
"#;

/// Rows read from Postgres per repair round trip.
const REPAIR_PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("repair could not read Postgres: {0}")]
    Store(#[from] StoreError),
}

pub struct Cache {
    link: RedisLink,
    script: Script,
    /// True while Redis may miss updates that Postgres has. Starts true: a (re)started
    /// processor cannot know what happened to Redis while it was away.
    stale: bool,
}

impl Cache {
    /// A cache client; nothing connects until first use.
    pub fn new(redis_url: &str, timeout: Duration) -> Result<Cache, CacheError> {
        Ok(Cache {
            link: RedisLink::new(redis_url, timeout)?,
            script: Script::new(SET_IF_NEWER),
            stale: true,
        })
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, CacheError> {
        Ok(self.link.connection().await?)
    }

    /// Any Redis error may mean lost writes: drop the connection (the next use reconnects)
    /// and remember that the cache needs a repair.
    fn failed<T>(&mut self, error: CacheError) -> Result<T, CacheError> {
        if matches!(error, CacheError::Redis(_)) {
            self.link.reset();
            self.stale = true;
        }
        Err(error)
    }

    /// Sets each update whose version is newer than the cached one and publishes those.
    /// Returns the updates that advanced. `updates` must hold at most one update per (event,
    /// market).
    pub async fn set_newest(
        &mut self,
        updates: &[&OddsUpdate],
    ) -> Result<Vec<OddsUpdate>, CacheError> {
        self.set_newest_traced(updates, |_| None).await
    }

    /// [`Cache::set_newest`], publishing each update with what `trace_suffix` returns for it
    /// appended (a sampled update's trace context, [`odds_contracts::traced::pubsub_suffix`]).
    pub async fn set_newest_traced(
        &mut self,
        updates: &[&OddsUpdate],
        trace_suffix: impl Fn(&OddsUpdate) -> Option<String>,
    ) -> Result<Vec<OddsUpdate>, CacheError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.failed(e),
        };
        let result: redis::RedisResult<Vec<usize>> = {
            let mut invocation = self.script.prepare_invoke();
            invocation.arg(REDIS_UPDATES_CHANNEL);
            for update in updates {
                invocation
                    .key(redis_current_key(&update.event_id, &update.market))
                    .arg(update.version)
                    .arg(update.to_json())
                    .arg(trace_suffix(update).unwrap_or_default());
            }
            invocation.invoke_async(&mut connection).await
        };
        let advanced = match result {
            Ok(a) => a,
            Err(e) => return self.failed(e.into()),
        };
        Ok(advanced
            .into_iter()
            .filter_map(|i| i.checked_sub(1).and_then(|i| updates.get(i)))
            .map(|u| (*u).clone())
            .collect())
    }

    /// A reporter of this cache's write failures, publishing on its own connection in a task
    /// of its own, so a Redis that hangs never slows the processing loop. The task ends when
    /// the reporter is dropped.
    pub fn status_reporter(&self) -> StatusReporter {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(report_status(self.link.separate(), rx));
        StatusReporter { tx }
    }

    /// Checks that Redis answers; a failure marks the cache stale (Redis may have restarted
    /// empty while the processor was idle).
    pub async fn check(&mut self) -> Result<(), CacheError> {
        let mut connection = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.failed(e),
        };
        match redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => self.failed(e.into()),
        }
    }

    /// Repairs a stale cache: every row of `odds_current` goes through the same
    /// set-if-newer script, so keys only move forward and subscribers get the versions they
    /// missed. Returns how many keys advanced; clears the stale mark only on full success.
    pub async fn repair_from(&mut self, store: &Store) -> Result<usize, CacheError> {
        // Cheap first: while Redis is down, a retry costs a PING, not a read of Postgres.
        self.check().await?;
        let mut after = (String::new(), String::new());
        let mut advanced = 0;
        loop {
            let page = store
                .current_page((&after.0, &after.1), REPAIR_PAGE)
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            after = (last.event_id.clone(), last.market.clone());
            let refs: Vec<&OddsUpdate> = page.iter().collect();
            advanced += self.set_newest(&refs).await?.len();
            if page.len() < REPAIR_PAGE as usize {
                break;
            }
        }
        self.stale = false;
        Ok(advanced)
    }
}

/// The processing loop's side of the failure reports: it says whether writes fail and why;
/// the reporter task does the publishing.
pub struct StatusReporter {
    tx: watch::Sender<Option<String>>,
}

impl StatusReporter {
    /// Cache writes fail for `reason`: reported now and every [`CACHE_STATUS_EVERY_MS`].
    pub fn failing(&self, reason: String) {
        self.tx.send_if_modified(|current| {
            let changed = current.as_deref() != Some(reason.as_str());
            *current = Some(reason);
            changed
        });
    }

    /// Cache writes succeed again (after a repair): reported once.
    pub fn healthy(&self) {
        self.tx.send_if_modified(|current| current.take().is_some());
    }
}

/// Publishes a failure report at once and then every [`CACHE_STATUS_EVERY_MS`] while writes
/// fail, and one healthy report when they recover. Best effort: a report that cannot be
/// published is dropped (readers see Redis down themselves, and a failure report is a lease
/// that expires).
async fn report_status(mut link: RedisLink, mut failure: watch::Receiver<Option<String>>) {
    let every = Duration::from_millis(CACHE_STATUS_EVERY_MS);
    let mut reported_failure = false;
    loop {
        let reason = failure.borrow_and_update().clone();
        let status = match reason {
            Some(reason) => Some(CacheStatus::failing(reason)),
            None if reported_failure => Some(CacheStatus::healthy()),
            None => None,
        };
        if let Some(status) = status {
            match link
                .publish(REDIS_CACHE_STATUS_CHANNEL, status.to_json())
                .await
            {
                Ok(()) => reported_failure = !status.healthy,
                Err(error) => tracing::debug!(%error, "cache status report not published"),
            }
        }
        let failing = failure.borrow().is_some();
        tokio::select! {
            changed = failure.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every), if failing || reported_failure => {}
        }
    }
}
