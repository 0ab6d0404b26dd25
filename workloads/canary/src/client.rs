//! The canary's connection: a `/ws/odds` client that never gives up.
//!
//! It connects to the URL it is given (in a cluster, the odds-service Service's name, so it
//! follows the Service to whichever replica is ready, as clients do), subscribes to its sample,
//! and feeds every frame and every `status` to its [`Recorder`]. A connection that closes, or
//! that says nothing for [`SILENCE_LIMIT`] although it is pinged, is counted as blindness and
//! replaced at once; failed attempts are retried with a backoff capped at [`MAX_BACKOFF`].
//! A subscription refused (no odds known yet, the store unavailable) is asked for again after
//! [`RESUBSCRIBE_AFTER`].

use crate::window::{Blindness, FrameKind, Recorder, Summary};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::ws::{ClientMessage, ServerMessage};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Longest a connection attempt (TCP and the WebSocket handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A quiet connection is pinged this often (the server answers `pong`).
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// A connection that sent nothing for this long despite pings is dead (a partition).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait between failed connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How soon a refused subscription is asked for again.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// What a canary measures, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryConfig {
    /// `ws://…/ws/odds` of odds-service.
    pub url: String,
    /// Event ids to follow; `*` follows every event.
    pub sample: Vec<String>,
    /// The window its summaries cover.
    pub window: Duration,
}

/// A running canary. Dropping it stops it too.
#[derive(Debug)]
pub struct Canary {
    config: CanaryConfig,
    recorder: Arc<Mutex<Recorder>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Canary {
    /// Starts measuring (on the current tokio runtime).
    pub fn start(config: CanaryConfig) -> Canary {
        let recorder = Arc::new(Mutex::new(Recorder::new(config.window)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(config.clone(), recorder.clone(), stop.clone()));
        Canary {
            config,
            recorder,
            stop,
            task: Some(task),
        }
    }

    pub fn config(&self) -> &CanaryConfig {
        &self.config
    }

    /// The figures of the window ending now.
    pub fn summary(&self) -> Summary {
        lock(&self.recorder).summary(Utc::now())
    }

    /// Aged frames since the start, and how many were older than `threshold`.
    pub fn frames_over(&self, threshold: Duration) -> (u64, u64) {
        lock(&self.recorder).frames_over(threshold)
    }

    /// Stops it and waits until its connection is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The recorder, even if a panic poisoned its lock (its state is still consistent: every
/// update of it is a single method call).
fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects, follows, and reconnects until `stop`.
async fn watch(config: CanaryConfig, recorder: Arc<Mutex<Recorder>>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(config.url.as_str()),
        );
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            attempt = attempt => attempt,
        };
        let why = match connected {
            Ok(Ok((socket, _))) => {
                backoff = Duration::from_millis(100);
                let ended = follow(socket, &config.sample, &recorder, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                tracing::info!(url = %config.url, why = %ended, "canary connection ended; reconnecting");
                lock(&recorder).lost_sight(Utc::now(), Blindness::Disconnected(ended));
                continue;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        tracing::debug!(url = %config.url, %why, "canary cannot connect");
        lock(&recorder).lost_sight(Utc::now(), Blindness::Unreachable(why));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Follows one connection; returns why it ended.
async fn follow(
    socket: Socket,
    sample: &[String],
    recorder: &Mutex<Recorder>,
    stop: &CancellationToken,
) -> String {
    let (mut sink, mut stream) = socket.split();
    let mut pending: Vec<String> = sample.to_vec();
    let mut subscribed = 0usize;
    let mut resubscribe = tokio::time::interval(RESUBSCRIBE_AFTER);
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return "stopped".into();
            }
            _ = resubscribe.tick() => {
                for event_id in std::mem::take(&mut pending) {
                    let subscribe = ClientMessage::Subscribe {
                        event_id,
                        conflate_ms: None,
                    };
                    let Ok(text) = serde_json::to_string(&subscribe) else { continue };
                    if let Err(error) = sink.send(Message::text(text)).await {
                        return format!("sending a subscription: {error}");
                    }
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() >= SILENCE_LIMIT {
                    return format!("nothing received for {SILENCE_LIMIT:?}");
                }
                if let Err(error) = sink.send(Message::text(r#"{"type":"ping"}"#)).await {
                    return format!("sending a ping: {error}");
                }
            }
            message = stream.next() => {
                heard = tokio::time::Instant::now();
                let text = match message {
                    None => return "closed by odds-service".into(),
                    Some(Err(error)) => return error.to_string(),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map_or_else(
                            || "closed by odds-service".into(),
                            |f| format!("closed by odds-service: {} {}", f.code, f.reason),
                        );
                    }
                    Some(Ok(_)) => continue,
                };
                let received = Utc::now();
                let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else {
                    tracing::debug!(%text, "canary ignores a frame it cannot read");
                    continue;
                };
                let mut recorder = lock(recorder);
                match message {
                    ServerMessage::Odds { data } => recorder.frame(FrameKind::Odds, &data, received),
                    ServerMessage::Snapshot { data } => {
                        recorder.frame(FrameKind::Snapshot, &data, received);
                    }
                    ServerMessage::Subscribed { .. } => {
                        subscribed += 1;
                        // Sight returns once every subscription of the sample is in place,
                        // unless the server said live updates are stopped.
                        if subscribed >= sample.len() && !is_not_live(&recorder) {
                            recorder.regained_sight();
                        }
                    }
                    ServerMessage::Status { live: true, .. } => recorder.regained_sight(),
                    ServerMessage::Status { live: false, reason } => recorder.lost_sight(
                        received,
                        Blindness::NotLive(reason.unwrap_or_else(|| "no reason given".into())),
                    ),
                    ServerMessage::Error { event_id: Some(event_id), message, .. } => {
                        tracing::debug!(%event_id, %message, "canary subscription refused; asking again");
                        pending.push(event_id);
                    }
                    ServerMessage::Error { message, .. } => {
                        tracing::debug!(%message, "odds-service answered the canary with an error");
                    }
                    ServerMessage::Pong | ServerMessage::Unsubscribed { .. } => {}
                }
            }
        }
    }
}

fn is_not_live(recorder: &Recorder) -> bool {
    matches!(
        recorder.sight(),
        crate::window::Sight::Blind {
            why: Blindness::NotLive(_),
            ..
        }
    )
}
