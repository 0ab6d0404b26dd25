//! `/ws/odds`: one task per connection that handles client messages, writes queued updates,
//! pings, and closes with a reason, beside a small reader task that only reads the socket.
//!
//! The reader task exists because the connection task wakes once per delivery, and polling
//! the read side on every wake cost a read attempt each time; everything else stays in the
//! one connection task, which keeps the per-client footprint small. No store read holds the
//! connection: subscribe and unsubscribe requests are answered in order, one at a time, and
//! the snapshot read a subscribe waits for is a future the loop polls beside everything else
//! ([`requests`]), so pings are answered and live updates written meanwhile. Subscribing
//! registers with the hub *before* reading the snapshot, so no update can fall in the gap, and
//! the queue keeps each market's snapshot first ([`crate::queue`]). Writes are bounded by a
//! timeout: a client that stays stuck is closed as slow. When live updates stop or resume
//! (see [`crate::feed::Feed`]) every connection sends a `status` message, so no client waits
//! on a silent socket without knowing why.

mod requests;

use crate::feed::{Feed, FeedStatus};
use crate::hub::{ClientQueue, Hub, Pending};
use crate::metrics::Metrics;
use crate::store::OddsStore;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::ws::{ClientMessage, ErrorCode, ServerMessage};
use requests::{Paging, Read, Request};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// The connection's write half; its read half runs in a reader task.
type ClientSink = SplitSink<WebSocket, Message>;
/// What the reader task passes on: client frames, then a read error or the end (`None`).
type Incoming = mpsc::Receiver<Result<Message, axum::Error>>;
/// Client frames read ahead of the connection loop; a client that sends faster waits.
const INCOMING_QUEUE: usize = 8;

/// Frames written per flush: amortises syscalls without holding the queue lock long.
const BATCH: usize = 64;
/// Subscribe and unsubscribe requests waiting for the one in progress; beyond them the client's
/// frames are not read until one is answered.
const MAX_WAITING_REQUESTS: usize = 16;

/// What every connection shares.
pub struct WsContext {
    pub hub: Arc<Hub>,
    pub store: Arc<OddsStore>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub feed: Arc<Feed>,
    pub max_subscriptions: usize,
    pub max_message_bytes: usize,
    pub max_pending_events: usize,
    pub slow_client_timeout: Duration,
    pub ping_interval: Duration,
    /// Least time between two writes of queued updates to one client (0 = write at once).
    pub write_coalesce: Duration,
}

/// Why the server ends a connection.
enum Exit {
    ClientGone,
    Close(u16, &'static str),
}

struct Connection {
    ctx: Arc<WsContext>,
    id: u64,
    queue: Arc<ClientQueue>,
    events: HashSet<Arc<str>>,
    all_events: bool,
    last_seen: Instant,
    /// What the client was last told about the feed (`None`: live).
    told_down: Option<String>,
    /// Subscribe and unsubscribe requests not yet started, in the order they came.
    requests: VecDeque<Request>,
    /// The store read the request in progress waits for. Only ever used through `&mut self`
    /// (`get_mut`, never locked); the mutex makes the connection `Sync`, which a boxed future
    /// is not, as its `&self` methods need across their awaits.
    read: std::sync::Mutex<Option<Read>>,
    /// The `*` snapshot being paged out.
    paging: Option<Paging>,
}

/// Runs one connection to its end. `permit` holds the connection's slot in the limit.
pub async fn serve_connection(
    socket: WebSocket,
    ctx: Arc<WsContext>,
    permit: OwnedSemaphorePermit,
) {
    ctx.metrics.ws_connections.inc();
    let mut conn = Connection {
        id: ctx.hub.client_id(),
        queue: Arc::new(ClientQueue::new(ctx.max_pending_events)),
        events: HashSet::new(),
        all_events: false,
        last_seen: Instant::now(),
        told_down: None,
        requests: VecDeque::new(),
        read: std::sync::Mutex::new(None),
        paging: None,
        ctx,
    };
    // The reader task (see the module's note): tungstenite zero-fills its read buffer before
    // every read attempt, which a poll of the read side on every delivery wake paid for.
    let (mut socket, mut stream) = socket.split();
    let (forward, mut incoming) = mpsc::channel(INCOMING_QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let end = message.is_err();
            if forward.send(message).await.is_err() || end {
                break;
            }
        }
    });
    let exit = conn.run(&mut socket, &mut incoming).await;
    reader.abort();
    if let Exit::Close(code, reason) = exit {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        // The peer may be the reason we close (stuck): never wait long for it.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
    conn.cleanup();
    drop(permit);
}

