//! The WebSocket server: one generator, many clients, nobody waits for the slowest.
//!
//! The generator encodes each update once and broadcasts the frame; every client drains its
//! own bounded slice of the broadcast ring. A client that falls further behind than the ring
//! holds is disconnected with a close reason rather than stalling the generator or the others.
//! The generator runs only while at least one client is connected, so a restarted consumer
//! does not miss a stream that was produced into the void. Every client first gets an image
//! (the current odds of every event), then the deltas, as streaming odds APIs do: a client
//! that reconnects after missing updates is right again at once.

use crate::config::SimulatorConfig;
use crate::feed::{clock_version_base, OddsFeed};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use odds_runtime::metrics::{component, ComponentMetrics, PrefixedRegistry};
use odds_runtime::ops::serve_ops;
use odds_runtime::{serve_http, Readiness, RuntimeError};
use prometheus::{IntCounter, IntGauge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How long one frame may wait for a client's socket before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

#[derive(Clone)]
struct Metrics {
    updates_sent: IntCounter,
    image_frames: IntCounter,
    clients: IntGauge,
    slow_disconnects: IntCounter,
    updates_skipped: IntCounter,
}

/// Served as `odds_sim_<name>`.
impl ComponentMetrics for Metrics {
    const COMPONENT: &'static str = component::SIMULATOR;

    fn register(registry: &PrefixedRegistry) -> Result<Metrics, prometheus::Error> {
        let r = registry;
        Ok(Metrics {
            updates_sent: r.counter(
                "updates_sent_total",
                "Updates generated and broadcast to connected clients",
            )?,
            image_frames: r.counter(
                "image_frames_total",
                "Current-odds frames sent to clients on connect (the initial image)",
            )?,
            clients: r.gauge("clients", "Connected WebSocket clients")?,
            slow_disconnects: r.counter(
                "slow_client_disconnects_total",
                "Clients disconnected because they fell too far behind",
            )?,
            updates_skipped: r.counter(
                "updates_skipped_total",
                "Updates a client that fell behind never received (it was disconnected and \
                 gets the current image on reconnect, not the versions in between)",
            )?,
        })
    }
}

#[derive(Clone)]
struct Shared {
    /// The generator's state; a new client reads its image under the same lock that the
    /// generator holds while broadcasting, so image and deltas neither overlap nor miss.
    feed: Arc<Mutex<OddsFeed>>,
    frames: broadcast::Sender<Utf8Bytes>,
    clients: Arc<watch::Sender<usize>>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

/// A running simulator.
pub struct SimulatorServer {
    /// Where clients connect: `ws://{ws_addr}/ws`.
    pub ws_addr: SocketAddr,
    /// Health, readiness and metrics.
    pub ops_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// The simulator's registry with every metric it serves registered, for
/// `--print-metric-families`.
pub fn metrics_registry() -> Result<PrefixedRegistry, RuntimeError> {
    Ok(Metrics::registered()?.0)
}

impl SimulatorServer {
    /// Binds both servers and starts the generator; returns once clients can connect.
    pub async fn start(
        config: SimulatorConfig,
        shutdown: CancellationToken,
    ) -> Result<SimulatorServer, SimulatorError> {
        let (registry, metrics) = Metrics::registered()?;
        let (frames, _) = broadcast::channel(config.client_queue as usize);
        let (clients, _) = watch::channel(0usize);
        let version_base = config.version_base.unwrap_or_else(clock_version_base);
        let feed = OddsFeed::new(config.seed, config.events, &config.markets, version_base);
        let shared = Shared {
            feed: Arc::new(Mutex::new(feed)),
            frames,
            clients: Arc::new(clients),
            metrics,
            shutdown: shutdown.clone(),
        };

        let app = Router::new()
            .route("/ws", get(upgrade))
            .with_state(shared.clone());
        let (ws_addr, ws_task) = serve_http(config.listen_addr, app, shutdown.clone()).await?;
        let (ops_addr, ops_task) = serve_ops(
            config.ops.http_addr,
            &Readiness::new(&[]),
            &registry,
            shutdown.clone(),
        )
        .await?;
        let generator = tokio::spawn(generate(config, shared));
        tracing::info!(%ws_addr, %ops_addr, version_base, "supplier-simulator listening on ws://{ws_addr}/ws");
        Ok(SimulatorServer {
            ws_addr,
            ops_addr,
            tasks: vec![ws_task, ops_task, generator],
        })
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Waits until every task has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Runs the simulator until `shutdown` is cancelled.
pub async fn run(
    config: SimulatorConfig,
    shutdown: CancellationToken,
) -> Result<(), SimulatorError> {
    SimulatorServer::start(config, shutdown).await?.wait().await;
    Ok(())
}

/// Emits `rate` updates per second in bursts of `burst`, only while clients are connected.
async fn generate(config: SimulatorConfig, shared: Shared) {
    let mut clients = shared.clients.subscribe();
    let rate = f64::from(config.rate);
    let period =
        Duration::from_secs_f64(f64::from(config.burst) / rate).max(Duration::from_millis(1));
    let mut sent: u64 = 0;
    loop {
        // Pause while nobody listens: wait for the first client (or shutdown).
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = clients.wait_for(|n| *n > 0) => if r.is_err() { return },
        }
        let started = Instant::now();
        let sent_at_start = sent;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if *clients.borrow() == 0 {
                break;
            }
            let due = (started.elapsed().as_secs_f64() * rate) as u64 + sent_at_start;
            // Whole bursts only, so `--burst` shapes the traffic even at low rates.
            let mut batch = due.saturating_sub(sent);
            if config.burst > 1 {
                batch -= batch % u64::from(config.burst);
            }
            if config.total > 0 {
                batch = batch.min(config.total - sent);
            }
            {
                let mut feed = shared.feed.lock().unwrap_or_else(PoisonError::into_inner);
                // Checked under the lock: once a client saw shutdown and took the lock, no
                // frame follows the ones it flushes (see `serve_client`).
                if shared.shutdown.is_cancelled() {
                    return;
                }
                for _ in 0..batch {
                    let update = feed.next_update(chrono::Utc::now());
                    // No receivers right now is fine: the frame is simply not delivered.
                    let _ = shared.frames.send(Utf8Bytes::from(update.to_json()));
                }
            }
            sent += batch;
            shared.metrics.updates_sent.inc_by(batch);
            if config.total > 0 && sent >= config.total {
                tracing::info!(sent, "total reached; no more updates will be generated");
                shared.shutdown.cancelled().await;
                return;
            }
        }
    }
}

async fn upgrade(ws: WebSocketUpgrade, State(shared): State<Shared>) -> Response {
    ws.on_upgrade(move |socket| serve_client(socket, shared))
}

async fn serve_client(mut socket: WebSocket, shared: Shared) {
    let (mut frames, image) = {
        let feed = shared.feed.lock().unwrap_or_else(PoisonError::into_inner);
        (shared.frames.subscribe(), feed.image(chrono::Utc::now()))
    };
    shared.clients.send_modify(|n| *n += 1);
    shared.metrics.clients.inc();
    let close = 'client: {
        for update in image {
            let frame = Message::Text(Utf8Bytes::from(update.to_json()));
            match tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await {
                Ok(Ok(())) => shared.metrics.image_frames.inc(),
                _ => break 'client None,
            }
        }
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {
                    // Every client gets every frame generated before the stop, so all clients
                    // agree on what the supplier's last updates were.
                    drop(shared.feed.lock().unwrap_or_else(PoisonError::into_inner));
                    while let Ok(text) = frames.try_recv() {
                        let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                    }
                    break Some((close_code::AWAY, "server shutting down".to_owned()));
                }
                frame = frames.recv() => match frame {
                    Ok(text) => match send_batch(&mut socket, &mut frames, text).await {
                        Ok(Batch::Sent) => {}
                        Ok(Batch::Lagged(missed)) => {
                            shared.metrics.slow_disconnects.inc();
                            shared.metrics.updates_skipped.inc_by(missed);
                            tracing::warn!(missed, "disconnecting a client that fell behind");
                            break Some((close_code::AGAIN, format!("client too slow: {missed} updates behind")));
                        }
                        Err(SendFailed::Socket) => break None,
                        // The client stopped draining its socket altogether.
                        Err(SendFailed::Stuck) => {
                            shared.metrics.slow_disconnects.inc();
                            tracing::warn!("disconnecting a client that stopped reading");
                            break None;
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        shared.metrics.slow_disconnects.inc();
                        shared.metrics.updates_skipped.inc_by(missed);
                        tracing::warn!(missed, "disconnecting a client that fell behind");
                        break Some((close_code::AGAIN, format!("client too slow: {missed} updates behind")));
                    }
                    Err(broadcast::error::RecvError::Closed) => break Some((close_code::AWAY, "stream ended".to_owned())),
                },
                incoming = socket.recv() => match incoming {
                    // Clients have nothing to say; pings are answered by the WebSocket layer.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => {}
                },
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A stuck client may never drain its socket: do not wait on it for long.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
    shared.clients.send_modify(|n| *n = n.saturating_sub(1));
    shared.metrics.clients.dec();
}

/// Frames written to a client's socket at most before one flush.
const MAX_BATCH: usize = 256;

/// What became of a batch of frames.
enum Batch {
    Sent,
    /// The client fell behind by this many frames while the batch was gathered.
    Lagged(u64),
}

enum SendFailed {
    /// The connection failed.
    Socket,
    /// The batch did not go out within [`SEND_TIMEOUT`]: the client stopped reading.
    Stuck,
}

/// Sends `first` and whatever else is already queued for the client (up to [`MAX_BATCH`])
/// with one flush: a write and a flush per frame was most of the simulator's CPU at a
/// hundred thousand updates a second, and a consumer reading one connection gets the same
/// frames either way.
async fn send_batch(
    socket: &mut WebSocket,
    frames: &mut broadcast::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> Result<Batch, SendFailed> {
    use futures_util::SinkExt;
    let batch = async {
        socket.feed(Message::Text(first)).await?;
        for _ in 1..MAX_BATCH {
            match frames.try_recv() {
                Ok(text) => socket.feed(Message::Text(text)).await?,
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    socket.flush().await?;
                    return Ok(Batch::Lagged(missed));
                }
                Err(_) => break,
            }
        }
        socket.flush().await.map(|()| Batch::Sent)
    };
    match tokio::time::timeout(SEND_TIMEOUT, batch).await {
        Ok(Ok(batch)) => Ok(batch),
        Ok(Err(_)) => Err(SendFailed::Socket),
        Err(_) => Err(SendFailed::Stuck),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odds_runtime::metrics::missing_queried;

    use odds_runtime::metrics::QUERIED_METRICS as QUERIED;

    #[test]
    fn every_simulator_metric_the_dashboards_query_is_registered() {
        let registry = metrics_registry().unwrap();
        assert_eq!(
            missing_queried(QUERIED, component::SIMULATOR, &[&registry]),
            Vec::<String>::new()
        );
        assert!(registry.names().contains("odds_sim_updates_sent_total"));
    }
}
