//! The operations endpoints every service exposes: `/healthz`, `/readyz`, `/metrics`.
//!
//! `/healthz` answers while the process runs (liveness: restart me if this fails);
//! `/readyz` answers 200 only while every [`Readiness`] check passes (send me traffic);
//! `/metrics` is the Prometheus text format of the service's registry.

use crate::metrics::PrefixedRegistry;
use crate::{Readiness, RuntimeError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use odds_contracts::{env, ports};
use prometheus::{Encoder, Registry, TextEncoder};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags every service shares; flattened into each binary's clap config.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Address of the health, readiness and metrics server.
    #[arg(long, env = env::HTTP_ADDR, default_value_t = ports::any_address(ports::OPS))]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "text")]
    pub log_format: crate::LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,odds_ingest=debug`.
    #[arg(long, env = env::RUST_LOG, default_value = "info")]
    pub log_filter: String,
    /// Print the metric families this binary serves on /metrics (name, type, label names;
    /// JSON) and exit without starting anything. The chart's dashboard and alert checks read
    /// it, so they compare against what runs rather than against source text.
    /// Checked before the other options are parsed (see
    /// [`crate::cli::metric_families_requested`]), so the settings a run needs are not asked for.
    #[arg(long)]
    pub print_metric_families: bool,
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    registries: Vec<Registry>,
}

/// The ops routes, to serve on their own port or merge into a service's router.
pub fn ops_router(readiness: Readiness, registry: Registry) -> Router {
    ops_router_for(readiness, vec![registry])
}

/// [`ops_router`] for a service whose metrics live in several registries (one per
/// component, see [`crate::metrics`]); `/metrics` serves them all.
pub fn ops_router_for(readiness: Readiness, registries: Vec<Registry>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            readiness,
            registries,
        })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let checks = state.readiness.snapshot();
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": status == StatusCode::OK,
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut buf = Vec::new();
    let families: Vec<_> = state.registries.iter().flat_map(|r| r.gather()).collect();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `addr` and serves `router` until `shutdown` is cancelled. Returns the bound address
/// (useful with port 0) and the server task.
pub async fn serve_http(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RuntimeError::Bind { addr, source })?;
    // Without TCP_NODELAY a small write waits while an earlier one is unacknowledged, and a
    // peer that only reads (ingest reading the simulator's WebSocket) acknowledges late
    // (delayed ACK, 40 ms on Linux): a stream of small frames then stalls now and then.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        serve_until_drained(server, &shutdown, DRAIN_GRACE, "ops").await;
    });
    Ok((bound, task))
}

/// Serves the ops routes of `readiness` and one component's `registry` on `addr` until
/// `shutdown` is cancelled, as [`serve_http`] does: the ops server of a one-registry stage.
pub async fn serve_ops(
    addr: SocketAddr,
    readiness: &Readiness,
    registry: &PrefixedRegistry,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RuntimeError> {
    let router = ops_router(readiness.clone(), registry.registry().clone());
    serve_http(addr, router, shutdown).await
}

/// How long a server waits after shutdown for its open connections to finish.
///
/// axum's graceful shutdown waits for every connection, and one that sent part of a request
/// head never finishes (axum sets hyper no header-read timer): it would hold the process
/// until Kubernetes kills it at the end of its grace period.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Drives `server` (an axum server whose graceful shutdown follows `shutdown`) until it ends,
/// or until `grace` has passed since `shutdown`. Returns whether every connection finished;
/// connections still open then are left to the process exit.
pub async fn serve_until_drained<S>(
    server: S,
    shutdown: &CancellationToken,
    grace: Duration,
    name: &str,
) -> bool
where
    S: IntoFuture<Output = std::io::Result<()>>,
{
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server.into_future() => {
            if let Err(error) = result {
                tracing::error!(%error, server = name, "server failed");
            }
            true
        }
        () = deadline => {
            tracing::warn!(
                server = name,
                ?grace,
                "connections still open after the drain grace; not waiting for them"
            );
            false
        }
    }
}
