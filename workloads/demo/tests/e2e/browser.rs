//! The live odds page in a real browser: headless Chromium, driven over the DevTools protocol.
//!
//! The page must show every event with its teams, receive live updates after the snapshot
//! (odds change on screen, with up/down marks), and say it is connected. It must also show
//! the freshness canary's figures (`GET /v1/freshness`): "no canary figures" while none
//! runs, then exactly the figures the demo's canary published. A screenshot is saved
//! as `target/odds-page.png`. Chromium comes from Debian's `chromium` package, which
//! `make test` installs; without it this test fails and says how to install it.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::JsonMessage;
use odds_demo::{Launcher, LauncherOptions};
use odds_testkit::{free_port, http_get};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: u32 = 4;
/// Rows on the page: one per (event, market).
const ROWS: usize = EVENTS as usize * odds_contracts::Market::ALL.len();

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r##"JSON.stringify({
  state: document.getElementById("connection-state").textContent,
  count: Number(document.getElementById("update-count").dataset.count),
  rows: [...document.querySelectorAll("#odds-body tr")].map(r => ({
    id: r.dataset.eventId,
    market: r.querySelector(".market").textContent,
    home: r.querySelector(".home-team").textContent,
    away: r.querySelector(".away-team").textContent,
    odds: [...r.querySelectorAll("td.odds")].map(td => td.dataset.value).join("/"),
    moved: r.querySelectorAll("td.up, td.down").length,
  })),
  freshness: (() => {
    const el = document.getElementById("freshness");
    return { state: el.className, text: el.textContent, ...el.dataset };
  })(),
})"##;

struct DevTools {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl DevTools {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(request)).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .unwrap()
                .unwrap();
            if let Message::Text(text) = msg {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    assert!(value.get("error").is_none(), "{method}: {value}");
                    return value["result"].clone();
                }
            }
        }
    }

    /// Has the page fetch `/v1/freshness` now, and waits until it showed the answer.
    async fn refresh_freshness(&mut self) {
        self.call(
            "Runtime.evaluate",
            json!({"expression": "refreshFreshness()", "awaitPromise": true}),
        )
        .await;
    }

    async fn read_page(&mut self) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": READ_PAGE, "returnByValue": true}),
            )
            .await;
        // Before the page's script has run, the expression throws: report that as "nothing yet".
        result["result"]["value"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odds_page_updates_live_in_chromium() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("Chromium is required: apt-get install chromium (make test installs it)");

    let mut launcher = Launcher::start(LauncherOptions::for_tests(40, EVENTS, 0).unwrap())
        .await
        .unwrap();
    let page_url = format!("http://{}/", launcher.service_addr);
    let profile = tempfile::tempdir().unwrap();
    let debug_port = free_port().unwrap();
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--window-size=1200,700",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--remote-debugging-port={debug_port}"))
        .arg(&page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Find the page's DevTools endpoint.
    let devtools_addr = ([127, 0, 0, 1], debug_port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ws_url = loop {
        let listing = tokio::time::timeout(
            Duration::from_secs(5),
            http_get(devtools_addr, "/json/list"),
        );
        if let Ok(Ok(r)) = listing.await {
            let pages: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let page = pages.as_array().into_iter().flatten().find(|p| {
                p["type"] == "page" && p["url"].as_str().is_some_and(|u| u.starts_with(&page_url))
            });
            if let Some(url) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break url.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Chromium's DevTools endpoint never came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut devtools = DevTools { ws, next_id: 0 };

    // Wait until every event is on screen, then watch it change.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let page = devtools.read_page().await;
        if page["rows"].as_array().map_or(0, Vec::len) == ROWS {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "page never showed {EVENTS} events in every market: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = devtools.read_page().await;

    assert_eq!(second["state"], "connected", "{second}");
    let rows = second["rows"].as_array().unwrap();
    // One row per (event, market), in that order.
    assert_eq!(rows[2]["id"], "MATCH_002");
    assert_eq!(rows[2]["market"], "1X2");
    assert_eq!(rows[3]["market"], "HT_1X2");
    assert_eq!(rows[2]["home"], "Liverpool");
    assert_eq!(rows[2]["away"], "Everton");
    assert!(
        second["count"].as_u64().unwrap() > first["count"].as_u64().unwrap(),
        "live updates arrived: {first} -> {second}"
    );
    let changed = rows
        .iter()
        .zip(first["rows"].as_array().unwrap())
        .filter(|(now, before)| now["odds"] != before["odds"])
        .count();
    assert!(changed > 0, "odds changed on screen: {first} -> {second}");
    assert!(
        rows.iter().any(|r| r["moved"].as_u64().unwrap_or(0) > 0),
        "moves are marked up/down: {second}"
    );

    page_shows_the_canarys_figures(&launcher, &mut devtools).await;

    let shot = devtools
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("odds-page.png"), png).unwrap();

    let _ = browser.kill().await;
    launcher.stop().await;
}

/// "No canary figures" before a canary runs; then, with the demo's canary publishing, the
/// very figures it wrote to Redis. The page is made to fetch between two reads of Redis that
/// agree, so what it shows must be that report (no race with the canary's next write).
async fn page_shows_the_canarys_figures(launcher: &Launcher, devtools: &mut DevTools) {
    devtools.refresh_freshness().await;
    let before = devtools.read_page().await;
    assert_eq!(before["freshness"]["state"], "none", "{before}");
    assert_eq!(
        before["freshness"]["text"],
        "no canary figures (no freshness canary published figures in the last 6 s)"
    );

    let canary = odds_demo::status::start_canary(
        launcher,
        Duration::from_secs(60),
        odds_demo::status::CANARY_PUBLISHER,
    )
    .unwrap();
    let redis = redis::Client::open(launcher.infra.redis_url.as_str()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = published(&mut redis).await;
        devtools.refresh_freshness().await;
        let page = devtools.read_page().await;
        let still = published(&mut redis).await;
        let measured = written
            .as_ref()
            .is_some_and(|r| r.frames > 0 && r.blind.is_none() && r.p99_ms.is_some());
        if let (true, Some(report)) = (measured && written == still, written.clone()) {
            let shown = &page["freshness"];
            assert_eq!(report.publisher, "odds-demo");
            assert_eq!(shown["state"], "measured", "{page}");
            assert_eq!(
                shown["measuredAt"],
                serde_json::to_value(&report).unwrap()["measuredAt"],
                "{page}"
            );
            let p99 = report.p99_ms.unwrap();
            assert_eq!(shown["p99Ms"], p99.to_string(), "{page}");
            assert_eq!(
                shown["longestFreezeMs"],
                report.longest_freeze_ms.to_string()
            );
            assert_eq!(shown["frames"], report.frames.to_string());
            // Seconds with two decimals, rounded half up as the page does.
            let hundredths = (report.longest_freeze_ms + 5) / 10;
            assert_eq!(
                shown["text"],
                format!(
                    "canary p99 {p99} ms · longest freeze {}.{:02} s",
                    hundredths / 100,
                    hundredths % 100
                ),
                "{page}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the canary's figures: Redis {written:?}, page {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(canary.publications().map(|p| p.failed()), Some(0));
    canary.stop().await;
}

/// The report the canary last wrote to the pipeline's Redis.
async fn published(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Option<odds_contracts::freshness::FreshnessReport> {
    let text: Option<String> = redis::cmd("GET")
        .arg(odds_contracts::names::REDIS_FRESHNESS_KEY)
        .query_async(redis)
        .await
        .unwrap();
    text.and_then(|t| odds_contracts::freshness::FreshnessReport::parse(t.as_bytes()))
}
