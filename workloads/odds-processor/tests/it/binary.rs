//! The `odds-processor` binary as the operator runs it: `migrate` as a Job, then the service
//! with environment configuration, ops endpoints, and a clean stop on SIGTERM.

use crate::common::*;
use odds_testkit::{http_get, TestDatabase};
use std::process::{Command, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_odds-processor");

#[tokio::test]
async fn migrate_applies_the_schema_and_is_repeatable() {
    let db = TestDatabase::create().await.unwrap();
    for _ in 0..2 {
        let output = Command::new(BINARY)
            .arg("migrate")
            .env("DATABASE_URL", db.url())
            .env_remove("KAFKA_BROKERS")
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM odds_current").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 0);
}

#[tokio::test]
async fn bad_configuration_fails_with_a_clear_error() {
    let output = Command::new(BINARY)
        .env_remove("KAFKA_BROKERS")
        .env("DATABASE_URL", "postgres://nowhere/db")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kafka-brokers"), "{stderr}");

    let output = Command::new(BINARY)
        .args([
            "migrate",
            "--database-url",
            "postgres://127.0.0.1:notaport/none",
        ])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "migrate with an unusable URL must fail"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_processes_reports_and_stops_cleanly_on_sigterm() {
    let (kafka, db, redis, _) = start_stack(1, 1).await;
    let (mut command, addr) = processor_binary(&kafka, &db, &redis, "binary-test");
    let mut child = command
        .env("BATCH_MAX", "100")
        .env("KAFKA_PROP_GROUP_PROTOCOL", "classic")
        .env("KAFKA_PROP_SESSION_TIMEOUT_MS", "6000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_until("ready", || async {
        matches!(http_get(addr, "/readyz").await, Ok(r) if r.status == 200)
    })
    .await;
    let producer = producer(&kafka);
    produce(&producer, &[update("BIN1", 1), update("BIN1", 2)]).await;
    produce_raw(&producer, "BIN2", Some(b"{}")).await;
    wait_until("applied", || async {
        current_version(&db, "BIN1").await == Some(2)
    })
    .await;
    wait_until("metrics report the work", || async {
        let Ok(r) = http_get(addr, "/metrics").await else {
            return false;
        };
        r.body.contains("odds_proc_messages_consumed_total 3")
            && r.body
                .contains("odds_proc_dead_lettered_total{reason=\"invalid_json\"} 1")
    })
    .await;
    assert_eq!(http_get(addr, "/healthz").await.unwrap().status, 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_for_exit(&mut child, "no exit after SIGTERM").await;
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(
        committed_total(&kafka, "binary-test", 1),
        3,
        "committed before exit"
    );
}

/// `odds-processor --help | head -1`: a reader that leaves early is not an error.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    for args in [&["--help"][..], &["--version"], &["migrate", "--help"]] {
        let output =
            odds_testkit::output_with_closed_stdout(Command::new(BINARY).args(args)).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
