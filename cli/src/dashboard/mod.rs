//! The supervision dashboard that `carrier run` and `carrier demo` serve: one page shipped inside
//! the binary, the JSON API behind it, a server-sent-events stream of snapshots, `/healthz`,
//! `/readyz` and Prometheus `/metrics`.
//!
//! One sampler task takes a [`Snapshot`] a second and every client shares it, so ten open pages
//! cost what one does. Read-only unless started with `--dashboard-actions` and an API key; the
//! key is compared in constant time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carrier_actors::{Observer, Snapshot};
use tokio::sync::watch;

mod consumers;

/// The page, with its styles and script inline: no CDN, no build step.
const PAGE: &str = include_str!("page.html");

/// Where the dashboard listens when no address is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7878";

/// How often the sampler takes a snapshot.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The dashboard's flags, shared by `run` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DashboardArgs {
    /// Where the dashboard, its JSON API and /metrics listen [default: 127.0.0.1:7878; port 0
    /// picks a free one]
    #[arg(long, value_name = "ADDR", env = "CARRIER_DASHBOARD_ADDR")]
    dashboard_addr: Option<SocketAddr>,
    /// Serve no dashboard and collect no metrics.
    #[arg(long, conflicts_with_all = ["dashboard_addr", "dashboard_actions"])]
    no_dashboard: bool,
    /// Offer actions that change things (restart an actor, replay dead letters); they need the
    /// API key.
    #[arg(long, requires = "api_key")]
    dashboard_actions: bool,
    /// The key actions require, sent as `Authorization: Bearer <key>` (at least 16 characters).
    #[arg(long, env = "CARRIER_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    api_key: Option<String>,
}

/// An `--api-key` too short to resist guessing.
#[derive(Debug, thiserror::Error)]
#[error("the API key must be at least 16 characters")]
struct ApiKeyTooShort;

fn parse_api_key(key: &str) -> Result<String, ApiKeyTooShort> {
    if key.chars().count() < 16 {
        return Err(ApiKeyTooShort);
    }
    Ok(key.to_string())
}

/// A running dashboard.
pub struct Dashboard {
    /// Its address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

struct AppState {
    observer: Observer,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The API key, when actions are on.
    actions_key: Option<String>,
}

impl DashboardArgs {
    /// What clap checks only on the command line (a configuration file sets defaults): actions
    /// need a key. Called before anything starts, and again by [`start`].
    pub fn check(&self) -> anyhow::Result<()> {
        if self.dashboard_actions && !self.no_dashboard && self.api_key.is_none() {
            anyhow::bail!("dashboard-actions needs an api-key (--api-key, CARRIER_API_KEY or `api-key` in the configuration file)");
        }
        Ok(())
    }
}

/// Starts the dashboard unless turned off. An address given explicitly must be free; when the
/// default one is taken, the dashboard is skipped with a warning.
pub async fn start(args: &DashboardArgs, observer: Observer) -> anyhow::Result<Option<Dashboard>> {
    if args.no_dashboard {
        return Ok(None);
    }
    args.check()?;
    carrier_actors::metrics::enable();
    let (addr, explicit) = match args.dashboard_addr {
        Some(addr) => (addr, true),
        None => (DEFAULT_ADDR.parse().context("default dashboard address")?, false),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if !explicit => {
            tracing::warn!(%addr, error = %e, "dashboard not started: the default address is taken; pass --dashboard-addr");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("--dashboard-addr {addr}: cannot listen")),
    };
    let addr = listener.local_addr().context("dashboard address")?;
    if args.dashboard_actions && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "dashboard actions are on and the dashboard listens beyond loopback");
    }
    let snapshots = observer.start_sampler(SAMPLE_EVERY).await;
    let state = Arc::new(AppState {
        observer,
        snapshots,
        actions_key: args.dashboard_actions.then(|| args.api_key.clone()).flatten(),
    });
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    Ok(Some(Dashboard { addr, task }))
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api", get(index))
        .route("/api/snapshot", get(snapshot))
        .route("/api/tree", get(tree))
        .route("/api/consumers", get(consumers))
        .route("/api/caches", get(caches))
        .route("/api/outbox", get(outbox))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/health", get(health))
        .route("/api/config", get(config))
        .route("/api/events", get(events))
        .route("/api/actors/restart", post(restart_actor))
        .route("/api/dead-letters/{context}/replay", post(replay_dead_letters))
        .route("/api/contexts/{context}/rebuild", post(start_rebuild))
        .route("/api/rebuilds", get(rebuilds))
        .route("/api/consumers/{context}/{source}/pause", post(consumers::pausing::<true>))
        .route("/api/consumers/{context}/{source}/resume", post(consumers::pausing::<false>))
        .route("/api/consumers/{context}/{source}/seek", post(consumers::seek))
        .route("/api/consumers/{context}/{source}/skip", post(consumers::skip))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

type AppResult = Result<Response, ApiError>;

