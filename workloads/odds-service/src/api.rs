//! The public HTTP surface: REST `/v1/...` (odds, and the freshness canary's figures at
//! `/v1/freshness`), the WebSocket upgrade at `/ws/odds`, the live page at `/` and the
//! OpenAPI document at `/openapi.json`.
//!
//! Every error is a JSON body `{"error":{"code","message"}}` with 400 (bad id or parameter),
//! 404 (unknown event or route) or 503 (neither Redis nor Postgres can answer); store errors
//! are never shown as 500s with internals.

use crate::metrics::Metrics;
use crate::store::{keep_events, OddsStore, StoreError};
use crate::ws::{serve_connection, WsContext};
use axum::extract::connect_info::Connected;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use odds_contracts::Market;
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Page size of `/v1/events` when `limit` is not given, and the largest allowed.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;
/// Rows of `/v1/events/{id}/history` when `limit` is not given, and the largest allowed.
pub const DEFAULT_HISTORY: u32 = 50;
pub const MAX_HISTORY: u32 = 1000;

const PAGE_HTML: &str = include_str!("../static/index.html");
const OPENAPI_JSON: &str = include_str!("../static/openapi.json");

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<OddsStore>,
    pub ws: Arc<WsContext>,
    pub metrics: Metrics,
    /// One permit per open WebSocket: the connection limit.
    pub connections: Arc<Semaphore>,
    pub allowed_origins: Arc<Vec<String>>,
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unknown_event(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_event",
            format!("no odds known for event {id:?}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::warn!(%error, "read failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "odds storage is unavailable, retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// The public router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE_HTML) }))
        .route("/openapi.json", get(openapi))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}/markets", get(markets))
        .route("/v1/events/{id}/odds", get(current_odds))
        .route("/v1/events/{id}/history", get(history))
        .route("/v1/freshness", get(freshness))
        .route("/ws/odds", get(ws_upgrade))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            track,
        ))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

/// Counts and times every request by matched route and status.
async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [route.as_str(), status.as_str()];
    metrics.api_requests.with_label_values(&labels).inc();
    metrics
        .api_latency
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

fn event_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    odds_contracts::validate_event_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(id)
}

/// The query parameters, or a 400 saying what is wrong with them.
fn params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(params)
}

fn limit(value: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match value.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = params(query)?;
    let limit = limit(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    if let Some(cursor) = &query.cursor {
        odds_contracts::validate_event_id(cursor)
            .map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?;
    }
    // One extra event tells whether another page exists.
    let mut rows = state
        .store
        .list_events(query.cursor.as_deref(), limit + 1)
        .await?;
    let more = keep_events(&mut rows, limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.event_id.clone()))
        .flatten();
    Ok(Json(json!({"events": rows, "next_cursor": next_cursor})).into_response())
}

#[derive(Debug, Deserialize)]
struct MarketQuery {
    market: Option<String>,
}

/// The `market` parameter: a known market, `default` when absent.
fn market(value: Option<&str>) -> Result<Option<Market>, ApiError> {
    value
        .map(|name| {
            name.parse::<Market>()
                .map_err(|e| ApiError::bad_request(format!("market: {e}")))
        })
        .transpose()
}

async fn current_odds(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<MarketQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = event_id(path)?;
    let query = params(query)?;
    let market = market(query.market.as_deref())?.unwrap_or(Market::MatchResult);
    let (update, source) = state
        .store
        .current(&id, market.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_event",
                format!("no {market} odds known for event {id:?}"),
            )
        })?;
    Ok(([("x-odds-source", source.as_str())], Json(update)).into_response())
}

