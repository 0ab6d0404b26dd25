//! A throwaway `redis-server`: own port, no persistence, killed on drop.
//!
//! Configured as the pipeline's cache is meant to run (and as the chart's dev Redis is):
//! `maxmemory 64mb` with `allkeys-lru`, so memory stays bounded and a full cache evicts
//! instead of refusing writes. `make demo` uses this server too. Tests of a Redis that refuses
//! writes set `maxmemory-policy noeviction` themselves.
//!
//! `stop` and `start` keep the port, so a test can take Redis away mid-stream and bring it back
//! at the same address the code under test is configured with.

use crate::process::{find_binary, free_port, wait_until};
use crate::{Result, TestkitError};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestRedis {
    port: u16,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a fresh server on a free port and waits until it answers PING.
    pub async fn start() -> Result<TestRedis> {
        let mut redis = TestRedis {
            port: free_port()?,
            child: None,
        };
        redis.start_again().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A multiplexed connection, for tests that inspect or seed the cache.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Makes the server refuse writes as a full Redis under `noeviction` does (`OOM command
    /// not allowed`), while reads, PING and PUBLISH keep working.
    pub async fn refuse_writes(&self) -> Result<()> {
        self.config_set(&[("maxmemory-policy", "noeviction"), ("maxmemory", "1")])
            .await
    }

    /// Undoes [`TestRedis::refuse_writes`]: no memory limit.
    pub async fn accept_writes(&self) -> Result<()> {
        self.config_set(&[("maxmemory", "0")]).await
    }

    async fn config_set(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut connection = self.connection().await?;
        for (name, value) in settings {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async::<()>(&mut connection)
                .await?;
        }
        Ok(())
    }

    /// Kills the server (like a crash: clients see the connection drop). Data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`TestRedis::stop`]).
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop();
        let binary = find_binary("redis-server")?;
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| TestkitError::Io {
                what: "spawning redis-server".into(),
                source,
            })?;
        self.child = Some(child);
        let url = self.url();
        wait_until(Duration::from_secs(10), "redis-server", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
