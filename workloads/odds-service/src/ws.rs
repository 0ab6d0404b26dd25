//! `/ws/odds`: one task per connection that handles client messages, writes queued updates,
//! pings, and closes with a reason, beside a small reader task that only reads the socket.
//!
//! The reader task exists because the connection task wakes once per delivery, and polling
//! the read side on every wake cost a read attempt each time; everything else stays in the
//! one connection task, which keeps the per-client footprint small. Subscribing registers
//! with the hub *before* reading the snapshot and nothing is written between the two, so no
//! update can fall in the gap and the snapshot always comes first. Writes are bounded by a
//! timeout: a client that stays stuck is closed as slow. When live updates stop or resume
//! (see [`crate::pubsub::Feed`]) every connection sends a `status` message, so no client
//! waits on a silent socket without knowing why.

use crate::hub::{ClientQueue, Hub, Pending};
use crate::metrics::Metrics;
use crate::pubsub::{Feed, FeedStatus};
use crate::store::{event_count, OddsStore};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::ws::{ClientMessage, ErrorCode, ServerMessage, ALL_EVENTS};
use odds_contracts::Market;
use std::collections::HashSet;
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
/// Events per page of an all-events (`*`) snapshot, at most the client's queue limit.
const SNAPSHOT_PAGE: usize = 500;

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
                incoming = incoming.recv() => {
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

    async fn status(&self, socket: &mut ClientSink, status: &FeedStatus) -> Option<Exit> {
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
            Ok(ClientMessage::Subscribe { event_id }) => self.subscribe(socket, event_id).await,
            Ok(ClientMessage::Unsubscribe { event_id }) => self.unsubscribe(socket, event_id).await,
        }
    }

    fn subscription_count(&self) -> usize {
        self.events.len() + usize::from(self.all_events)
    }

    async fn subscribe(&mut self, socket: &mut ClientSink, event_id: String) -> Option<Exit> {
        let already = if event_id == ALL_EVENTS {
            self.all_events
        } else {
            self.events.contains(event_id.as_str())
        };
        if !already && self.subscription_count() >= self.ctx.max_subscriptions {
            let text = format!(
                "at most {} subscriptions per connection",
                self.ctx.max_subscriptions
            );
            return self
                .error(
                    socket,
                    ErrorCode::TooManySubscriptions,
                    text,
                    Some(&event_id),
                )
                .await;
        }
        if event_id == ALL_EVENTS {
            return self.subscribe_all(socket).await;
        }
        if let Err(e) = odds_contracts::validate_event_id(&event_id) {
            return self
                .error(
                    socket,
                    ErrorCode::InvalidEventId,
                    e.to_string(),
                    Some(&event_id),
                )
                .await;
        }
        let event: Arc<str> = Arc::from(event_id.as_str());
        // Register first: an update published while we read the snapshot is queued, not lost.
        self.ctx.hub.subscribe(self.id, &self.queue, event.clone());
        let snapshot = self.ctx.store.markets(&event_id).await;
        let (code, text) = match snapshot {
            Ok(Some((markets, _))) => {
                if self.events.insert(event) {
                    self.ctx.metrics.ws_subscriptions.inc();
                }
                let reply = ServerMessage::Subscribed { event_id };
                if let Some(exit) = self.reply(socket, reply).await {
                    return Some(exit);
                }
                for update in &markets {
                    self.queue
                        .push(&crate::hub::EncodedUpdate::new(update), true);
                }
                return None;
            }
            Ok(None) => (
                ErrorCode::UnknownEvent,
                format!("no odds known for event {event_id:?}"),
            ),
            Err(e) => (ErrorCode::Unavailable, e.to_string()),
        };
        if !self.events.contains(event_id.as_str()) {
            self.ctx.hub.unsubscribe(self.id, &event_id);
            self.queue.forget(&event_id);
        }
        self.error(socket, code, text, Some(&event_id)).await
    }

    async fn subscribe_all(&mut self, socket: &mut ClientSink) -> Option<Exit> {
        self.ctx.hub.subscribe_all(self.id, &self.queue);
        if !self.all_events {
            self.all_events = true;
            self.ctx.metrics.ws_subscriptions.inc();
        }
        let reply = ServerMessage::Subscribed {
            event_id: ALL_EVENTS.to_owned(),
        };
        if let Some(exit) = self.reply(socket, reply).await {
            return Some(exit);
        }
        // The snapshot of every event may be larger than the client's queue: it goes out a
        // page at a time, each page written before the next is read, so it is neither
        // truncated nor mistaken for a slow consumer.
        // A page holds every market of its events; the queue counts markets.
        let page = (self.ctx.max_pending_events / Market::ALL.len()).clamp(1, SNAPSHOT_PAGE);
        let page = u32::try_from(page).unwrap_or(1);
        let mut after: Option<String> = None;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let updates = match self.ctx.store.current_after(after.as_deref(), page).await {
                Ok(updates) => updates,
                Err(e) => {
                    let text = e.to_string();
                    return self
                        .error(socket, ErrorCode::Unavailable, text, Some(ALL_EVENTS))
                        .await;
                }
            };
            for update in &updates {
                self.queue
                    .push(&crate::hub::EncodedUpdate::new(update), true);
            }
            // Room for the next page; what is left goes out with the live updates.
            let room_needed = self
                .ctx
                .max_pending_events
                .saturating_sub(page as usize * Market::ALL.len());
            while self.queue.pending_len() > room_needed {
                if let Some(exit) = self.write_pending(socket, &mut batch).await {
                    return Some(exit);
                }
            }
            match updates.last() {
                Some(last) if event_count(&updates) == page as usize => {
                    after = Some(last.event_id.clone());
                }
                _ => return None,
            }
        }
    }

    async fn unsubscribe(&mut self, socket: &mut ClientSink, event_id: String) -> Option<Exit> {
        if event_id == ALL_EVENTS {
            self.ctx.hub.unsubscribe_all(self.id);
            if std::mem::take(&mut self.all_events) {
                self.ctx.metrics.ws_subscriptions.dec();
            }
        } else {
            self.ctx.hub.unsubscribe(self.id, &event_id);
            self.queue.forget(&event_id);
            if self.events.remove(event_id.as_str()) {
                self.ctx.metrics.ws_subscriptions.dec();
            }
        }
        self.reply(socket, ServerMessage::Unsubscribed { event_id })
            .await
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