async fn markets(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = event_id(path)?;
    let (markets, source) = state
        .store
        .markets(&id)
        .await?
        .ok_or_else(|| ApiError::unknown_event(&id))?;
    let body = Json(json!({"event_id": id, "markets": markets}));
    Ok(([("x-odds-source", source.as_str())], body).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
    market: Option<String>,
}

async fn history(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = event_id(path)?;
    let query = params(query)?;
    let limit = limit(query.limit, DEFAULT_HISTORY, MAX_HISTORY)?;
    let market = market(query.market.as_deref())?;
    let entries = state.store.history(&id, market, limit).await?;
    if entries.is_empty() && state.store.markets(&id).await?.is_none() {
        return Err(ApiError::unknown_event(&id));
    }
    Ok(Json(json!({"event_id": id, "history": entries})).into_response())
}

/// The freshness canary's latest figures (see `odds_contracts::freshness`): 200 with the
/// report, 404 when no canary published one within its time-to-live, 503 when Redis cannot
/// answer. A report never outlives its canary by more than the time-to-live, so the page
/// never shows a dead canary's figures as current.
async fn freshness(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.store.freshness().await? {
        Some(report) => Ok(Json(report).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_canary",
            format!(
                "no freshness canary published figures in the last {} s",
                odds_contracts::freshness::FRESHNESS_TTL_MS / 1000
            ),
        )),
    }
}

/// A duplicate of an accepted connection's socket, made when the connection is accepted
/// (`ConnectInfo`): the WebSocket fan-out writes frames to it directly, without the HTTP
/// server's connection in between. Taken by the connection's upgrade; a connection that is
/// never upgraded drops it with the connection.
#[derive(Clone)]
pub struct ClientSocket(Arc<Mutex<Option<std::io::Result<socket2::Socket>>>>);

impl ClientSocket {
    fn take(&self) -> std::io::Result<tokio::net::TcpStream> {
        let taken = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        let socket = taken.unwrap_or_else(|| {
            Err(std::io::Error::other(
                "the connection's socket was already taken",
            ))
        })?;
        let std_socket = std::net::TcpStream::from(socket);
        std_socket.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(std_socket)
    }
}

/// The public listener: accepts as axum's `TcpListener` does, then bounds each connection's
/// kernel send buffer (the default autotuning lets one stuck client park megabytes in the
/// kernel, hiding it from the slow-client logic) and turns Nagle off.
pub struct PublicListener {
    pub inner: tokio::net::TcpListener,
    /// SO_SNDBUF per connection; 0 keeps the OS default.
    pub send_buffer: usize,
}

impl axum::serve::Listener for PublicListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let socket = socket2::SockRef::from(&tcp);
        if self.send_buffer > 0 {
            if let Err(error) = socket.set_send_buffer_size(self.send_buffer) {
                tracing::debug!(%error, "cannot set SO_SNDBUF");
            }
        }
        let _ = socket.set_tcp_nodelay(true);
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, PublicListener>> for ClientSocket {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PublicListener>) -> Self {
        let duplicate = socket2::SockRef::from(stream.io()).try_clone();
        ClientSocket(Arc::new(Mutex::new(Some(duplicate))))
    }
}

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The RFC 6455 opening handshake's checks; the accept key on success.
fn handshake_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |message: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_upgrade", message);
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(bad(
            "expected a WebSocket upgrade (Upgrade: websocket, Connection: upgrade)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad_upgrade",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("missing Sec-WebSocket-Key"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers a refused upgrade with `error`, counted under `reason` in
/// `odds_ws_connections_rejected_total`.
fn refuse_upgrade(state: &AppState, reason: &str, error: ApiError) -> Response {
    state
        .metrics
        .ws_connections_rejected
        .with_label_values(&[reason])
        .inc();
    error.into_response()
}

/// Checks the origin, the shutdown and the connection limit, answers the upgrade itself, and
/// hands the upgraded connection with its socket's duplicate to [`serve_connection`].
async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientSocket>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let allowed = state.allowed_origins.is_empty()
            || state
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
        if !allowed {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("origin {origin:?} is not allowed"),
            );
            return refuse_upgrade(&state, "origin", error);
        }
    }
    let accept = match handshake_key(headers) {
        Ok(accept) => accept,
        Err(error) => return error.into_response(),
    };
    if state.ws.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        )
        .into_response();
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "connection limit reached",
        );
        return refuse_upgrade(&state, "limit", error);
    };
    let socket = match client.take() {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(%error, "cannot use the connection's socket for WebSocket writes");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot serve a WebSocket on this connection",
            )
            .into_response();
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let ctx = state.ws.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve_connection(upgraded, socket, ctx, permit).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
