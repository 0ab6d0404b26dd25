//! Isolated Postgres databases for tests.
//!
//! With `ODDS_TEST_DATABASE_URL` (or `DATABASE_URL`) set, each [`TestDatabase`] is a fresh,
//! uniquely named database on that server, dropped afterwards. Without it, the test starts its
//! own throwaway server from the machine's Postgres binaries ([`PostgresServer`]). A test that
//! needs to take Postgres down asks for its own server explicitly
//! ([`TestDatabase::on_own_server`]) so it never stops a server other tests use.

use crate::process::{find_binary, free_port, run, running_as_root};
use crate::{Result, TestkitError};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// The OS user a throwaway server runs as when the tests run as root.
const POSTGRES_OS_USER: &str = "postgres";

/// How much of Postgres' crash safety a throwaway server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostgresDurability {
    /// fsync and full-page writes off: tests need no power-loss safety and run faster. Commits
    /// stay synchronous, so a crash of the server process keeps every committed transaction.
    #[default]
    FastUnsafe,
    /// Postgres' durable defaults (fsync, synchronous commit, full-page writes on): what a
    /// benchmark must measure, since it is what production promises.
    Durable,
}

impl PostgresDurability {
    /// The server settings (`-c` options) this durability means.
    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            PostgresDurability::FastUnsafe => &[
                ("fsync", "off"),
                ("full_page_writes", "off"),
                ("synchronous_commit", "on"),
            ],
            PostgresDurability::Durable => &[
                ("fsync", "on"),
                ("full_page_writes", "on"),
                ("synchronous_commit", "on"),
            ],
        }
    }
}

/// A Postgres server of the test's own, in a temporary directory; stopped and removed on drop.
pub struct PostgresServer {
    dir: TempDir,
    port: u16,
    running: bool,
    durability: PostgresDurability,
}

impl PostgresServer {
    /// `initdb` + start, with [`PostgresDurability::FastUnsafe`] settings (what tests use).
    pub async fn start() -> Result<PostgresServer> {
        Self::start_with(PostgresDurability::FastUnsafe).await
    }

    /// `initdb` + start with the given durability settings.
    pub async fn start_with(durability: PostgresDurability) -> Result<PostgresServer> {
        let dir = tempfile::Builder::new()
            .prefix("odds-pg-")
            .tempdir()
            .map_err(|source| TestkitError::Io {
                what: "creating a Postgres data directory".into(),
                source,
            })?;
        if running_as_root() {
            run(
                Command::new("chown")
                    .args(["-R", POSTGRES_OS_USER])
                    .arg(dir.path()),
                "chown of the Postgres data directory (is there a `postgres` OS user?)",
            )?;
        }
        let mut server = PostgresServer {
            dir,
            port: free_port()?,
            running: false,
            durability,
        };
        run(
            server.on_data("initdb")?.args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                // Only the initial files; a durable server still syncs everything it writes.
                "--no-sync",
            ]),
            "initdb",
        )?;
        server.start_again().await?;
        Ok(server)
    }

    /// [`Self::command`] on this server's data directory (`-D`).
    fn on_data(&self, binary: &str) -> Result<Command> {
        let mut cmd = self.command(binary)?;
        cmd.arg("-D").arg(self.dir.path().join("data"));
        Ok(cmd)
    }

    /// Builds a command for a Postgres binary, as the `postgres` OS user when we are root.
    fn command(&self, binary: &str) -> Result<Command> {
        let path = find_binary(binary)?;
        Ok(if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", POSTGRES_OS_USER, "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        })
    }

    /// Superuser URL of the `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn durability(&self) -> PostgresDurability {
        self.durability
    }

    /// Stops the server at once (`immediate`: like a crash, clients see their connections die).
    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            self.running = false;
            run(
                self.on_data("pg_ctl")?
                    .args(["-m", "immediate", "-w", "stop"]),
                "pg_ctl stop",
            )?;
        }
        Ok(())
    }

    /// Starts the server (again) on the same port and data directory.
    pub async fn start_again(&mut self) -> Result<()> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        for (name, value) in self.durability.settings() {
            options.push_str(&format!(" -c {name}={value}"));
        }
        run(
            self.on_data("pg_ctl")?
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        )?;
        self.running = true;
        Ok(())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A database of the test's own, with the schema-free state of a fresh `CREATE DATABASE`.
