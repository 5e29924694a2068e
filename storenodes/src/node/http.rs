//! A store node's HTTP API, seed 003's paths and shapes: reads from the local cache (served
//! whether the central is up or not, each saying how fresh it is), stock updates proxied to the
//! central over NATS with the store's prefix on their idempotency keys and answered once this
//! node holds what they made, the sync status, a forced full sync and the cache's statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use carrier_messages::DomainEvent;
use carrier_messages::{command_subject, CommandReply, IDEMPOTENCY_KEY_HEADER};

use super::{rfc3339, unix_ms, StoreNode, PRODUCTS};
use crate::central::http::{if_match, BatchRequest, BatchResult, ProductJson, UpdateRequest, UpdateResult, MAX_BATCH};
use crate::central::{CentralCommand, CentralEvent};
use crate::http::{ApiError, ApiKeys, JsonBody, Paging};

/// Most products in one page (seed 003).
pub const MAX_PAGE: usize = 200;

/// How long a proxied update may wait for the central's answer.
const CENTRAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an update waits for this node's cache to hold what it made, and a read for the
/// version or position it asks for.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// Stops sending writes to a central that keeps failing, for a while: the next ones answer 503
/// at once instead of each waiting for its own timeout.
#[derive(Default)]
pub struct Breaker {
    failures: AtomicU64,
    open_until_unix_ms: AtomicU64,
}

/// Failures in a row that open the breaker.
const BREAKER_FAILURES: u64 = 3;
/// How long it stays open.
const BREAKER_OPEN: Duration = Duration::from_secs(2);

impl Breaker {
    fn open_for(&self) -> Option<Duration> {
        let until = self.open_until_unix_ms.load(Ordering::Relaxed);
        let now = unix_ms(SystemTime::now());
        (until > now).then(|| Duration::from_millis(until - now))
    }

    fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= BREAKER_FAILURES {
            let until = unix_ms(SystemTime::now()) + BREAKER_OPEN.as_millis() as u64;
            self.open_until_unix_ms.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct NodeApi {
    /// The node.
    pub node: StoreNode,
    /// The write proxy's breaker.
    pub breaker: Arc<Breaker>,
}

impl NodeApi {
    /// The API of `node`.
    pub fn new(node: StoreNode) -> Self {
        NodeApi { node, breaker: Arc::default() }
    }
}

/// The API: `/health` open, `/v1/store/...` behind `X-API-Key`.
pub fn router(api: NodeApi, keys: ApiKeys) -> Router {
    let protected = Router::new()
        .route("/v1/store/inventory", get(list))
        .route("/v1/store/inventory/updates", post(update))
        .route("/v1/store/inventory/batch-updates", post(batch_update))
        .route("/v1/store/inventory/{product_id}", get(product))
        .route("/v1/store/sync/status", get(sync_status))
        .route("/v1/store/sync/force", post(force_sync))
        .route("/v1/store/cache/stats", get(cache_stats))
        .with_state(api.clone());
    crate::http::api(Router::new().route("/health", get(health)).with_state(api), protected, keys)
}

async fn health(State(api): State<NodeApi>) -> Response {
    crate::http::health(serde_json::json!({
        "service": "store-node",
        "storeId": api.node.store_id,
        "products": api.node.handle.db.read(|txn| PRODUCTS.len(txn)).unwrap_or(0),
        "lag": api.node.lag(),
    }))
}

/// Freshness headers every read carries: `X-Carrier-Lag` (events stored in the stream this
/// node has not applied, at the last check), `X-Carrier-Position` (the last stream sequence it
/// applied) and `Age` (seconds since it was last known to hold everything the stream had).
fn freshness(node: &StoreNode, mut response: Response) -> Response {
    let caught_up = node.monitor.caught_up_unix_ms.load(Ordering::Relaxed);
    let age = if caught_up == 0 { 0 } else { unix_ms(SystemTime::now()).saturating_sub(caught_up) / 1000 };
    let headers = response.headers_mut();
    for (name, value) in [("x-carrier-lag", node.lag()), ("x-carrier-position", node.position()), ("age", age)] {
        headers.insert(name, HeaderValue::from(value));
    }
    response
}

fn cache_info(node: &StoreNode, total: u64) -> serde_json::Value {
    serde_json::json!({
        "lastSyncTime": rfc3339(node.monitor.caught_up_unix_ms.load(Ordering::Relaxed)),
        "totalProducts": total,
        "lastEventOffset": node.position(),
        "lag": node.lag(),
    })
}

#[derive(Deserialize)]
struct ListParams {
    offset: Option<String>,
    limit: Option<String>,
}

async fn list(State(api): State<NodeApi>, Query(params): Query<ListParams>) -> Response {
    let paging = match Paging::parse(params.offset.as_deref(), params.limit.as_deref(), 50, MAX_PAGE) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let read = api
        .node
        .handle
        .db
        .read_latest(|txn| Ok((PRODUCTS.slice(txn, paging.offset, paging.limit)?, PRODUCTS.len(txn)?)));
    let response = match read {
        Ok((rows, total)) => {
            let products: Vec<ProductJson> = rows.iter().map(|(id, p)| p.view(id).into()).collect();
            let has_more = (paging.offset + products.len()) < total as usize;
            axum::Json(serde_json::json!({
                "products": products,
                "pagination": { "offset": paging.offset, "limit": paging.limit, "total": total, "hasMore": has_more },
                "cacheInfo": cache_info(&api.node, total),
            }))
            .into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).into_response(),
    };
    freshness(&api.node, response)
}

#[derive(Deserialize)]
struct ProductParams {
    min_version: Option<String>,
    min_position: Option<String>,
}

/// A number from a query parameter, named when it is not one.
fn number(field: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.filter(|r| !r.is_empty())
        .map(|r| r.parse::<u64>().map_err(|_| ApiError::bad_field(field, format!("must be a whole number, got {r:?}"))))
        .transpose()
}

async fn product(
    State(api): State<NodeApi>,
    Path(product_id): Path<String>,
    Query(params): Query<ProductParams>,
    headers: HeaderMap,
) -> Response {
    let result: Result<Response, ApiError> = async {
        let min_version = number("min_version", params.min_version.as_deref())?;
        let min_position = number("min_position", params.min_position.as_deref())?;
        if let Some(position) = min_position {
            if !wait_for_position(&api.node, position).await {
                return Err(behind(&api.node, "min_position", position, api.node.position()));
            }
        }
        let read = |node: &StoreNode| node.handle.db.row(&PRODUCTS, &product_id);
        let mut row = read(&api.node).map_err(unavailable)?;
        if let Some(version) = min_version {
            let deadline = Instant::now() + READ_YOUR_WRITES_WAIT;
            while row.as_ref().is_none_or(|p| p.version < version) {
                if !wait_for_commit(&api.node, deadline).await {
                    let have = row.as_ref().map_or(0, |p| p.version);
                    return Err(behind(&api.node, "min_version", version, have));
                }
                row = read(&api.node).map_err(unavailable)?;
            }
        }
        let Some(row) = row else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "product_not_found", "Product not found in local cache")
                .with_details(serde_json::json!({
                    "productId": product_id,
                    "suggestion": "Product may not exist or cache may be out of sync",
                })));
        };
        let etag = format!("\"{}\"", row.version);
        let unchanged = headers
            .get(axum::http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
        let mut response = if unchanged {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            axum::Json(ProductJson::from(row.view(&product_id))).into_response()
        };
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(axum::http::header::ETAG, value);
        }
        Ok(response)
    }
    .await;
    freshness(&api.node, result.unwrap_or_else(IntoResponse::into_response))
}

fn unavailable(e: carrier_storage::StorageError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
}

