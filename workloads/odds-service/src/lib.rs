//! odds-service: the read side of the odds pipeline.
//!
//! Clients get current odds over REST (cache-first, Postgres fallback) and live updates over
//! WebSocket. One Redis pub/sub subscription per process feeds a fan-out [`hub`] that encodes
//! each update once and keeps every client's queue bounded and strictly version-ordered; a
//! lost subscription is followed by a resync from Postgres. While live updates are stopped
//! (pub/sub down, or a processor reports failing cache writes: [`feed::Feed`]) REST reads
//! Postgres, readiness fails and WebSocket clients are told; clients are also told when the
//! processors' heartbeats say the pipeline upstream of Redis stopped ([`upstream`]). [`start`]
//! wires it together so `main` and the tests run exactly the same service.

pub mod api;
pub mod config;
pub mod encoded;
pub mod feed;
pub mod frames;
pub mod hub;
pub mod metrics;
pub mod pubsub;
pub mod queue;
pub mod store;
pub mod upstream;
pub mod ws;

pub use config::ServiceConfig;

use odds_runtime::Readiness;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Runtime(#[from] odds_runtime::RuntimeError),
}

/// A started service: its bound addresses and a handle that ends after a graceful shutdown.
pub struct RunningService {
    pub listen_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub metrics: metrics::Metrics,
    /// Whether live updates flow (what `/readyz` and WebSocket `status` messages report).
    pub feed: Arc<feed::Feed>,
    task: JoinHandle<()>,
}

impl RunningService {
    /// Waits until the service has shut down (after `shutdown` was cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Readiness check name: Redis or Postgres answers.
pub const STORE_CHECK: &str = "redis-or-postgres";
/// Readiness check name: live updates reach this replica (pub/sub subscribed, no processor
/// reports failing cache writes). While it fails, REST reads Postgres and WebSocket clients
/// were told. An upstream stall (heartbeats) is told to clients but fails no replica: it is
/// the same for all of them.
pub const LIVE_CHECK: &str = "live-feed";
/// How long shutdown waits for WebSocket clients to receive their close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Starts the public server, the ops server, the pub/sub subscriber and the readiness probe.
pub async fn start(
    config: &ServiceConfig,
    shutdown: CancellationToken,
) -> Result<RunningService, StartError> {
    let metrics = metrics::Metrics::new()?;
    let feed = feed::Feed::new(
        config.heartbeat_timeout_ms.duration(),
        config.upstream_max_silence_ms.duration(),
    );
    let store = open_store(config, &metrics, &feed)?;
    let hub = Arc::new(hub::Hub::new(metrics.clone()).split_writes_at(config.ws_split_writes_at));
    let readiness = Readiness::new(&[STORE_CHECK, LIVE_CHECK]);
    let ws = Arc::new(ws::WsContext {
        hub: hub.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        feed: feed.clone(),
        max_subscriptions: config.ws_max_subscriptions,
        max_message_bytes: config.ws_max_message_bytes,
        max_pending_events: config.ws_max_pending_events,
        slow_client_timeout: config.ws_slow_client_timeout_ms.duration(),
        ping_interval: config.ping_interval(),
    });
    // Parsing bounds the limit far below the semaphore's maximum.
    let max_connections = config.ws_max_connections.min(Semaphore::MAX_PERMITS);
    let connections = Arc::new(Semaphore::new(max_connections));
    let state = api::AppState {
        store: store.clone(),
        ws,
        metrics: metrics.clone(),
        connections: connections.clone(),
        allowed_origins: Arc::new(config.allowed_origins()),
    };
    let (ops_addr, ops_task) = odds_runtime::serve_http(
        config.ops.http_addr,
        odds_runtime::ops::ops_router_for(readiness.clone(), metrics.registries()),
        shutdown.clone(),
    )
    .await?;
    let (listen_addr, api_task) = serve_public(
        config.listen_addr,
        config.ws_send_buffer_bytes,
        api::router(state),
        shutdown.clone(),
    )
    .await?;
    let subscriber = pubsub::Subscriber {
        redis_url: config.redis_url.clone(),
        timeout: config.redis_timeout_ms.duration(),
        hub,
        store: store.clone(),
        metrics: metrics.clone(),
        feed: feed.clone(),
    };
    let pubsub_task = tokio::spawn(subscriber.run(shutdown.clone()));
    let probe_task = tokio::spawn(probe_readiness(
        store,
        feed.clone(),
        readiness,
        shutdown.clone(),
    ));
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        wait_for_clients_closed(&connections, max_connections).await;
        let _ = tokio::join!(ops_task, api_task, pubsub_task, probe_task);
    });
    tracing::info!(%listen_addr, %ops_addr, "odds-service started");
    Ok(RunningService {
        listen_addr,
        ops_addr,
        metrics,
        feed,
        task,
    })
}

/// The cache-first store with its Postgres pool, from the configuration.
fn open_store(
    config: &ServiceConfig,
    metrics: &metrics::Metrics,
    feed: &Arc<feed::Feed>,
) -> Result<Arc<store::OddsStore>, StartError> {
    let settings = odds_schema::pool::PoolSettings {
        max_connections: config.database_max_connections,
        acquire_timeout: config.database_acquire_timeout_ms.duration(),
        statement_timeout: config.database_statement_timeout_ms.duration(),
        lock_timeout: Duration::ZERO,
    };
    Ok(Arc::new(store::OddsStore::new(
        &config.redis_url,
        config.redis_timeout_ms.duration(),
        config.read_database_url(),
        &settings,
        metrics.clone(),
        feed.clone(),
    )?))
}

/// Waits, at most [`CLOSE_GRACE`], until every WebSocket connection is closed. Upgraded
/// connections outlive the HTTP server; each returns its permit once its "going away" close
/// frame is out, so holding every permit means all are closed.
async fn wait_for_clients_closed(connections: &Semaphore, max_connections: usize) {
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.acquire_many(all)).await;
}

/// Serves the public router on [`api::PublicListener`] (bounded kernel send buffers, each
/// connection's socket duplicate as its connect info).
async fn serve_public(
    addr: SocketAddr,
    send_buffer: usize,
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let bind_error = |source| odds_runtime::RuntimeError::Bind { addr, source };
    let inner = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = inner.local_addr().map_err(bind_error)?;
    let listener = api::PublicListener { inner, send_buffer };
    let task = tokio::spawn(async move {
        // The connect info is each connection's socket duplicate (see `api::ClientSocket`).
        let service = router.into_make_service_with_connect_info::<api::ClientSocket>();
        let server = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        odds_runtime::ops::serve_until_drained(
            server,
            &shutdown,
            odds_runtime::ops::DRAIN_GRACE,
            "public",
        )
        .await;
    });
    Ok((bound, task))
}

/// Keeps readiness current: the stores are probed every 2 s, the live feed is followed as it
/// changes.
async fn probe_readiness(
    store: Arc<store::OddsStore>,
    feed: Arc<feed::Feed>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut live = feed.watch();
    let mut probe = tokio::time::interval(Duration::from_secs(2));
    loop {
        readiness.set(LIVE_CHECK, live.borrow_and_update().receiving);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = live.changed() => if changed.is_err() { return },
            _ = probe.tick() => {
                // A probe can wait on a dead store for its timeouts: shutdown must not.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    reachable = store.reachable() => readiness.set(STORE_CHECK, reachable),
                }
            }
        }
    }
}