/// An API error: a status and a JSON body `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn latest(state: &AppState) -> Arc<Snapshot> {
    state.snapshots.borrow().clone()
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], Html(PAGE))
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint; GET /api lists them".into())
}

async fn index() -> impl IntoResponse {
    Json(serde_json::json!({
        "endpoints": {
            "GET /api/snapshot": "everything below in one document",
            "GET /api/tree": "every supervised actor: state, restarts, last failure, uptime",
            "GET /api/consumers": "every durable consumer: sequences, pending, ack pending, redeliveries, rate",
            "GET /api/caches": "every context's file: rows per table, inbox, applied through, lookups, fallbacks",
            "GET /api/outbox": "each publishing context's outbox backlog",
            "GET /api/dead-letters": "each consuming context's dead letters: count and the latest",
            "GET /api/health": "health overall and per context",
            "GET /api/config": "whether actions are on",
            "GET /api/events": "server-sent events: one `snapshot` event a second",
            "POST /api/actors/restart": "{\"path\": \"carrier/baskets/cache\", \"kill\": false}; needs actions and the key",
            "POST /api/dead-letters/{context}/replay": "replays every dead letter of a context; needs actions and the key",
            "POST /api/contexts/{context}/rebuild": "rebuilds a context's caches from the streams, then swaps them in; needs actions and the key",
            "GET /api/rebuilds": "progress of the rebuilds started since carrier started",
            "POST /api/consumers/{context}/{source}/pause": "stops a consumer pulling until resumed; needs actions and the key",
            "POST /api/consumers/{context}/{source}/resume": "resumes a paused consumer from its checkpoint; needs actions and the key",
            "POST /api/consumers/{context}/{source}/seek": "{\"sequence\": N} or {\"time\": \"RFC 3339\"}: moves a consumer's position; needs actions and the key",
            "POST /api/consumers/{context}/{source}/skip": "{\"count\": N}: passes over the next N events, dead-lettering each as `skipped`; needs actions and the key",
            "GET /healthz": "200 unless a context was given up on",
            "GET /readyz": "200 when every actor runs and NATS is connected",
            "GET /metrics": "Prometheus text exposition"
        }
    }))
}

async fn snapshot(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).as_ref().clone())
}

async fn tree(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).tree.clone())
}

async fn consumers(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).consumers.clone())
}

async fn caches(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).caches.clone())
}

async fn outbox(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).outbox.clone())
}

async fn dead_letters(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(latest(&state).dead_letters.clone())
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Health is cheap and must not lag: read it now rather than from the last snapshot.
    Json(state.observer.health())
}

async fn config(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "actions": state.actions_key.is_some(), "version": env!("CARGO_PKG_VERSION") }))
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let health = state.observer.health();
    let status = if health.live() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health))
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let health = state.observer.health();
    let status = if health.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health))
}

async fn metrics() -> AppResult {
    let metrics =
        carrier_actors::metrics::get().ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "metrics are off".into()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.encode()).into_response())
}

async fn events(State(state): State<Arc<AppState>>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let mut rx = state.snapshots.clone();
    // The current snapshot first, then each new one.
    rx.mark_changed();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let snapshot = rx.borrow_and_update().clone();
        let event = Event::default()
            .event("snapshot")
            .json_data(snapshot.as_ref())
            .unwrap_or_else(|e| Event::default().event("error").data(format!("cannot encode the snapshot: {e}")));
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Lets an action through only when actions are on and the request carries the key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq;
    let Some(key) = &state.actions_key else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only; start carrier with --dashboard-actions and --api-key to allow actions".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "send the API key as Authorization: Bearer <key>".into()))?;
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "wrong API key".into()))
    }
}

#[derive(serde::Deserialize)]
struct RestartRequest {
    path: String,
    #[serde(default)]
    kill: bool,
}

async fn restart_actor(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> AppResult {
    authorize(&state, &headers)?;
    let request: RestartRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("expected {{\"path\": ..., \"kill\": bool}}: {e}")))?;
    state.observer.restart(&request.path, request.kill).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    tracing::warn!(actor = %request.path, kill = request.kill, "restarted by the operator from the dashboard");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "restarting": request.path }))).into_response())
}

async fn replay_dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(context): Path<String>,
) -> AppResult {
    authorize(&state, &headers)?;
    let replayed = state
        .observer
        .replay_dead_letters(&context)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    tracing::warn!(%context, replayed, "dead letters replayed by the operator from the dashboard");
    Ok(Json(serde_json::json!({ "context": context, "replayed": replayed })).into_response())
}

async fn start_rebuild(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(context): Path<String>,
) -> AppResult {
    authorize(&state, &headers)?;
    let progress = state.observer.start_rebuild(&context).map_err(|e| {
        let status = if e.is_conflict() { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
        ApiError(status, e.to_string())
    })?;
    tracing::warn!(%context, "cache rebuild started by the operator");
    Ok((StatusCode::ACCEPTED, Json(progress)).into_response())
}

async fn rebuilds(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(state.observer.rebuilds())
}
