//! The Redis side of the store: one multiplexed connection, re-established on demand.

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const REDIS_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A Redis connection that is re-established on demand, with a pause after a failure so a
/// dead Redis costs each request one fast error instead of a connect timeout.
pub(super) struct RedisCache {
    client: redis::Client,
    timeout: Duration,
    state: Mutex<(Option<MultiplexedConnection>, Option<Instant>)>,
}

impl RedisCache {
    pub(super) fn new(client: redis::Client, timeout: Duration) -> RedisCache {
        RedisCache {
            client,
            timeout,
            state: Mutex::new((None, None)),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.0 {
            return Ok(conn.clone());
        }
        if let Some(failed_at) = state.1 {
            if failed_at.elapsed() < REDIS_RETRY_PAUSE {
                return Err("Redis unreachable (retrying shortly)".into());
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                *state = (Some(conn.clone()), None);
                Ok(conn)
            }
            Err(e) => {
                *state = (None, Some(Instant::now()));
                Err(e.to_string())
            }
        }
    }

    async fn forget(&self) {
        *self.state.lock().await = (None, Some(Instant::now()));
    }

    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Parse) {
                    self.forget().await;
                }
                Err(e.to_string())
            }
        }
    }
}