/// A read that asked for more than this node holds within the wait.
fn behind(node: &StoreNode, field: &'static str, wanted: u64, have: u64) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cache_behind",
        format!("this store's cache has not caught up with {field} {wanted} within {READ_YOUR_WRITES_WAIT:?}"),
    )
    .with_details(serde_json::json!({ field: wanted, "have": have, "lag": node.lag() }))
    .with_header("retry-after", "1")
}

/// Waits until the node's cache commits again or `deadline` passes; `false` at the deadline.
async fn wait_for_commit(node: &StoreNode, deadline: Instant) -> bool {
    let Some(stats) = node.handle.consumer(<CentralEvent as DomainEvent>::CONTEXT) else { return false };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    // A full sync or a gap repair writes without a batch: look again at least every 50 ms.
    let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), stats.acked.notified()).await;
    Instant::now() < deadline
}

/// Waits (bounded) until the node has applied the stream through `position`.
async fn wait_for_position(node: &StoreNode, position: u64) -> bool {
    let deadline = Instant::now() + READ_YOUR_WRITES_WAIT;
    while node.position() < position {
        if Instant::now() >= deadline {
            return false;
        }
        wait_for_commit(node, deadline).await;
    }
    true
}

/// Waits (bounded) until the cache holds `product_id` at `version` or later.
async fn wait_for_version(node: &StoreNode, product_id: &str, version: u64) -> bool {
    let deadline = Instant::now() + READ_YOUR_WRITES_WAIT;
    loop {
        let held = node.handle.db.row(&PRODUCTS, product_id).ok().flatten().map_or(0, |p| p.version);
        if held >= version {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        wait_for_commit(node, deadline).await;
    }
}

/// Sends one stock update to the central, with this store's prefix on its key; the result, and
/// whether the central was unreachable (answered 503 with `Retry-After`).
async fn proxy_update(api: &NodeApi, item: UpdateRequest) -> Result<(UpdateResult, bool), ApiError> {
    let unreachable = |why: String, retry: Duration| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "central_unavailable",
            format!("the central inventory cannot be reached: {why}"),
        )
        .with_header("retry-after", retry.as_secs().max(1).to_string())
    };
    if let Some(open) = api.breaker.open_for() {
        return Err(unreachable("it failed repeatedly; not asking again for a moment".into(), open));
    }
    if !api.node.bus.connected() {
        return Err(unreachable("this node is not connected to NATS".into(), Duration::from_secs(1)));
    }
    let command = CentralCommand::UpdateInventory {
        product_id: item.product_id.clone(),
        delta: item.delta,
        version: item.version,
    };
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    if let Some(key) = &item.idempotency_key {
        // The store's prefix keeps two stores' keys apart at the central (seed 003).
        headers.push((IDEMPOTENCY_KEY_HEADER.to_string(), format!("{}-{key}", api.node.store_id)));
    }
    let body = serde_json::to_vec(&command)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let answer = api.node.bus.request(&command_subject(crate::central::CONTEXT), &headers, body, CENTRAL_TIMEOUT).await;
    let reply: CommandReply = match answer.map(|bytes| serde_json::from_slice::<CommandReply>(&bytes)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            api.breaker.failed();
            return Err(unreachable(format!("an unreadable answer: {e}"), Duration::from_secs(1)));
        }
        Err(e) if e.is_timeout() => {
            // The central may have taken it: only a retry with the same key is safe.
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "central_timeout",
                format!("the central inventory did not answer within {CENTRAL_TIMEOUT:?}; the update may or may not be applied: retry it with the same idempotency key"),
            )
            .with_header("retry-after", "1"));
        }
        Err(e) => {
            api.breaker.failed();
            return Err(unreachable(e.to_string(), Duration::from_secs(1)));
        }
    };
    api.breaker.succeeded();
    if reply.error.as_ref().is_some_and(|e| e.code == "unavailable") {
        let message = reply.error.map(|e| e.message).unwrap_or_default();
        return Err(unreachable(message, Duration::from_secs(1)));
    }
    let (mut result, replayed) = UpdateResult::from_reply(&item.product_id, &reply);
    // Read your writes: answer once this node holds the version the update made.
    if let (true, Some(version)) = (result.applied, result.new_version) {
        if !wait_for_version(&api.node, &item.product_id, version).await {
            result.note = Some(format!(
                "applied at the central; this store's cache does not hold version {version} yet (it lags {} events)",
                api.node.lag()
            ));
        }
    }
    Ok((result, replayed))
}

