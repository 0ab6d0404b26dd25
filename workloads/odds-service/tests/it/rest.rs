//! REST API against real Redis and Postgres: cache-first reads, fallbacks, errors, paging.

use crate::common::{update, Env};
use odds_contracts::OddsUpdate;
use odds_testkit::{http_get, TestDatabase};

#[tokio::test]
async fn cache_hit_is_served_from_redis() {
    let env = Env::start(&[]).await;
    // Only in the cache: Postgres does not know it, so a 200 proves the cache answered.
    env.write_cache(&update("CACHE_ONLY", 3, 2.1)).await;
    let response = http_get(env.addr(), "/v1/events/CACHE_ONLY/odds")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("x-odds-source"), Some("cache"));
    let body = response.json().unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["odds"]["home"], 2.1);
    assert_eq!(body["home_team"], "CACHE_ONLY Home");
    env.stop().await;
}

#[tokio::test]
async fn cache_miss_reads_postgres_and_fills_the_cache() {
    let env = Env::start(&[]).await;
    env.write_postgres(&update("PG_ONLY", 7, 1.85)).await;
    assert_eq!(env.cached("PG_ONLY").await, None);
    let first = http_get(env.addr(), "/v1/events/PG_ONLY/odds")
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-odds-source"), Some("database"));
    assert_eq!(first.json().unwrap()["odds"]["home"], 1.85);
    let cached = env.cached("PG_ONLY").await.expect("cache filled on miss");
    let cached: serde_json::Value = serde_json::from_str(&cached).unwrap();
    assert_eq!(cached["version"], 7);
    let second = http_get(env.addr(), "/v1/events/PG_ONLY/odds")
        .await
        .unwrap();
    assert_eq!(second.header("x-odds-source"), Some("cache"));
    env.stop().await;
}

#[tokio::test]
async fn redis_down_postgres_answers_and_both_down_is_503() {
    let db = TestDatabase::on_own_server().await.unwrap();
    let mut env = Env::start_with(db, &["--redis-timeout-ms=300"]).await;
    env.write(&update("E1", 2, 2.5)).await;
    env.redis.stop();
    let response = http_get(env.addr(), "/v1/events/E1/odds").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("x-odds-source"), Some("database"));
    assert_eq!(response.json().unwrap()["version"], 2);

    env.db.server_mut().unwrap().stop().unwrap();
    for path in ["/v1/events/E1/odds", "/v1/events", "/v1/events/E1/history"] {
        let response = http_get(env.addr(), path).await.unwrap();
        assert_eq!(response.status, 503, "{path}: {}", response.body);
        assert_eq!(
            response.json().unwrap()["error"]["code"],
            "unavailable",
            "{path}"
        );
    }
    env.stop().await;
}

/// The canary's report is served as written; none (a canary that stopped writing, whose key
/// expired) is a 404 that says so, and Redis down a 503: never old figures shown as current.
#[tokio::test]
async fn freshness_serves_the_canarys_latest_report_or_says_there_is_none() {
    use odds_contracts::freshness::FreshnessReport;
    use odds_contracts::names::REDIS_FRESHNESS_KEY;
    use odds_contracts::JsonMessage;
    let mut env = Env::start(&["--redis-timeout-ms=300"]).await;
    let none = http_get(env.addr(), "/v1/freshness").await.unwrap();
    assert_eq!(none.status, 404, "{}", none.body);
    assert_eq!(none.json().unwrap()["error"]["code"], "no_canary");

    let report = FreshnessReport {
        publisher: "test".into(),
        measured_at: chrono::Utc::now(),
        window_seconds: 60,
        frames: 120,
        p50_ms: Some(4),
        p99_ms: Some(12),
        longest_freeze_ms: 210,
        longest_freeze_at: Some("E1 1X2".into()),
        blind: None,
    };
    let mut redis = env.redis.connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(REDIS_FRESHNESS_KEY)
        .arg(report.to_json())
        .arg("PX")
        .arg(300)
        .query_async(&mut redis)
        .await
        .unwrap();
    let served = http_get(env.addr(), "/v1/freshness").await.unwrap();
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(
        FreshnessReport::parse(served.body.as_bytes()),
        Some(report.clone())
    );
    // Once its time-to-live passes, it is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_get(env.addr(), "/v1/freshness").await.unwrap().status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the report never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    env.redis.stop();
    let down = http_get(env.addr(), "/v1/freshness").await.unwrap();
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.json().unwrap()["error"]["code"], "unavailable");
    env.stop().await;
}