pub struct TestDatabase {
    url: String,
    name: String,
    /// Where to connect to drop the database; `None` when the whole server goes with us.
    admin_url: Option<String>,
    server: Option<PostgresServer>,
    pool: PgPool,
}

impl TestDatabase {
    /// A fresh database on the server named by `ODDS_TEST_DATABASE_URL` / `DATABASE_URL`, or on
    /// a throwaway server when neither is set.
    pub async fn create() -> Result<TestDatabase> {
        match std::env::var("ODDS_TEST_DATABASE_URL").or_else(|_| std::env::var("DATABASE_URL")) {
            Ok(admin_url) if !admin_url.is_empty() => Self::create_on(admin_url, None).await,
            _ => Self::on_own_server().await,
        }
    }

    /// A database on a server started for this test alone: the test may stop and start it.
    pub async fn on_own_server() -> Result<TestDatabase> {
        let server = PostgresServer::start().await?;
        let admin_url = server.admin_url();
        Self::create_on(admin_url, Some(server)).await
    }

    async fn create_on(admin_url: String, server: Option<PostgresServer>) -> Result<TestDatabase> {
        let name = format!("odds_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&admin_url)
            .await?;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        let admin_url = server.is_none().then_some(admin_url);
        Ok(TestDatabase {
            url,
            name,
            admin_url,
            server,
            pool,
        })
    }

    /// Connection URL of this database, for the code under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A small pool for the test's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The test's own server, when it has one ([`TestDatabase::on_own_server`]).
    pub fn server_mut(&mut self) -> Option<&mut PostgresServer> {
        self.server.as_mut()
    }

    /// What `odds_current` holds for `event_id`: (market, version), in market order. The
    /// read-model check the processor's and the schema's tests share.
    pub async fn current_market_versions(&self, event_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query_as(
            "SELECT market, version FROM odds_current WHERE event_id = $1 ORDER BY market",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// `table` (or a comma-separated list) locked in `mode` (`ACCESS EXCLUSIVE`, say) by an
    /// open transaction, as a migration or a long transaction would hold it, until the
    /// returned transaction ends.
    pub async fn lock_table(
        &self,
        table: &str,
        mode: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut locker = self.pool.begin().await?;
        sqlx::query(&format!("LOCK TABLE {table} IN {mode} MODE"))
            .execute(&mut *locker)
            .await?;
        Ok(locker)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return; // the server and all its data are removed with it
        };
        let name = self.name.clone();
        // Drop cannot await, and may run inside a runtime: do the cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url)
                    .await
                {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = admin.execute(sql.as_str()).await;
                    admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Replaces the database name in a Postgres URL, keeping credentials, host and query options.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{with_database, PostgresDurability, PostgresServer};
    use sqlx::postgres::PgPoolOptions;

    #[tokio::test]
    async fn each_durability_runs_with_the_settings_it_names() {
        for durability in [PostgresDurability::Durable, PostgresDurability::FastUnsafe] {
            let server = PostgresServer::start_with(durability).await.unwrap();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&server.admin_url())
                .await
                .unwrap();
            for (name, expected) in durability.settings() {
                let actual: String = sqlx::query_scalar(&format!("SHOW {name}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(&actual, expected, "{durability:?}: {name}");
            }
            pool.close().await;
        }
    }

    #[test]
    fn database_name_is_replaced_keeping_the_rest() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t2"), "postgres://h/t2");
        assert_eq!(
            with_database("postgresql://h:1/", "t3"),
            "postgresql://h:1/t3"
        );
    }
}
