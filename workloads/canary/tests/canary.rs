//! The canary against a scripted `/ws/odds` server: it subscribes to its sample, measures ages
//! from `ingested_at`, reconnects and subscribes again when the server goes away, counts the
//! gap as blindness (never as fresh), and says when it cannot connect at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use odds_canary::{Blindness, Canary, CanaryConfig, Sight, Summary};
use odds_contracts::ws::{ClientMessage, ServerMessage};
use odds_contracts::OddsUpdate;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(60);

fn update(version: u64, age: chrono::Duration) -> OddsUpdate {
    let now = Utc::now();
    OddsUpdate {
        event_id: "E1".into(),
        home_team: "A".into(),
        away_team: "B".into(),
        market: "1X2".into(),
        odds: odds_contracts::Odds {
            home: 2.0,
            draw: 3.0,
            away: 4.0,
        },
        updated_at: now - age,
        source: "test".into(),
        version,
        ingested_at: None,
    }
    .accepted_at(now - age)
}

type Server = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts one connection and waits for its subscription, which must be `expected`.
async fn accept_subscriber(listener: &TcpListener, expected: &str) -> Server {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("the canary closed before subscribing");
        };
        if let Ok(ClientMessage::Subscribe { event_id, .. }) = ClientMessage::parse(&text) {
            assert_eq!(event_id, expected);
            let subscribed = ServerMessage::Subscribed { event_id };
            ws.send(Message::text(subscribed.to_json())).await.unwrap();
            return ws;
        }
    }
}

async fn send(ws: &mut Server, message: ServerMessage) {
    ws.send(Message::text(message.to_json())).await.unwrap();
}

/// A canary over `window` following `sample` on a local server not started yet: the listener
/// it will connect to, and the canary.
async fn canary_for(sample: &str, window: Duration) -> (TcpListener, Canary) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let canary = Canary::start(CanaryConfig {
        url: format!("ws://{addr}/ws/odds"),
        sample: vec![sample.into()],
        window,
    });
    (listener, canary)
}

/// Polls the canary's summary until `done` holds.
async fn until(canary: &Canary, what: &str, done: impl Fn(&Summary) -> bool) -> Summary {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let summary = canary.summary();
        if done(&summary) {
            return summary;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn measures_ages_and_sees_the_reconnect_gap_as_a_freeze() {
    let (listener, canary) = canary_for("*", Duration::from_secs(300)).await;
    let mut first = accept_subscriber(&listener, "*").await;
    send(
        &mut first,
        ServerMessage::Snapshot {
            data: update(1, chrono::Duration::seconds(30)),
        },
    )
    .await;
    send(
        &mut first,
        ServerMessage::Odds {
            data: update(2, chrono::Duration::milliseconds(40)),
        },
    )
    .await;
    let seen = until(&canary, "one age sample", |s| s.frames_sampled == 1).await;
    assert_eq!(seen.sight, Sight::Watching);
    // The age is at least the 40 ms the update was old when sent; the snapshot's 30 s is
    // not an age.
    let p99 = seen.p99_ms.unwrap();
    assert!((40..30_000).contains(&p99), "p99 {p99} ms");

    // odds-service goes away: the canary is blind and says so, with a freeze in progress.
    drop(first);
    let blind = until(&canary, "blind after the close", |s| {
        matches!(s.sight, Sight::Blind { .. })
    })
    .await;
    assert!(matches!(
        blind.sight,
        Sight::Blind {
            why: Blindness::Disconnected(_),
            ..
        }
    ));
    // It comes back and subscribes again; the snapshot shows a version it missed.
    let mut second = accept_subscriber(&listener, "*").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(
        &mut second,
        ServerMessage::Snapshot {
            data: update(5, chrono::Duration::milliseconds(100)),
        },
    )
    .await;
    // Frozen at least while the canary was away (the 300 ms before the snapshot): once it
    // watches again only a frame can show that, and names the market.
    let back = until(&canary, "the missed version ends the freeze", |s| {
        s.sight == Sight::Watching && s.longest_freeze >= Duration::from_millis(300)
    })
    .await;
    assert_eq!(
        back.longest_freeze_key,
        Some(("E1".to_owned(), "1X2".to_owned()))
    );
    canary.stop().await;
}

#[tokio::test]
async fn a_refused_connection_is_reported_as_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let canary = Canary::start(CanaryConfig {
        url: format!("ws://{addr}/ws/odds"),
        sample: vec!["*".into()],
        window: Duration::from_secs(60),
    });
    let summary = until(&canary, "unreachable", |s| {
        matches!(
            s.sight,
            Sight::Blind {
                why: Blindness::Unreachable(_),
                ..
            }
        )
    })
    .await;
    assert_eq!(summary.frames_sampled, 0);
    canary.stop().await;
}

#[tokio::test]
async fn a_stopped_pipeline_is_blindness_until_the_server_says_live_again() {
    let (listener, canary) = canary_for("E1", Duration::from_secs(60)).await;
    let mut ws = accept_subscriber(&listener, "E1").await;
    until(&canary, "watching", |s| s.sight == Sight::Watching).await;
    send(
        &mut ws,
        ServerMessage::status(Some("no processor heartbeat")),
    )
    .await;
    until(&canary, "not live", |s| {
        matches!(
            &s.sight,
            Sight::Blind { why: Blindness::NotLive(why), .. } if why == "no processor heartbeat"
        )
    })
    .await;
    send(&mut ws, ServerMessage::status(None)).await;
    until(&canary, "live again", |s| s.sight == Sight::Watching).await;
    canary.stop().await;
}