/// A read waiting on a lock ends at the statement timeout: history (Postgres only) is 503,
/// current odds come from the cache while the live feed is up.
#[tokio::test]
async fn reads_waiting_on_a_lock_end_at_the_statement_timeout() {
    let env = Env::start(&["--database-statement-timeout-ms=300"]).await;
    env.write(&update("E1", 2, 2.5)).await;
    let locker = env
        .db
        .lock_table("odds_history, odds_current", "ACCESS EXCLUSIVE")
        .await
        .unwrap();

    let history = http_get(env.addr(), "/v1/events/E1/history").await.unwrap();
    assert_eq!(history.status, 503, "{}", history.body);
    assert_eq!(history.json().unwrap()["error"]["code"], "unavailable");
    let current = http_get(env.addr(), "/v1/events/E1/odds").await.unwrap();
    assert_eq!(current.status, 200, "{}", current.body);
    assert_eq!(current.header("x-odds-source"), Some("cache"));
    assert_eq!(current.json().unwrap()["version"], 2);

    locker.rollback().await.unwrap();
    let history = http_get(env.addr(), "/v1/events/E1/history").await.unwrap();
    assert_eq!(history.status, 200, "{}", history.body);
    env.stop().await;
}

#[tokio::test]
async fn unknown_event_is_404_and_bad_input_is_400_with_json_bodies() {
    let env = Env::start(&[]).await;
    let cases = [
        ("/v1/events/NOPE/odds", 404, "unknown_event"),
        ("/v1/events/NOPE/markets", 404, "unknown_event"),
        ("/v1/events/NOPE/history", 404, "unknown_event"),
        ("/v1/events/bad%20id/odds", 400, "bad_request"),
        (
            &format!("/v1/events/{}/odds", "x".repeat(65)),
            400,
            "bad_request",
        ),
        ("/v1/events?limit=0", 400, "bad_request"),
        ("/v1/events?limit=100000", 400, "bad_request"),
        ("/v1/events?limit=abc", 400, "bad_request"),
        ("/v1/events?cursor=a%20b", 400, "bad_request"),
        ("/v1/events/E1/history?limit=-1", 400, "bad_request"),
        ("/v1/nothing", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let response = http_get(env.addr(), path).await.unwrap();
        assert_eq!(response.status, status, "{path}: {}", response.body);
        assert_eq!(response.json().unwrap()["error"]["code"], code, "{path}");
    }
    env.stop().await;
}

#[tokio::test]
async fn events_are_paged_with_a_cursor() {
    let env = Env::start(&[]).await;
    for i in 0..5 {
        env.write_postgres(&update(&format!("EV_{i}"), 1, 2.0 + i as f64))
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/events?limit=2".to_owned();
    for _ in 0..5 {
        let body = http_get(env.addr(), &path).await.unwrap().json().unwrap();
        for event in body["events"].as_array().unwrap() {
            seen.push(event["event_id"].as_str().unwrap().to_owned());
            assert_eq!(event["market"], "1X2");
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/events?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["EV_0", "EV_1", "EV_2", "EV_3", "EV_4"]);
    env.stop().await;
}

#[tokio::test]
async fn history_is_newest_first_and_each_market_has_its_current_odds() {
    let env = Env::start(&[]).await;
    for v in 1..=4 {
        env.write(&update("HIST", v, 2.0 + v as f64 / 10.0)).await;
    }
    // Version 5 is of the half-time market: it must not replace the 1X2 odds.
    let half_time = OddsUpdate {
        market: "HT_1X2".into(),
        ..update("HIST", 5, 7.5)
    };
    env.write(&half_time).await;
    let versions = |body: serde_json::Value| -> Vec<(u64, String)> {
        body["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["version"].as_u64().unwrap(),
                    h["market"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let addr = env.addr();
    let get = move |path: &'static str| async move { http_get(addr, path).await.unwrap() };
    let all = get("/v1/events/HIST/history?limit=3").await.json().unwrap();
    assert_eq!(
        versions(all.clone()),
        [(5, "HT_1X2".into()), (4, "1X2".into()), (3, "1X2".into())]
    );
    assert_eq!(all["history"][1]["odds"]["home"], 2.4);
    let one = get("/v1/events/HIST/history?limit=2&market=1X2")
        .await
        .json()
        .unwrap();
    assert_eq!(versions(one), [(4, "1X2".into()), (3, "1X2".into())]);

    let markets = get("/v1/events/HIST/markets").await.json().unwrap();
    let current: Vec<(String, u64)> = markets["markets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["market"].as_str().unwrap().into(),
                m["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(current, [("1X2".into(), 4), ("HT_1X2".into(), 5)]);

    let odds = get("/v1/events/HIST/odds").await.json().unwrap();
    assert_eq!(
        (odds["market"].clone(), odds["version"].clone()),
        ("1X2".into(), 4.into())
    );
    let odds = get("/v1/events/HIST/odds?market=HT_1X2").await;
    assert_eq!(odds.status, 200);
    assert_eq!(odds.json().unwrap()["odds"]["home"], 7.5);
    let unknown = get("/v1/events/HIST/odds?market=CORNERS").await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.json().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("HT_1X2"));
    env.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_the_real_routes_and_the_page_is_served() {
    let env = Env::start(&[]).await;
    let response = http_get(env.addr(), "/openapi.json").await.unwrap();
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let doc = response.json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/events",
        "/v1/events/{id}/markets",
        "/v1/events/{id}/odds",
        "/v1/events/{id}/history",
        "/v1/freshness",
        "/ws/odds",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    // Every documented path is really routed (a 404 body would say not_found).
    for path in doc["paths"].as_object().unwrap().keys() {
        let concrete = path.replace("{id}", "NOPE");
        let response = http_get(env.addr(), &concrete).await.unwrap();
        assert_ne!(
            response.json().ok().map(|b| b["error"]["code"].clone()),
            Some(serde_json::json!("not_found")),
            "{path} is documented but not routed"
        );
    }
    let page = http_get(env.addr(), "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ws/odds"));
    assert!(page.body.contains("id=\"odds-table\""));
    env.stop().await;
}

#[tokio::test]
async fn ops_endpoints_report_readiness_and_metrics() {
    let env = Env::start(&[]).await;
    let ops = env.service.as_ref().unwrap().ops_addr;
    let _ = http_get(env.addr(), "/v1/events/NOPE/odds").await.unwrap();
    let mut ready = None;
    for _ in 0..100 {
        let response = http_get(ops, "/readyz").await.unwrap();
        if response.status == 200 {
            ready = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready.is_some(), "never ready");
    let metrics = http_get(ops, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(r#"odds_api_requests_total{route="/v1/events/{id}/odds",status="404"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("odds_ws_connections 0"));
    env.stop().await;
}

/// `odds-service --help | head -1`: a reader that leaves early is not an error.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    for arg in ["--help", "--version"] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_odds-service"));
        let output = odds_testkit::output_with_closed_stdout(command.arg(arg)).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{arg}: {output:?}");
        assert!(!stderr.contains("panicked"), "{arg}: {stderr}");
    }
}
