//! Statements of a deadline pool end: Postgres cancels one waiting on a lock (at the statement
//! or the lock timeout), the client gives up on one the server does not answer in time, and
//! the pool serves again afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_schema::pool::{connect_lazy, DeadlinePool, PoolSettings};
use odds_testkit::TestDatabase;
use std::time::Duration;

/// Far above any deadline under test: only a statement that never ends reaches it.
const HANG: Duration = Duration::from_secs(60);

fn settings(statement_timeout: Duration) -> PoolSettings {
    PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        statement_timeout,
        lock_timeout: Duration::ZERO,
    }
}

/// A migrated database's `odds_current`, locked by an open transaction until it ends.
async fn lock_odds_current(db: &TestDatabase) -> sqlx::Transaction<'static, sqlx::Postgres> {
    odds_schema::migrate(db.pool()).await.unwrap();
    db.lock_table("odds_current", "ACCESS EXCLUSIVE")
        .await
        .unwrap()
}

/// The error `statement` fails with; fails the test as `hung` if it is still waiting after
/// [`HANG`].
async fn failure_within_hang<T: std::fmt::Debug, E: std::fmt::Debug>(
    statement: impl std::future::Future<Output = Result<T, E>>,
    hung: &str,
) -> E {
    let outcome = tokio::time::timeout(HANG, statement).await;
    outcome.unwrap_or_else(|_| panic!("{hung}")).unwrap_err()
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test]
async fn a_statement_waiting_on_a_lock_is_cancelled_by_postgres() {
    let db = TestDatabase::create().await.unwrap();
    // A migration's DDL, say: holds the table until its transaction ends.
    let locker = lock_odds_current(&db).await;

    let pool = connect_lazy(db.url(), &settings(Duration::from_millis(300))).unwrap();
    let blocked = sqlx::query("SELECT count(*) FROM odds_current").fetch_one(&pool);
    let error = failure_within_hang(blocked, "the statement waited on the lock without end").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("57014"), "{error}"); // query_canceled

    locker.rollback().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM odds_current")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn lock_timeout_ends_a_wait_for_a_lock_and_nothing_else() {
    let db = TestDatabase::create().await.unwrap();
    let locker = lock_odds_current(&db).await;
    let pool = connect_lazy(
        db.url(),
        &PoolSettings {
            lock_timeout: Duration::from_millis(300),
            ..settings(Duration::ZERO)
        },
    )
    .unwrap();
    let blocked = sqlx::query("ALTER TABLE odds_current ADD COLUMN note text").execute(&pool);
    let error = failure_within_hang(blocked, "the DDL waited on the lock without end").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("55P03"), "{error}"); // lock_not_available
    locker.rollback().await.unwrap();
    // A statement that runs long without waiting on a lock is left alone.
    sqlx::query("SELECT pg_sleep(0.5)")
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_client_gives_up_on_a_statement_the_server_does_not_end_in_time() {
    let db = TestDatabase::create().await.unwrap();
    // One connection: the pool serves again only if the abandoned one is not handed back
    // still waiting for its statement. The server would let the statement run a minute.
    let pool = connect_lazy(
        db.url(),
        &PoolSettings {
            max_connections: 1,
            ..settings(HANG)
        },
    )
    .unwrap();
    // The client's deadline: 100 ms (+ the margin).
    let bounded = DeadlinePool::new(pool, Duration::from_millis(100));
    let sleeping = bounded.run(async |conn| {
        sqlx::query("SELECT pg_sleep(30)").execute(conn).await?;
        Ok(())
    });
    let error = failure_within_hang(sleeping, "run() did not end the wait").await;
    match &error {
        sqlx::Error::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{error}"),
        other => panic!("expected a timeout, got {other}"),
    }
    let one: i32 = bounded
        .run(async |conn| sqlx::query_scalar("SELECT 1").fetch_one(conn).await)
        .await
        .unwrap();
    assert_eq!(one, 1, "the pool serves again after an abandoned statement");
}
