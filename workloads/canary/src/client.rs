//! The canary's connection: a `/ws/odds` client that never gives up.
//!
//! It connects to the address it is given, subscribes to its sample, and feeds every frame
//! and every `status` to its [`Recorder`]. In a cluster that address is the odds-service
//! Service's name, so it follows the Service to whichever replica is ready, as clients do;
//! where the addresses themselves move (the local run gives a restarted replica a new port),
//! it is given [`Endpoints`] instead, asked again at every connection attempt. A connection
//! that closes, or that says nothing for [`SILENCE_LIMIT`] although it is pinged, is counted
//! as blindness and replaced at once; failed attempts are retried with a backoff capped at
//! [`MAX_BACKOFF`]. A subscription refused (no odds known yet, the store unavailable) is
//! asked for again after [`RESUBSCRIBE_AFTER`].

use crate::publish::{publish_every, Publications};
use crate::window::{Blindness, FrameKind, Recorder, Sight, Summary};
use chrono::{DateTime, Utc};
use futures_util::stream::SplitSink;
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

/// The `ws://…/ws/odds` URLs odds-service can be reached at now, asked at every connection
/// attempt (attempts go round them): what a Service's endpoints are to a client.
#[derive(Clone)]
pub struct Endpoints(Arc<dyn Fn() -> Vec<String> + Send + Sync>);

impl Endpoints {
    /// Always `url` (a Service's stable name).
    pub fn fixed(url: String) -> Endpoints {
        Endpoints(Arc::new(move || vec![url.clone()]))
    }

    /// Whatever `urls` answers when asked.
    pub fn resolved_by(urls: impl Fn() -> Vec<String> + Send + Sync + 'static) -> Endpoints {
        Endpoints(Arc::new(urls))
    }

    fn pick(&self, attempt: usize) -> Option<String> {
        let urls = (self.0)();
        (!urls.is_empty()).then(|| urls[attempt % urls.len()].clone())
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Endpoints").field(&(self.0)()).finish()
    }
}

/// A running canary. Dropping it stops it too.
#[derive(Debug)]
pub struct Canary {
    config: CanaryConfig,
    recorder: Arc<Mutex<Recorder>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    publications: Option<Arc<Publications>>,
}

