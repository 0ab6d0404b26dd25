//! The migrations apply to an empty database, create what the services rely on, and re-apply
//! as a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_testkit::TestDatabase;
use sqlx::PgPool;

async fn names(pool: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn migrations_apply_twice_and_create_the_schema() {
    let db = TestDatabase::create().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    assert_eq!(odds_schema::latest_version(), 2);

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

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(applied, 2, "second run applied nothing new");

    let constraints = names(
        db.pool(),
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'odds_history'::regclass",
    )
    .await;
    assert!(constraints.contains(&"odds_history_event_version_key".to_string()));
    let fks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'bets'::regclass",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
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
        dup.to_string().contains("odds_history_event_version_key"),
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

    // The history query is served by the unique index, newest first.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT * FROM odds_history WHERE event_id = 'E1' ORDER BY version DESC LIMIT 5",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("odds_history_event_version_key"), "{plan}");
}
