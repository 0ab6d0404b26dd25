//! `/ws/odds`: one task per connection that reads the client's messages, answers them, pings,
//! tells the client about the feed, and writes whatever the fan-out could not write itself.
//!
//! Live updates do not pass through this task: the fan-out ([`crate::hub`]) writes them to
//! the socket directly while the client keeps up. The task wakes for them only when the socket
//! would block (it then waits until the socket drains, bounded by the slow-client timeout),
//! when the client asked for a conflation interval (it then writes on that timer), or when the
//! client fell too far behind (it closes it). Its own messages (replies, `status`, pings, the
//! close) go through the same write buffer ([`ClientQueue::send_control`]), so they stay in
//! order with the updates. Reading uses tungstenite over the upgraded connection; writing uses
//! a duplicate of the connection's socket ([`crate::api::ClientSocket`]), which is why
//! tungstenite's own automatic replies are discarded ([`ReadHalf`]) and answered here.
//!
//! No store read holds the connection: subscribe and unsubscribe requests are answered in
//! order, one at a time, and the snapshot read a subscribe waits for is a future the loop polls
//! beside everything else ([`requests`]). Subscribing registers with the hub *before* reading
//! the snapshot, so no update can fall in the gap, and the queue keeps each market's snapshot
//! first ([`crate::queue`]). When live updates stop or resume (see [`crate::feed::Feed`]) every
//! connection sends a `status` message, so no client waits on a silent socket without knowing
//! why; after telling `live:false` the queue holds updates back until `live:true` is out.

mod requests;

use crate::feed::{Feed, FeedStatus};
use crate::frames;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::queue::{ClientQueue, Framed, WriteState};
use crate::store::OddsStore;
use axum::extract::ws::close_code;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use odds_contracts::ws::{ClientMessage, ErrorCode, ServerMessage};
use requests::{Paging, Read, Request};
use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// The client's frames, read by tungstenite from the upgraded connection.
type Incoming = WebSocketStream<ReadHalf>;

/// Subscribe and unsubscribe requests waiting for the one in progress; beyond them the client's
/// frames are not read until one is answered.
const MAX_WAITING_REQUESTS: usize = 16;
/// How long the close frame may take to leave when the server ends a connection.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

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
}

