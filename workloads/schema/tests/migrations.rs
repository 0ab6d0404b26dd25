//! The migrations apply to an empty database, create what the services rely on, and re-apply
//! as a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_testkit::TestDatabase;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

async fn names(pool: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

/// The one number `sql` selects.
async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn migrations_apply_twice_and_create_the_schema() {
    let db = TestDatabase::create().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    assert_eq!(odds_schema::latest_version(), 3);

    let tables = names(
        db.pool(),
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .await;
    for t in [
        "bets",
        "ledger_entries",
        "odds_current",
        "odds_history",
        "users",
        "wallets",
    ] {
        assert!(
            tables.contains(&t.to_string()),
            "{t} missing from {tables:?}"
        );
    }

    let applied = count(
        db.pool(),
        "SELECT count(*) FROM _sqlx_migrations WHERE success",
    )
    .await;
    assert_eq!(applied, 3, "second run applied nothing new");

    let constraints = names(
        db.pool(),
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'odds_history'::regclass",
    )
    .await;
    assert!(constraints.contains(&"odds_history_event_market_version_key".to_string()));
    let fks = count(
        db.pool(),
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'bets'::regclass",
    )
    .await;
    assert_eq!(fks, 2, "bets reference users and wallets");

    // Money is never float: every *_minor column is bigint, every odds column numeric.
    let float_cols = names(
        db.pool(),
        "SELECT table_name || '.' || column_name FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type IN ('real', 'double precision')",
    )
    .await;
    assert!(float_cols.is_empty(), "float columns: {float_cols:?}");
}

#[tokio::test]
async fn read_model_constraints_hold() {
    let db = TestDatabase::create().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    let insert = "INSERT INTO odds_history (event_id, version, market, home_odds, draw_odds,
                  away_odds, updated_at) VALUES ('E1', 1, '1X2', 2.1, 3.2, 3.9, now())";
    sqlx::query(insert).execute(db.pool()).await.unwrap();
    let dup = sqlx::query(insert).execute(db.pool()).await.unwrap_err();
    assert!(
        dup.to_string()
            .contains("odds_history_event_market_version_key"),
        "{dup}"
    );

    let bad_odds = sqlx::query(
        "INSERT INTO odds_current (event_id, home_team, away_team, market, home_odds,
         draw_odds, away_odds, version, updated_at)
         VALUES ('E1', 'A', 'B', '1X2', 0.5, 3, 3, 1, now())",
    )
    .execute(db.pool())
    .await;
    assert!(bad_odds.is_err(), "odds <= 1 are refused by the schema too");

    // The history query is served by the unique index, newest first, one scan per market.
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        odds_schema::read_models::HISTORY_NEWEST_FIRST
    ))
    .bind("E1")
    .bind(5_i64)
    .bind(vec!["1X2", "HT_1X2"])
    .fetch_all(db.pool())
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("odds_history_event_market_version_key"),
        "{plan}"
    );
}

/// A database that ran 0002 (one current row per event) with data in it takes 0003, keeps
/// every row, and from then on holds one current row per (event, market).
#[tokio::test]
async fn markets_migration_upgrades_a_populated_database() {
    let db = TestDatabase::create().await.unwrap();
    migrated_to_0002(&db).await;
    sqlx::query(
        "INSERT INTO odds_current (event_id, home_team, away_team, market, home_odds,
         draw_odds, away_odds, version, updated_at) VALUES ('E1', 'A', 'B', '1X2', 2, 3, 4, 7, now())",
    )
    .execute(db.pool())
    .await
    .unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();

    let mut half_time = odds_testkit::sample_update("E1", 8);
    half_time.market = "HT_1X2".into();
    odds_schema::read_models::apply_batch(&[half_time])
        .fetch_all(db.pool())
        .await
        .unwrap();
    let current = db.current_market_versions("E1").await.unwrap();
    assert_eq!(current, vec![("1X2".into(), 7), ("HT_1X2".into(), 8)]);
}