async fn update(
    State(api): State<NodeApi>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<UpdateRequest>,
) -> Response {
    let result: Result<Response, ApiError> = async {
        if let Some(version) = if_match(&headers)? {
            body.version = body.version.or(Some(version));
        }
        if body.idempotency_key.is_none() {
            body.idempotency_key = crate::central::http::header_key(&headers)?;
        }
        if let Some(store) = &body.store_id {
            if store != &api.node.store_id {
                return Err(ApiError::bad_field(
                    "storeId",
                    format!("this node is {:?}, not {store:?}", api.node.store_id),
                ));
            }
        }
        let (result, replayed) = proxy_update(&api, body).await?;
        let mut status = result.status();
        if status == StatusCode::CONFLICT
            && result.error_type.as_deref() == Some("version_conflict")
            && headers.contains_key(axum::http::header::IF_MATCH)
        {
            status = StatusCode::PRECONDITION_FAILED;
        }
        let mut response = (status, axum::Json(result)).into_response();
        if replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        Ok(response)
    }
    .await;
    freshness(&api.node, result.unwrap_or_else(IntoResponse::into_response))
}

async fn batch_update(
    State(api): State<NodeApi>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Response {
    if headers.contains_key(IDEMPOTENCY_KEY_HEADER) {
        return crate::central::http::batch_header_refused().into_response();
    }
    if body.updates.is_empty() || body.updates.len() > MAX_BATCH {
        let problem = format!("must hold 1 to {MAX_BATCH} updates, got {}", body.updates.len());
        return ApiError::bad_field("updates", problem).into_response();
    }
    if let Some(store) = &body.store_id {
        if store != &api.node.store_id {
            return ApiError::bad_field("storeId", format!("this node is {:?}, not {store:?}", api.node.store_id))
                .into_response();
        }
    }
    if let Some(open) = api.breaker.open_for() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "central_unavailable",
            "the central inventory cannot be reached",
        )
        .with_header("retry-after", open.as_secs().max(1).to_string())
        .into_response();
    }
    // In order, one request each, all in flight together (the central decides them in one group
    // commit, in the order they arrive).
    let results = futures::future::join_all(body.updates.into_iter().map(|item| {
        let api = &api;
        async move {
            let request = UpdateRequest {
                store_id: None,
                product_id: item.product_id.clone(),
                delta: item.delta,
                version: item.version,
                idempotency_key: item.idempotency_key,
            };
            match proxy_update(api, request).await {
                Ok((result, _)) => result,
                Err(e) => UpdateResult {
                    product_id: item.product_id,
                    new_quantity: None,
                    new_version: None,
                    applied: false,
                    last_updated: None,
                    // `central_timeout`: the outcome is unknown; `central_unavailable`: not applied.
                    error_type: Some(e.code.into()),
                    error_message: Some(e.message),
                    note: None,
                },
            }
        }
    }))
    .await;
    let success_count = results.iter().filter(|r| r.applied).count();
    let body = BatchResult {
        store_id: Some(api.node.store_id.clone()),
        total_count: results.len(),
        success_count,
        failure_count: results.len() - success_count,
        results,
    };
    freshness(&api.node, axum::Json(body).into_response())
}

