//! A Redis connection for the processor's writers (the cache, its status reports, the
//! heartbeat): made on first use and made again after any failure, every connect and command
//! bounded by one timeout, so a Redis that hangs costs each writer a bounded wait.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult};
use std::time::Duration;

/// Not `Clone`: a copy would share the connection but reset it on its own; a task that needs
/// the same Redis takes [`RedisLink::separate`].
pub(crate) struct RedisLink {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Option<MultiplexedConnection>,
}

impl RedisLink {
    /// A link to `redis_url`; nothing connects until first use.
    pub(crate) fn new(redis_url: &str, timeout: Duration) -> RedisResult<RedisLink> {
        Ok(RedisLink {
            client: Client::open(redis_url)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            connection: None,
        })
    }

    /// A link to the same Redis with a connection of its own: a task that must not queue
    /// behind this link's commands (or stall them) gets one.
    pub(crate) fn separate(&self) -> RedisLink {
        RedisLink {
            client: self.client.clone(),
            config: self.config.clone(),
            connection: None,
        }
    }

    /// The connection, made now if there is none.
    pub(crate) async fn connection(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the connection after a failure: the next use connects again.
    pub(crate) fn reset(&mut self) {
        self.connection = None;
    }

    /// PUBLISHes `message` on `channel`; a failure drops the connection.
    pub(crate) async fn publish(&mut self, channel: &str, message: String) -> RedisResult<()> {
        let mut connection = self.connection().await?;
        let published: RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut connection)
            .await;
        if published.is_err() {
            self.reset();
        }
        published.map(drop)
    }
}