impl Connection {
    async fn run(&mut self, socket: &mut ClientSink, incoming: &mut Incoming) -> Exit {
        let mut ping = tokio::time::interval(self.ctx.ping_interval);
        ping.reset();
        let mut batch = Vec::with_capacity(BATCH);
        let mut last_write = Instant::now();
        let mut feed = self.ctx.feed.watch();
        // A client that connects while updates are stopped is told at once; a live feed is
        // the normal case and says nothing.
        let status = feed.borrow_and_update().clone();
        if !status.is_live() {
            if let Some(exit) = self.status(socket, &status).await {
                return exit;
            }
        }
        // The loop wakes once per delivery: the futures that rarely fire (shutdown, a feed
        // change) live across iterations instead of registering a waker on every wake.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut feed_changed = Box::pin(next_change(feed));
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    return Exit::Close(close_code::AWAY, "server shutting down");
                }
                (changed, mut feed) = &mut feed_changed => {
                    if changed.is_err() {
                        // The feed lives as long as the service: only a shutdown ends it.
                        return Exit::Close(close_code::AWAY, "server shutting down");
                    }
                    let status = feed.borrow_and_update().clone();
                    feed_changed = Box::pin(next_change(feed));
                    if let Some(exit) = self.status(socket, &status).await {
                        return exit;
                    }
                }
                _ = self.queue.notified() => {
                    if !self.ctx.write_coalesce.is_zero() {
                        // Let a few more updates gather so one flush (syscall) carries several.
                        let since = last_write.elapsed();
                        if since < self.ctx.write_coalesce {
                            tokio::time::sleep(self.ctx.write_coalesce - since).await;
                        }
                        last_write = Instant::now();
                    }
                    if let Some(exit) = self.write_pending(socket, &mut batch).await {
                        return exit;
                    }
                }
                done = requests::poll(&mut self.read) => {
                    if let Some(exit) = self.on_read(socket, done).await {
                        return exit;
                    }
                }
                incoming = incoming.recv(), if self.requests.len() < MAX_WAITING_REQUESTS => {
                    self.last_seen = Instant::now();
                    let exit = match incoming {
                        None => Some(Exit::ClientGone),
                        Some(Err(error)) => Some(read_error_exit(error)),
                        Some(Ok(message)) => self.on_message(socket, message).await,
                    };
                    if let Some(exit) = exit {
                        return exit;
                    }
                }
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > self.ctx.ping_interval * 3 {
                        return Exit::Close(close_code::POLICY, "heartbeat timeout");
                    }
                    if let Some(exit) = self.send(socket, Message::Ping(bytes::Bytes::new())).await {
                        return exit;
                    }
                }
            }
            // Whatever happened may let the next request or snapshot page start.
            if let Some(exit) = self.advance(socket).await {
                return exit;
            }
        }
    }

    /// Writes what the queue holds, one flush per batch, bounded by the slow-client timeout.
    async fn write_pending(
        &mut self,
        socket: &mut ClientSink,
        batch: &mut Vec<Pending>,
    ) -> Option<Exit> {
        batch.clear();
        if self.queue.drain(BATCH, batch) {
            self.ctx.metrics.ws_slow_client_closes.inc();
            return Some(Exit::Close(
                close_code::POLICY,
                "slow consumer: too far behind",
            ));
        }
        if batch.is_empty() {
            return None;
        }
        let metrics = &self.ctx.metrics;
        let write = async {
            for pending in batch.iter() {
                socket
                    .feed(Message::Text(pending.update.frame(pending.as_snapshot)))
                    .await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(self.ctx.slow_client_timeout, write).await {
            Ok(Ok(())) => {
                for pending in batch.drain(..) {
                    if pending.as_snapshot {
                        metrics.ws_snapshots_sent.inc();
                    } else {
                        metrics.ws_odds_sent.inc();
                        metrics
                            .ws_hop_to_client_write
                            .observe(pending.update.received_at.elapsed().as_secs_f64());
                    }
                }
                None
            }
            Ok(Err(_)) => Some(Exit::ClientGone),
            Err(_) => {
                metrics.ws_slow_client_closes.inc();
                Some(Exit::Close(
                    close_code::POLICY,
                    "slow consumer: write timed out",
                ))
            }
        }
    }

    async fn send(&self, socket: &mut ClientSink, message: Message) -> Option<Exit> {
        match tokio::time::timeout(self.ctx.slow_client_timeout, socket.send(message)).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::ClientGone),
            Err(_) => {
                self.ctx.metrics.ws_slow_client_closes.inc();
                Some(Exit::Close(
                    close_code::POLICY,
                    "slow consumer: write timed out",
                ))
            }
        }
    }

    async fn reply(&self, socket: &mut ClientSink, message: ServerMessage) -> Option<Exit> {
        let kind = match &message {
            ServerMessage::Error { .. } => "error",
            ServerMessage::Pong => "pong",
            ServerMessage::Status { .. } => "status",
            _ => "control",
        };
        self.ctx
            .metrics
            .ws_messages_sent
            .with_label_values(&[kind])
            .inc();
        self.send(socket, Message::Text(Utf8Bytes::from(message.to_json())))
            .await
    }

    /// Tells the client when the feed's reason to be down changed (not when only readiness
    /// or cache trust did).
    async fn status(&mut self, socket: &mut ClientSink, status: &FeedStatus) -> Option<Exit> {
        if status.down == self.told_down {
            return None;
        }
        self.told_down = status.down.clone();
        self.reply(socket, ServerMessage::status(status.down.as_deref()))
            .await
    }

    async fn error(
        &self,
        socket: &mut ClientSink,
        code: ErrorCode,
        text: String,
        event: Option<&str>,
    ) -> Option<Exit> {
        self.reply(socket, ServerMessage::error(code, text, event))
            .await
    }

    async fn on_message(&mut self, socket: &mut ClientSink, message: Message) -> Option<Exit> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let text = "binary frames are not supported; send JSON text".to_owned();
                return self
                    .error(socket, ErrorCode::BinaryNotSupported, text, None)
                    .await;
            }
            Message::Close(_) => return Some(Exit::ClientGone),
            Message::Ping(_) | Message::Pong(_) => return None,
        };
        if text.len() > self.ctx.max_message_bytes {
            let text = format!(
                "message of {} bytes exceeds the limit of {}",
                text.len(),
                self.ctx.max_message_bytes
            );
            return self
                .error(socket, ErrorCode::MessageTooLarge, text, None)
                .await;
        }
        match ClientMessage::parse(text.as_str()) {
            Err(e) => self.error(socket, e.code, e.message, None).await,
            Ok(ClientMessage::Ping) => self.reply(socket, ServerMessage::Pong).await,
            Ok(ClientMessage::Subscribe { event_id }) => {
                self.requests.push_back(Request::Subscribe(event_id));
                None
            }
            Ok(ClientMessage::Unsubscribe { event_id }) => {
                self.requests.push_back(Request::Unsubscribe(event_id));
                None
            }
        }
    }

    fn cleanup(&mut self) {
        for event in self.events.drain() {
            self.ctx.hub.unsubscribe(self.id, &event);
            self.ctx.metrics.ws_subscriptions.dec();
        }
        if std::mem::take(&mut self.all_events) {
            self.ctx.hub.unsubscribe_all(self.id);
            self.ctx.metrics.ws_subscriptions.dec();
        }
        self.ctx.metrics.ws_connections.dec();
    }
}

/// Waits for the feed's next change, handing the receiver back so the caller can read it
/// and wait again.
async fn next_change(
    mut feed: watch::Receiver<FeedStatus>,
) -> (
    Result<(), watch::error::RecvError>,
    watch::Receiver<FeedStatus>,
) {
    let changed = feed.changed().await;
    (changed, feed)
}

/// A read error ends the connection; a frame over the hard size limit gets close code 1009.
fn read_error_exit(error: axum::Error) -> Exit {
    let inner = error.into_inner();
    match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
            Exit::Close(close_code::SIZE, "message too big")
        }
        _ => Exit::ClientGone,
    }
}