/// Why the server ends a connection.
enum Exit {
    ClientGone,
    Close(u16, &'static str),
}

/// The upgraded connection as tungstenite reads it. Writes are discarded: the server writes
/// through its own handle of the socket, and answers pings and closes itself, so the bytes
/// tungstenite would write on its own (an automatic pong, a close echo) must not interleave
/// with ours.
pub struct ReadHalf(TokioIo<hyper::upgrade::Upgraded>);

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Connection {
    ctx: Arc<WsContext>,
    id: u64,
    queue: Arc<ClientQueue>,
    /// The socket the queue writes to, for waiting until it drains.
    socket: Arc<TcpStream>,
    events: HashSet<Arc<str>>,
    all_events: bool,
    last_seen: Instant,
    /// What the client was last told about the feed (`None`: live).
    told_down: Option<String>,
    /// The conflation interval the client asked for.
    conflate: Option<Duration>,
    /// Subscribe and unsubscribe requests not yet started, in the order they came.
    requests: VecDeque<Request>,
    /// The store read the request in progress waits for. Only ever used through `&mut self`
    /// (`get_mut`, never locked); the mutex makes the connection `Sync`, which a boxed future
    /// is not, as its `&self` methods need across their awaits.
    read: std::sync::Mutex<Option<Read>>,
    /// The `*` snapshot being paged out.
    paging: Option<Paging>,
}

/// Runs one upgraded connection to its end. `socket` is the duplicate of its socket the
/// server writes through; `permit` holds the connection's slot in the limit.
pub async fn serve_connection(
    upgraded: hyper::upgrade::Upgraded,
    socket: TcpStream,
    ctx: Arc<WsContext>,
    permit: OwnedSemaphorePermit,
) {
    // Small read buffers (tungstenite's default is 128 KiB): clients send a few small frames.
    let hard_limit = (ctx.max_message_bytes * 16).max(16 * 1024);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let mut incoming = WebSocketStream::from_raw_socket(
        ReadHalf(TokioIo::new(upgraded)),
        Role::Server,
        Some(config),
    )
    .await;
    ctx.metrics.ws_connections.inc();
    let socket = Arc::new(socket);
    let mut conn = Connection {
        id: ctx.hub.client_id(),
        queue: Arc::new(ClientQueue::new(ctx.max_pending_events, socket.clone())),
        socket,
        events: HashSet::new(),
        all_events: false,
        last_seen: Instant::now(),
        told_down: None,
        conflate: None,
        requests: VecDeque::new(),
        read: std::sync::Mutex::new(None),
        paging: None,
        ctx,
    };
    let exit = conn.run(&mut incoming).await;
    if let Exit::Close(code, reason) = exit {
        conn.close(code, reason).await;
    }
    conn.cleanup();
    drop(permit);
}

impl Connection {
    async fn run(&mut self, incoming: &mut Incoming) -> Exit {
        let mut ping = tokio::time::interval(self.ctx.ping_interval);
        ping.reset();
        let mut feed = self.ctx.feed.watch();
        if let Some(exit) = self.greet(&mut feed) {
            return exit;
        }
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut feed_changed = Box::pin(next_change(feed));
        let mut conflate_tick: Option<tokio::time::Interval> = None;
        // Since when the socket has not taken a byte while bytes wait.
        let mut stuck_since: Option<tokio::time::Instant> = None;
        loop {
            let state = self.queue.write_state();
            if let Some(exit) = self.write_exit(state) {
                return exit;
            }
            if !state.blocked {
                stuck_since = None;
            }
            let stuck_deadline = *stuck_since.get_or_insert_with(tokio::time::Instant::now)
                + self.ctx.slow_client_timeout;
            self.keep_conflate_timer(&mut conflate_tick);
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
                    if let Some(exit) = self.status(&status) {
                        return exit;
                    }
                }
                // The fan-out handed the client over: the loop's top sees why.
                _ = self.queue.notified() => {}
                writable = self.socket.writable(), if state.blocked => {
                    if writable.is_err() {
                        return Exit::ClientGone;
                    }
                    if self.write_some() {
                        stuck_since = None;
                    }
                }
                _ = tokio::time::sleep_until(stuck_deadline), if state.blocked => {
                    self.ctx.metrics.ws_slow_client_closes.inc();
                    return Exit::Close(close_code::POLICY, "slow consumer: write timed out");
                }
                _ = tick(&mut conflate_tick) => {
                    self.flush(true);
                }
                done = requests::poll(&mut self.read) => {
                    if let Some(exit) = self.on_read(done) {
                        return exit;
                    }
                }
                message = incoming.next(), if self.requests.len() < MAX_WAITING_REQUESTS => {
                    if let Some(exit) = self.on_incoming(message) {
                        return exit;
                    }
                }
                _ = ping.tick() => {
                    if let Some(exit) = self.ping() {
                        return exit;
                    }
                }
            }
            // Whatever happened may let the next request or snapshot page start.
            if let Some(exit) = self.advance() {
                return exit;
            }
        }
    }

    /// A client that connects while updates are stopped is told at once; a live feed is the
    /// normal case and says nothing.
    fn greet(&mut self, feed: &mut watch::Receiver<FeedStatus>) -> Option<Exit> {
        let status = feed.borrow_and_update().clone();
        if status.is_live() {
            return None;
        }
        self.status(&status)
    }

    /// What the client sent (or that it is gone).
    fn on_incoming(
        &mut self,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<Exit> {
        self.last_seen = Instant::now();
        match message {
            None => Some(Exit::ClientGone),
            Some(Err(error)) => Some(read_error_exit(error)),
            Some(Ok(message)) => self.on_message(message),
        }
    }

    /// Keeps the conflation timer in line with what the client asked for.
    fn keep_conflate_timer(&self, timer: &mut Option<tokio::time::Interval>) {
        if timer.as_ref().map(|t| t.period()) != self.conflate {
            *timer = self.conflate.map(|period| {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
        }
    }

    /// The socket drained: writes what waits. True when it took something.
    fn write_some(&self) -> bool {
        let before = self.queue.unwritten_bytes();
        self.flush(false);
        self.queue.unwritten_bytes() < before || !self.queue.write_state().blocked
    }

    /// Pings the client, or closes it when it has been silent for three intervals.
    fn ping(&self) -> Option<Exit> {
        if self.last_seen.elapsed() > self.ctx.ping_interval * 3 {
            return Some(Exit::Close(close_code::POLICY, "heartbeat timeout"));
        }
        self.write_exit(
            self.queue
                .send_control(&frames::control(frames::OP_PING, &[])),
        )
    }

    /// Why the connection must end, from how its writing stands.
    fn write_exit(&self, state: WriteState) -> Option<Exit> {
        if state.overflowed {
            self.ctx.metrics.ws_slow_client_closes.inc();
            return Some(Exit::Close(
                close_code::POLICY,
                "slow consumer: too far behind",
            ));
        }
        state.failed.then_some(Exit::ClientGone)
    }

    /// Writes what waits (the deferred updates too when due), without blocking.
    fn flush(&self, tick: bool) {
        count(&self.ctx.metrics, self.queue.flush(tick).1);
    }

    /// Sends the close frame, giving it a short while to leave: the peer may be the reason we
    /// close (stuck).
    async fn close(&self, code: u16, reason: &str) {
        let mut state = self.queue.send_control(&frames::close(code, reason));
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while state.blocked && !state.failed {
            match tokio::time::timeout_at(deadline, self.socket.writable()).await {
                Ok(Ok(())) => state = self.queue.flush(false).0,
                _ => return,
            }
        }
    }

    /// Sends a message of the connection's own after everything already framed.
    fn reply(&self, message: ServerMessage) -> Option<Exit> {
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
        self.write_exit(self.queue.send_control(&frames::text(&message.to_json())))
    }

    /// Tells the client when the feed's reason to be down changed (not when only readiness
    /// or cache trust did). Once told `live:false`, updates wait in the queue until the client
    /// has been told `live:true`, so it hears that updates resumed before it gets one.
    fn status(&mut self, status: &FeedStatus) -> Option<Exit> {
        if status.down == self.told_down {
            return None;
        }
        self.told_down = status.down.clone();
        if self.told_down.is_some() {
            self.queue.pause();
        }
        let exit = self.reply(ServerMessage::status(status.down.as_deref()));
        if self.told_down.is_none() {
            self.queue.resume();
            self.flush(false);
        }
        exit
    }

    fn error(&self, code: ErrorCode, text: String, event: Option<&str>) -> Option<Exit> {
        self.reply(ServerMessage::error(code, text, event))
    }

    /// The client's conflation interval: `0` turns it off (every version again).
    fn set_conflate(&mut self, millis: u64) {
        self.conflate = (millis > 0).then(|| Duration::from_millis(millis));
        self.queue.set_conflating(self.conflate.is_some());
        if self.conflate.is_none() {
            self.flush(false);
        }
    }

    fn on_message(&mut self, message: Message) -> Option<Exit> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let text = "binary frames are not supported; send JSON text".to_owned();
                return self.error(ErrorCode::BinaryNotSupported, text, None);
            }
            Message::Close(_) => return Some(Exit::ClientGone),
            Message::Ping(payload) => {
                let pong = frames::control(frames::OP_PONG, &payload);
                return self.write_exit(self.queue.send_control(&pong));
            }
            Message::Pong(_) | Message::Frame(_) => return None,
        };
        if text.len() > self.ctx.max_message_bytes {
            let text = format!(
                "message of {} bytes exceeds the limit of {}",
                text.len(),
                self.ctx.max_message_bytes
            );
            return self.error(ErrorCode::MessageTooLarge, text, None);
        }
        match ClientMessage::parse(text.as_str()) {
            Err(e) => self.error(e.code, e.message, None),
            Ok(ClientMessage::Ping) => self.reply(ServerMessage::Pong),
            Ok(ClientMessage::Subscribe {
                event_id,
                conflate_ms,
            }) => {
                if let Some(millis) = conflate_ms {
                    self.set_conflate(millis);
                }
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

/// Counts the frames the connection wrote (the fan-out counts its own).
fn count(metrics: &Metrics, framed: Framed) {
    metrics.ws_odds_sent.inc_by(framed.odds);
    metrics.ws_snapshots_sent.inc_by(framed.snapshots);
}

/// The conflation timer's next tick; never, without one.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
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
fn read_error_exit(error: tungstenite::Error) -> Exit {
    match error {
        tungstenite::Error::Capacity(_) => Exit::Close(close_code::SIZE, "message too big"),
        _ => Exit::ClientGone,
    }
}
