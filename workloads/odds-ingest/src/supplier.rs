//! The supplier connection: connect, read frames, reconnect forever.
//!
//! Suppliers drop connections; ingest must come back without a human. Delays grow
//! exponentially up to a cap and are jittered so that many replicas do not reconnect in lock
//! step. A connection that goes silent is pinged, and given up after three ping intervals: a
//! half-open socket (a lost node, a dropped route) raises no error by itself and would leave
//! ingest connected, ready and idle forever. Frames go into a channel bounded in frames and in
//! bytes: when it is full this task stops reading the socket, which is how Kafka trouble turns
//! into TCP backpressure instead of memory growth. Every wait here also watches for shutdown,
//! so SIGTERM is never stuck behind a full queue.

use crate::metrics::IngestMetrics;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use odds_runtime::Readiness;
use rand::Rng;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Error, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Readiness check name: connected to the supplier.
pub const READY_SUPPLIER: &str = "supplier";

/// One data frame as received.
#[derive(Debug, Clone)]
pub enum SupplierFrame {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// A message larger than the read limit: the WebSocket layer discards its bytes and the
    /// connection, so only its size is known.
    Oversize {
        size: usize,
        max: usize,
    },
}

impl SupplierFrame {
    fn len(&self) -> usize {
        match self {
            SupplierFrame::Text(text) => text.len(),
            SupplierFrame::Binary(bytes) => bytes.len(),
            SupplierFrame::Oversize { .. } => 0,
        }
    }
}

/// When a frame came off the supplier socket: where ingest's hops start, stamped before any
/// wait in the queue so that queueing counts as ingest's time.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// For the hop to Kafka's acknowledgement (monotonic).
    pub at: Instant,
    /// For the hop from the supplier's `updated_at` (wall clock, like `updated_at`).
    pub wall: DateTime<Utc>,
}