/// Why a canary cannot publish its figures.
#[derive(Debug, thiserror::Error)]
#[error("the Redis URL to publish the canary's figures to is not valid: {0}")]
pub struct BadRedisUrl(#[source] redis::RedisError);

impl Canary {
    /// Starts measuring at `config.url` (on the current tokio runtime).
    pub fn start(config: CanaryConfig) -> Canary {
        let endpoints = Endpoints::fixed(config.url.clone());
        Canary::start_following(config, endpoints)
    }

    /// Starts measuring at whichever of `endpoints` answers (`config.url` is then only a
    /// name for it).
    pub fn start_following(config: CanaryConfig, endpoints: Endpoints) -> Canary {
        let recorder = Arc::new(Mutex::new(Recorder::new(config.window)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            config.clone(),
            endpoints,
            recorder.clone(),
            stop.clone(),
        ));
        Canary {
            config,
            recorder,
            stop,
            task: Some(task),
            publications: None,
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

    /// Also writes its figures to the Redis at `redis_url` from now on, for the odds page
    /// (see [`crate::publish`]), naming `publisher` as their source; until it stops.
    pub fn publish_to(&mut self, redis_url: &str, publisher: &str) -> Result<(), BadRedisUrl> {
        let client = redis::Client::open(redis_url).map_err(BadRedisUrl)?;
        let publications = Arc::new(Publications::default());
        let recorder = self.recorder.clone();
        tokio::spawn(publish_every(
            client,
            publisher.to_string(),
            move || lock(&recorder).summary(Utc::now()),
            publications.clone(),
            self.stop.clone(),
        ));
        self.publications = Some(publications);
        Ok(())
    }

    /// How its publishing fares; `None` when it does not publish.
    pub fn publications(&self) -> Option<&Publications> {
        self.publications.as_deref()
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, follows, and reconnects until `stop`.
async fn watch(
    config: CanaryConfig,
    endpoints: Endpoints,
    recorder: Arc<Mutex<Recorder>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let url = endpoints.pick(attempt);
        attempt = attempt.wrapping_add(1);
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = connect(url.as_deref()) => connected,
        };
        match connected {
            Ok(socket) => {
                backoff = Duration::from_millis(100);
                let ended = follow(socket, &config.sample, &recorder, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                tracing::info!(url = ?url, why = %ended, "canary connection ended; reconnecting");
                lock(&recorder).lost_sight(Utc::now(), Blindness::Disconnected(ended));
                continue;
            }
            Err(why) => {
                tracing::debug!(url = ?url, %why, "canary cannot connect");
                lock(&recorder).lost_sight(Utc::now(), Blindness::Unreachable(why));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection attempt to `url`; why it failed otherwise.
async fn connect(url: Option<&str>) -> Result<Socket, String> {
    let Some(url) = url else {
        return Err("no odds-service address to connect to".into());
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// One connection's state: where to send, and what is still to subscribe.
struct Connection<'a> {
    sink: SplitSink<Socket, Message>,
    sample: &'a [String],
    /// Subscriptions to send (at first the whole sample; later the refused ones).
    pending: Vec<String>,
    /// Subscriptions confirmed.
    subscribed: usize,
    recorder: &'a Mutex<Recorder>,
}

/// Follows one connection; returns why it ended.
async fn follow(
    socket: Socket,
    sample: &[String],
    recorder: &Mutex<Recorder>,
    stop: &CancellationToken,
) -> String {
    let (sink, mut stream) = socket.split();
    let mut connection = Connection {
        sink,
        sample,
        pending: sample.to_vec(),
        subscribed: 0,
        recorder,
    };
    let mut resubscribe = tokio::time::interval(RESUBSCRIBE_AFTER);
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    loop {
        let step = tokio::select! {
            () = stop.cancelled() => {
                let _ = connection.sink.send(Message::Close(None)).await;
                return "stopped".into();
            }
            _ = resubscribe.tick() => connection.subscribe_pending().await,
            _ = ping.tick() => connection.ping_unless_silent(heard.elapsed()).await,
            message = stream.next() => {
                heard = tokio::time::Instant::now();
                read(message).map(|read| {
                    if let Some((message, received)) = read {
                        connection.record(message, received);
                    }
                })
            }
        };
        if let Err(ended) = step {
            return ended;
        }
    }
}

/// The server message of a received WebSocket message and when it arrived; `None` for one
/// that carries none (a control frame, a text the canary cannot read); why the connection
/// ended when it did.
fn read(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<(ServerMessage, DateTime<Utc>)>, String> {
    let text = match message {
        None => return Err("closed by odds-service".into()),
        Some(Err(error)) => return Err(error.to_string()),
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(frame))) => {
            return Err(frame.map_or_else(
                || "closed by odds-service".into(),
                |f| format!("closed by odds-service: {} {}", f.code, f.reason),
            ));
        }
        Some(Ok(_)) => return Ok(None),
    };
    let received = Utc::now();
    match serde_json::from_str::<ServerMessage>(&text) {
        Ok(message) => Ok(Some((message, received))),
        Err(_) => {
            tracing::debug!(%text, "canary ignores a frame it cannot read");
            Ok(None)
        }
    }
}

impl Connection<'_> {
    /// Sends the subscriptions still to send.
    async fn subscribe_pending(&mut self) -> Result<(), String> {
        for event_id in std::mem::take(&mut self.pending) {
            let subscribe = ClientMessage::Subscribe {
                event_id,
                conflate_ms: None,
            };
            let Ok(text) = serde_json::to_string(&subscribe) else {
                continue;
            };
            self.sink
                .send(Message::text(text))
                .await
                .map_err(|error| format!("sending a subscription: {error}"))?;
        }
        Ok(())
    }

    /// Pings, unless nothing came for [`SILENCE_LIMIT`]: then the connection is dead.
    async fn ping_unless_silent(&mut self, silent_for: Duration) -> Result<(), String> {
        if silent_for >= SILENCE_LIMIT {
            return Err(format!("nothing received for {SILENCE_LIMIT:?}"));
        }
        self.sink
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .map_err(|error| format!("sending a ping: {error}"))
    }

    /// Feeds one server message to the recorder.
    fn record(&mut self, message: ServerMessage, received: DateTime<Utc>) {
        let mut recorder = lock(self.recorder);
        match message {
            ServerMessage::Odds { data } => recorder.frame(FrameKind::Odds, &data, received),
            ServerMessage::Snapshot { data } => {
                recorder.frame(FrameKind::Snapshot, &data, received);
            }
            ServerMessage::Subscribed { .. } => {
                self.subscribed += 1;
                // Sight returns once every subscription of the sample is in place, unless
                // the server said live updates are stopped.
                if self.subscribed >= self.sample.len() && !is_not_live(&recorder) {
                    recorder.regained_sight();
                }
            }
            ServerMessage::Status { live: true, .. } => recorder.regained_sight(),
            ServerMessage::Status {
                live: false,
                reason,
            } => recorder.lost_sight(
                received,
                Blindness::NotLive(reason.unwrap_or_else(|| "no reason given".into())),
            ),
            ServerMessage::Error {
                event_id: Some(event_id),
                message,
                ..
            } => {
                tracing::debug!(%event_id, %message, "canary subscription refused; asking again");
                self.pending.push(event_id);
            }
            ServerMessage::Error { message, .. } => {
                tracing::debug!(%message, "odds-service answered the canary with an error");
            }
            ServerMessage::Pong | ServerMessage::Unsubscribed { .. } => {}
        }
    }
}

fn is_not_live(recorder: &Recorder) -> bool {
    matches!(
        recorder.sight(),
        Sight::Blind {
            why: Blindness::NotLive(_),
            ..
        }
    )
}