/// The first two migrations applied, as a deployment of that time had them.
async fn migrated_to_0002(db: &TestDatabase) {
    let dir = std::env::temp_dir().join(format!(
        "odds-migrations-0002-{}-{}",
        std::process::id(),
        db.url().rsplit('/').next().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    for file in ["0001_init_schema.sql", "0002_odds_read_models.sql"] {
        std::fs::copy(repo.join(file), dir.join(file)).unwrap();
    }
    Migrator::new(dir.clone())
        .await
        .unwrap()
        .run(db.pool())
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn lock_limited_pool(db: &TestDatabase) -> PgPool {
    let settings = odds_schema::pool::PoolSettings {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(10),
        statement_timeout: std::time::Duration::ZERO,
        lock_timeout: std::time::Duration::from_millis(200),
    };
    odds_schema::pool::connect_lazy(db.url(), &settings).unwrap()
}

/// A migration's own DDL gives up on a lock (the application holds the table) and says which
/// migration failed; nothing of it is applied.
#[tokio::test]
async fn a_migration_statement_gives_up_on_a_lock() {
    let db = TestDatabase::create().await.unwrap();
    migrated_to_0002(&db).await;
    let locker = db.lock_table("odds_current", "ACCESS SHARE").await.unwrap();
    let pool = lock_limited_pool(&db);
    let error =
        odds_schema::migrate_waiting_for_others(&pool, std::time::Duration::from_millis(50), |e| {
            panic!("not a wait for another migration: {e}")
        })
        .await
        .unwrap_err();
    match &error {
        sqlx::migrate::MigrateError::ExecuteMigration(source, 3) => {
            let code = source.as_database_error().and_then(|e| e.code());
            assert_eq!(code.as_deref(), Some("55P03"), "{source}");
        }
        other => panic!("expected migration 3 to fail on the lock, got {other}"),
    }
    locker.rollback().await.unwrap();
    let applied = names(
        db.pool(),
        "SELECT version::text FROM _sqlx_migrations ORDER BY 1",
    )
    .await;
    assert_eq!(applied, ["1", "2"]);
}

/// A migration in progress elsewhere (here: its hold on the bookkeeping table) is waited
/// out, however long, and the migration then runs.
#[tokio::test]
async fn a_migration_waits_for_one_in_progress() {
    let db = TestDatabase::create().await.unwrap();
    migrated_to_0002(&db).await;
    let other = db
        .lock_table("_sqlx_migrations", "ACCESS EXCLUSIVE")
        .await
        .unwrap();
    let pool = lock_limited_pool(&db);
    let waits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let migration = {
        let waits = waits.clone();
        tokio::spawn(async move {
            odds_schema::migrate_waiting_for_others(
                &pool,
                std::time::Duration::from_millis(50),
                |_| {
                    waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while waits.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            !migration.is_finished(),
            "the migration ended while the other held on"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lock wait reported"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    other.rollback().await.unwrap();
    migration.await.unwrap().unwrap();
    let applied = names(
        db.pool(),
        "SELECT version::text FROM _sqlx_migrations ORDER BY 1",
    )
    .await;
    assert_eq!(applied, ["1", "2", "3"]);
}

/// The batch statements take prices as `numeric` text (`read_models::numeric_text`) instead of
/// casting `float8` in the server: every price must be stored with the value and scale the
/// cast gave, short ones as well as those past 15 significant digits, large and small.
#[tokio::test]
async fn prices_as_numeric_text_store_what_the_float8_cast_stored() {
    let db = TestDatabase::create().await.unwrap();
    let values = [
        1.85,
        2.1,
        3.6,
        1.01,
        1000.0,
        1.0000000000000002,
        1.2345678901234567,
        0.1 + 0.2 + 1.0,
        12.345678901234567,
        123_456.789_012_345_67,
        1e20,
        1.5e300,
        f64::MAX,
        1e-5 + 1.0,
        0.000_123_456_789_012_345_67,
        -7.25,
        0.0,
    ];
    for value in values {
        let text = odds_schema::read_models::numeric_text(value);
        let (cast, read, same): (String, String, bool) = sqlx::query_as(
            "SELECT $1::float8::numeric::text, $2::numeric::text, $1::float8::numeric = $2::numeric",
        )
        .bind(value)
        .bind(&text)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert!(same, "{value}: cast {cast}, from {text:?} {read}");
        assert_eq!(read, cast, "{value}: the scale differs (from {text:?})");
    }
}