/// The sync status (seed 003's shape, with what JetStream adds).
pub fn status_json(node: &StoreNode) -> serde_json::Value {
    let resync = node.handle.resync_status();
    let stats = node.handle.consumer(<CentralEvent as DomainEvent>::CONTEXT);
    let lost = stats.as_ref().and_then(|s| *s.position_lost.lock().unwrap_or_else(|p| p.into_inner()));
    let lost_count = stats.as_ref().map_or(0, |s| s.positions_lost.load(Ordering::Relaxed));
    let m = &node.monitor;
    serde_json::json!({
        "storeId": node.store_id,
        "inProgress": resync.in_progress,
        "lastSyncTime": rfc3339(m.caught_up_unix_ms.load(Ordering::Relaxed)),
        "lastSyncSuccess": resync.last_success.unwrap_or(true),
        "productCount": node.handle.db.read(|txn| PRODUCTS.len(txn)).unwrap_or(0),
        "syncDuration": resync.last_duration_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)),
        "errorMessage": resync.last_error.clone().unwrap_or_default(),
        "progress": { "done": resync.done, "total": resync.total },
        "fullSync": crate::http::camel_case_keys(serde_json::to_value(&resync).unwrap_or_default()),
        "eventSync": {
            "lastEventOffset": node.position(),
            "streamLastOffset": m.stream_last.load(Ordering::Relaxed),
            "lag": node.lag(),
            "consecutiveFailures": m.consecutive_failures.load(Ordering::Relaxed),
            "fallbackMode": m.fallback_mode.load(Ordering::Relaxed),
            "lastCheckTime": rfc3339(m.last_check_unix_ms.load(Ordering::Relaxed)),
            "positionsLost": lost_count,
            "lastPositionLost": lost.map(|l| serde_json::json!({
                "requested": l.requested,
                "firstRetained": l.first_retained,
                "at": rfc3339(l.at_unix_ms),
            })),
        },
    })
}

async fn sync_status(State(api): State<NodeApi>) -> Response {
    freshness(&api.node, axum::Json(status_json(&api.node)).into_response())
}

async fn force_sync(State(api): State<NodeApi>) -> Response {
    // On a task of its own: a client that hangs up does not cut a sync short.
    let handle = api.node.handle.clone();
    let synced = tokio::spawn(async move { handle.resync("forced").await }).await;
    let synced = synced.unwrap_or_else(|e| {
        Err(carrier_actors::ResyncError::Owner { owner: "central", reason: format!("the sync task failed: {e}") })
    });
    match synced {
        Ok(_) => {
            api.node.monitor.caught_up_unix_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
            axum::Json(serde_json::json!({
                "message": "Force sync completed successfully",
                "status": status_json(&api.node),
            }))
            .into_response()
        }
        Err(carrier_actors::ResyncError::InProgress) => ApiError::new(
            StatusCode::CONFLICT,
            "sync_in_progress",
            "a full sync is already running; see /v1/store/sync/status",
        )
        .with_header("retry-after", "1")
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sync_failed", e.to_string())
            .with_details(status_json(&api.node))
            .with_header("retry-after", "5")
            .into_response(),
    }
}

/// Resident memory of this process, bytes (Linux), from /proc.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1}MB", bytes as f64 / (1024.0 * 1024.0))
}

async fn cache_stats(State(api): State<NodeApi>) -> Response {
    let node = &api.node;
    let size = std::fs::metadata(node.handle.db.path()).map(|m| m.len()).unwrap_or(0);
    let uptime = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(node.monitor.started_unix_ms));
    let secs = uptime.as_secs();
    let body = serde_json::json!({
        "totalProducts": node.handle.db.read(|txn| PRODUCTS.len(txn)).unwrap_or(0),
        "cacheSize": megabytes(size),
        "cacheSizeBytes": size,
        "lastSyncTime": rfc3339(node.monitor.caught_up_unix_ms.load(Ordering::Relaxed)),
        "lastEventOffset": node.position(),
        "initializedAt": rfc3339(node.monitor.started_unix_ms),
        "uptime": format!("{}h{}m{}s", secs / 3600, secs / 60 % 60, secs % 60),
        "memoryUsage": { "resident": resident_bytes().map(megabytes) },
    });
    freshness(node, axum::Json(body).into_response())
}