impl Received {
    pub fn now() -> Received {
        Received {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }
}

/// A frame waiting in the queue, holding its share of the queue's byte budget until processed.
#[derive(Debug)]
pub struct QueuedFrame {
    pub frame: SupplierFrame,
    pub received: Received,
    _budget: Option<OwnedSemaphorePermit>,
}

/// The byte budget of the frame queue: a frame takes as many permits as it has bytes (capped
/// at the whole budget, so one huge frame still fits alone).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl ByteBudget {
    pub fn new(total: u32) -> ByteBudget {
        ByteBudget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    fn permits_for(&self, frame: &SupplierFrame) -> u32 {
        u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .min(self.total)
    }

    /// [`ByteBudget::reserve`] without waiting: the frame back when the budget is spent.
    fn try_reserve(
        &self,
        frame: SupplierFrame,
        received: Received,
    ) -> Result<QueuedFrame, (SupplierFrame, Received)> {
        match self
            .permits
            .clone()
            .try_acquire_many_owned(self.permits_for(&frame))
        {
            Ok(budget) => Ok(QueuedFrame {
                frame,
                received,
                _budget: Some(budget),
            }),
            Err(_) => Err((frame, received)),
        }
    }

    async fn reserve(&self, frame: SupplierFrame, received: Received) -> QueuedFrame {
        let bytes = self.permits_for(&frame);
        // The semaphore is never closed, so acquiring only fails in theory; a frame without
        // a permit is still processed.
        let budget = self.permits.clone().acquire_many_owned(bytes).await.ok();
        QueuedFrame {
            frame,
            received,
            _budget: budget,
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SupplierLink {
    pub url: String,
    pub max_message_bytes: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// After this long without a frame ingest pings the supplier; after three times this of
    /// silence (a half-open connection, a frozen supplier) it reconnects. A connect attempt
    /// gets as long.
    pub ping_interval: Duration,
}

/// How long a control frame (a ping, the close at shutdown) may take to go out: a supplier
/// that stopped reading must hold neither the liveness check nor shutdown.
const SEND_GRACE: Duration = Duration::from_secs(1);

/// The delay before reconnect attempt `attempt` (1-based): a random point in the upper half
/// of `min * 2^(attempt-1)`, capped at `max`.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let step = min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let half = step / 2;
    half + Duration::from_nanos(
        rng.random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64),
    )
}

/// Reads the supplier until `reader.shutdown`; frames go to `reader.frames`. Returns when shut
/// down or when the receiving side is gone.
pub async fn stream_supplier(reader: SupplierReader) {
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng();
    let mut attempt: u32 = 0;
    loop {
        let Some(connected) = reader.connect().await else {
            return;
        };
        match connected {
            Ok(ws) => {
                tracing::info!(url = %reader.link.url, "connected to supplier");
                attempt = 0;
                reader.readiness.set(READY_SUPPLIER, true);
                let ended = reader.read(ws).await;
                reader.readiness.set(READY_SUPPLIER, false);
                if ended == Ended::Stop {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(url = %reader.link.url, attempt, %error, "cannot connect to supplier")
            }
        }
        attempt = attempt.saturating_add(1);
        if !reader.wait_to_reconnect(attempt, &mut rng).await {
            return;
        }
    }
}

type SupplierSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How one connection's reading ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The connection failed, closed or went silent: connect again.
    Reconnect,
    /// Shutdown, or the processing side is gone.
    Stop,
}

/// What one read from the socket asks of the reader.
enum Next {
    Frame(SupplierFrame),
    /// A control frame (tungstenite answers pings itself).
    Skip,
    /// A message over the read limit: dead-letter its size, then reconnect.
    Oversize(SupplierFrame),
    /// The connection is over: reconnect.
    End,
}

/// The supplier side of the stage: where it connects, where the frames go (the queue and its
/// byte budget), and what it reports to.
pub struct SupplierReader {
    pub link: SupplierLink,
    pub frames: mpsc::Sender<QueuedFrame>,
    pub budget: ByteBudget,
    pub readiness: Readiness,
    pub metrics: IngestMetrics,
    pub shutdown: CancellationToken,
}

impl SupplierReader {
    /// One connect attempt, bounded like the silence of a connection; `None` on shutdown.
    async fn connect(&self) -> Option<Result<SupplierSocket, Error>> {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.link.max_message_bytes))
            .max_frame_size(Some(self.link.max_message_bytes));
        let connect = tokio::time::timeout(
            self.link.ping_interval * 3,
            tokio_tungstenite::connect_async_with_config(&self.link.url, Some(ws_config), false),
        );
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            r = connect => Some(
                r.unwrap_or_else(|_| Err(Error::Io(ErrorKind::TimedOut.into())))
                    .map(|(ws, _)| ws),
            ),
        }
    }

    /// Reads one connection's frames into the queue, pinging it when silent, until it ends.
    async fn read(&self, mut ws: SupplierSocket) -> Ended {
        let mut last_heard = Instant::now();
        let mut liveness = tokio::time::interval(self.link.ping_interval);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick would come at once; the first check is due one interval on.
        liveness.reset();
        // Registered with the token once per connection, not once per frame.
        let stopped = self.shutdown.cancelled();
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                _ = &mut stopped => {
                    let _ = tokio::time::timeout(SEND_GRACE, ws.close(None)).await;
                    return Ended::Stop;
                }
                _ = liveness.tick() => {
                    if !self.check_liveness(&mut ws, last_heard.elapsed()).await {
                        return Ended::Reconnect;
                    }
                    continue;
                }
                next = ws.next() => next,
            };
            let received = Received::now();
            last_heard = received.at;
            let frame = match classify(next) {
                Next::Frame(frame) => frame,
                Next::Skip => continue,
                Next::Oversize(frame) => {
                    return match self.hand_over(frame, received).await {
                        HandedOver::Stopped => Ended::Stop,
                        HandedOver::AtOnce | HandedOver::AfterWaiting => Ended::Reconnect,
                    };
                }
                Next::End => return Ended::Reconnect,
            };
            self.metrics.frames_received.inc();
            match self.hand_over(frame, received).await {
                HandedOver::AtOnce => {}
                // Waiting on a full queue is backpressure, not supplier silence. (Only then
                // is the clock read again: once per frame is a visible share of the CPU.)
                HandedOver::AfterWaiting => last_heard = Instant::now(),
                HandedOver::Stopped => {
                    let _ = tokio::time::timeout(SEND_GRACE, ws.close(None)).await;
                    return Ended::Stop;
                }
            }
        }
    }

    /// Pings a connection silent for a ping interval; `false` when it has been silent too
    /// long or the ping cannot go out (reconnect).
    async fn check_liveness(&self, ws: &mut SupplierSocket, silent: Duration) -> bool {
        if silent >= self.link.ping_interval * 3 {
            tracing::warn!(?silent, "supplier silent; reconnecting");
            return false;
        }
        if silent >= self.link.ping_interval {
            let ping = ws.send(Message::Ping(Bytes::new()));
            let sent = tokio::time::timeout(SEND_GRACE, ping).await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!("cannot ping the supplier; reconnecting");
                return false;
            }
        }
        true
    }

    async fn hand_over(&self, frame: SupplierFrame, received: Received) -> HandedOver {
        hand_over(
            &self.frames,
            &self.budget,
            frame,
            received,
            &self.shutdown,
            &self.metrics,
        )
        .await
    }

    /// Counts the reconnect and waits its backoff; `false` on shutdown.
    async fn wait_to_reconnect(&self, attempt: u32, rng: &mut impl Rng) -> bool {
        self.metrics.reconnects.inc();
        let delay = backoff_delay(
            attempt,
            self.link.reconnect_min,
            self.link.reconnect_max,
            rng,
        );
        tracing::info!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            "reconnecting to supplier"
        );
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// What a read from the socket means for the reader (and the log line of an ending).
fn classify(next: Option<Result<Message, Error>>) -> Next {
    match next {
        Some(Ok(Message::Text(text))) => Next::Frame(SupplierFrame::Text(text)),
        Some(Ok(Message::Binary(bytes))) => Next::Frame(SupplierFrame::Binary(bytes)),
        Some(Ok(Message::Close(reason))) => {
            tracing::warn!(?reason, "supplier closed the connection");
            Next::End
        }
        Some(Ok(_)) => Next::Skip, // ping/pong are handled by tungstenite
        Some(Err(Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
            tracing::warn!(
                size,
                max_size,
                "supplier sent a message over the read limit; dead-lettering \
                 its size and reconnecting"
            );
            Next::Oversize(SupplierFrame::Oversize {
                size,
                max: max_size,
            })
        }
        Some(Err(error)) => {
            tracing::warn!(%error, "supplier connection failed");
            Next::End
        }
        None => {
            tracing::warn!("supplier connection ended");
            Next::End
        }
    }
}

/// How [`hand_over`] went.
#[derive(Debug, PartialEq)]
enum HandedOver {
    /// Queued without waiting (the common case).
    AtOnce,
    /// Queued after waiting for room.
    AfterWaiting,
    /// Shutdown came first, in which case the frame, already read from the supplier, is
    /// counted as undelivered; or the processing side is gone.
    Stopped,
}

/// Queues one frame, waiting while the queue is full (backpressure, not buffering).
async fn hand_over(
    frames: &mpsc::Sender<QueuedFrame>,
    budget: &ByteBudget,
    frame: SupplierFrame,
    received: Received,
    shutdown: &CancellationToken,
    metrics: &IngestMetrics,
) -> HandedOver {
    // The common case, room in the queue, takes no wait: registering with the shutdown token
    // on every frame (a lock, twice) was a visible share of ingest's CPU per update.
    let waiting = match budget.try_reserve(frame, received) {
        Ok(queued) => match frames.try_send(queued) {
            Ok(()) => return HandedOver::AtOnce,
            Err(mpsc::error::TrySendError::Closed(_)) => return HandedOver::Stopped,
            Err(mpsc::error::TrySendError::Full(queued)) => Waiting::ForQueue(queued),
        },
        Err((frame, received)) => Waiting::ForBudget(frame, received),
    };
    let queued = async {
        let queued = match waiting {
            Waiting::ForQueue(queued) => queued,
            Waiting::ForBudget(frame, received) => budget.reserve(frame, received).await,
        };
        match frames.send(queued).await {
            Ok(()) => HandedOver::AfterWaiting,
            Err(_) => HandedOver::Stopped,
        }
    };
    tokio::select! {
        handed = queued => handed,
        _ = shutdown.cancelled() => {
            metrics.shutdown_undelivered.inc();
            tracing::error!("shutdown: a frame read from the supplier could not be queued");
            HandedOver::Stopped
        }
    }
}

/// A frame [`hand_over`] has to wait for: for the byte budget, or (budget taken) for room in
/// the queue.
enum Waiting {
    ForBudget(SupplierFrame, Received),
    ForQueue(QueuedFrame),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 1..40 {
            let d = backoff_delay(attempt, min, max, &mut rng);
            let step = (min * 2u32.pow((attempt - 1).min(20))).min(max);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs step {step:?}"
            );
            assert!(d <= max);
        }
    }
}
