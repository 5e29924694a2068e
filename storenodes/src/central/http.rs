//! The central inventory's HTTP API, seed 003's shapes (camelCase JSON, prices as decimal
//! numbers): products, stock updates one at a time or in batches with a result per item, and
//! `/health`. Every command goes through the same path as `cmd.central` (the context's handle,
//! group commit, idempotency keys), and its outcome is mapped from the same [`CommandReply`].

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use carrier_actors::command_reply;
use carrier_actors::Bus;
use carrier_actors::ContextHandle;
use carrier_messages::{Causality, DomainEvent};
use carrier_messages::{CommandReply, IdempotencyKey, IDEMPOTENCY_KEY_HEADER};
use carrier_storage::CommandError;

use super::{Central, CentralCommand, CentralEvent, ProductView, PRODUCTS};
use crate::http::{cents, price, ApiError, ApiKeys, JsonBody, Paging};

/// Most items in one batch update.
pub const MAX_BATCH: usize = 1000;

/// A product as the HTTP API shows it (seed 003's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductJson {
    /// Its id.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// Units in stock.
    pub available: i64,
    /// The version of its last change.
    pub version: u64,
    /// When it last changed, RFC 3339.
    pub last_updated: String,
    /// Its price in currency units (`99.99`).
    pub price: f64,
}

impl From<ProductView> for ProductJson {
    fn from(p: ProductView) -> Self {
        ProductJson {
            product_id: p.product_id,
            name: p.name,
            available: p.available,
            version: p.version,
            last_updated: p.last_updated,
            price: price(p.price),
        }
    }
}

/// One stock update (`POST /v1/inventory/updates`, or an item of a batch).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    /// The store asking (a store node's requests carry it).
    #[serde(default)]
    pub store_id: Option<String>,
    /// The product.
    pub product_id: String,
    /// The change; not 0.
    pub delta: i64,
    /// The version the caller expects the product to be at.
    #[serde(default)]
    pub version: Option<u64>,
    /// Makes a retry safe: a second send with the key is answered with the first's result.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A batch of updates (`POST /v1/inventory/batch-updates`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// The store asking.
    #[serde(default)]
    pub store_id: Option<String>,
    /// The updates, each decided on its own.
    pub updates: Vec<BatchItem>,
}

/// An item of a batch.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchItem {
    /// The product.
    pub product_id: String,
    /// The change; not 0.
    pub delta: i64,
    /// The version the caller expects.
    #[serde(default)]
    pub version: Option<u64>,
    /// The item's own idempotency key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The result of one update (seed 003's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResult {
    /// The product.
    pub product_id: String,
    /// Units in stock after it (or now, when it was refused for a version or stock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_quantity: Option<i64>,
    /// The product's version after it (or now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<u64>,
    /// Whether it was carried out.
    pub applied: bool,
    /// When, for an applied update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// Why not: `version_conflict`, `insufficient_stock`, `product_not_found`, `invalid`,
    /// `idempotency_key_reused`, `idempotency_key_in_flight`, `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Why not, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// A note (a store node says when its cache has not caught up with an applied update yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl UpdateResult {
    /// The result a command's reply says, and whether it was a replay.
    pub fn from_reply(product_id: &str, reply: &CommandReply) -> (UpdateResult, bool) {
        let mut result = UpdateResult {
            product_id: product_id.to_string(),
            new_quantity: None,
            new_version: None,
            applied: reply.ok,
            last_updated: None,
            error_type: None,
            error_message: None,
            note: None,
        };
        if let Some(event) = &reply.event {
            let data = event.data.as_ref();
            result.new_quantity = data.and_then(|d| d.get("available")).and_then(|v| v.as_i64());
            result.new_version = Some(event.aggregate_version);
            result.last_updated = data.and_then(|d| d.get("last_updated")).and_then(|v| v.as_str()).map(String::from);
        }
        if let Some(error) = &reply.error {
            let details = error.details.as_ref();
            result.new_quantity = details.and_then(|d| d.get("available")).and_then(|v| v.as_i64());
            result.new_version = details.and_then(|d| d.get("current_version")).and_then(|v| v.as_u64());
            result.error_type =
                Some(if error.code == "not_found" { "product_not_found".to_string() } else { error.code.clone() });
            result.error_message = Some(error.message.clone());
        }
        (result, reply.replayed)
    }

    /// The HTTP status a single update answers with.
    pub fn status(&self) -> StatusCode {
        match self.error_type.as_deref() {
            None => StatusCode::OK,
            Some("version_conflict" | "idempotency_key_in_flight") => StatusCode::CONFLICT,
            Some("product_not_found") => StatusCode::NOT_FOUND,
            Some("insufficient_stock" | "idempotency_key_reused") => StatusCode::UNPROCESSABLE_ENTITY,
            Some("unavailable") => StatusCode::SERVICE_UNAVAILABLE,
            Some(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The batch's answer (seed 003's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// The store that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// Items.
    pub total_count: usize,
    /// Items applied.
    pub success_count: usize,
    /// Items refused.
    pub failure_count: usize,
    /// One per item, in order.
    pub results: Vec<UpdateResult>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct CentralApi {
    /// The running central context.
    pub handle: ContextHandle<Central>,
    /// The connection (the event feed reads the stream through it).
    pub bus: Bus,
}

/// The API: `/health` open, everything under `/v1` behind `X-API-Key`.
pub fn router(api: CentralApi, keys: ApiKeys) -> Router {
    let protected = Router::new()
        .route("/v1/inventory", get(list).post(create))
        .route("/v1/inventory/updates", post(update))
        .route("/v1/inventory/batch-updates", post(batch_update))
        .route("/v1/inventory/{product_id}", get(product).patch(modify).delete(delete))
        .route("/v1/events", get(events))
        .with_state(api.clone());
    crate::http::api(Router::new().route("/health", get(health)).with_state(api), protected, keys)
}

async fn health(State(api): State<CentralApi>) -> Response {
    let count = api.handle.db.read(|txn| PRODUCTS.len(txn)).unwrap_or(0);
    crate::http::health(serde_json::json!({ "service": "central-inventory", "products": count }))
}

/// Runs a command on the central's writer and answers with its wire reply.
async fn execute(api: &CentralApi, command: CentralCommand, key: Option<IdempotencyKey>) -> CommandReply {
    let causality = Causality { idempotency: key, ..Causality::default() };
    let result = api.handle.execute_once(command, causality).await.map_err(CommandError::from);
    command_reply(result)
}

/// The `Idempotency-Key` header's value; a value that is not text is a 400 (not ignored, which
/// would run the command without its key).
pub fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|v| {
            v.to_str()
                .map(String::from)
                .map_err(|_| ApiError::bad_field(IDEMPOTENCY_KEY_HEADER, "must be visible ASCII text"))
        })
        .transpose()
}

/// A batch takes keys per item: one header for the whole batch would make a retry look safe
/// while deciding every item again.
pub fn batch_header_refused() -> ApiError {
    ApiError::bad_field(
        IDEMPOTENCY_KEY_HEADER,
        "a batch takes an idempotencyKey per item in its body, not one header for the whole batch",
    )
}

/// The idempotency key of a request: the body's, else the header's.
fn key_of(
    body: Option<&str>,
    headers: &HeaderMap,
    command: &CentralCommand,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let header = header_key(headers)?;
    match body.or(header.as_deref()) {
        None => Ok(None),
        Some(key) => IdempotencyKey::for_command(key, command)
            .map(Some)
            .map_err(|e| ApiError::bad_field("idempotencyKey", e.problem)),
    }
}

/// A refusal that is not a per-item result, as an HTTP error.
fn refusal(reply: &CommandReply) -> ApiError {
    let (code, message, details) = match &reply.error {
        Some(e) => (e.code.as_str(), e.message.clone(), e.details.clone()),
        None => ("unavailable", "no answer".to_string(), None),
    };
    let (status, code) = match code {
        "not_found" => (StatusCode::NOT_FOUND, "product_not_found"),
        "already_exists" => (StatusCode::CONFLICT, "product_exists"),
        "version_conflict" => (StatusCode::CONFLICT, "version_conflict"),
        "idempotency_key_in_flight" => (StatusCode::CONFLICT, "idempotency_key_in_flight"),
        "idempotency_key_reused" => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        "invalid" | "bad_request" => (StatusCode::BAD_REQUEST, "invalid"),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
    };
    let mut error = ApiError::new(status, code, message);
    error.details = details.map(crate::http::camel_case_keys);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        error = error.with_header("retry-after", "1");
    }
    error
}

/// The product as the command left it, from the event it recorded (every event but a deletion
/// carries the whole product): a replay answers what the first send made, not what the product
/// has become since.
fn product_after(reply: &CommandReply) -> Option<ProductJson> {
    let event = reply.event.as_ref()?;
    let data = event.data.as_ref()?;
    Some(ProductJson {
        product_id: event.aggregate_id.clone(),
        name: data.get("name")?.as_str()?.to_string(),
        available: data.get("available")?.as_i64()?,
        version: event.aggregate_version,
        last_updated: data.get("last_updated")?.as_str()?.to_string(),
        price: price(data.get("price")?.as_i64()?),
    })
}

fn replayed_header(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    response
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    product_id: String,
    name: String,
    price: f64,
    available: i64,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn create(
    State(api): State<CentralApi>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRequest>,
) -> Response {
    let price = match cents("price", body.price) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let command = CentralCommand::CreateProduct {
        product_id: body.product_id.clone(),
        name: body.name,
        price,
        available: body.available,
    };
    let key = match key_of(body.idempotency_key.as_deref(), &headers, &command) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let reply = execute(&api, command, key).await;
    if !reply.ok {
        return refusal(&reply).into_response();
    }
    match product_after(&reply) {
        Some(product) => replayed_header((StatusCode::CREATED, axum::Json(product)).into_response(), reply.replayed),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the recorded event carries no product")
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ListParams {
    offset: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

async fn list(State(api): State<CentralApi>, Query(params): Query<ListParams>) -> Response {
    let paging = match Paging::parse(params.offset.as_deref(), params.limit.as_deref(), 50, super::MAX_PAGE) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // Read before the page: every event up to it was committed before it was published, so the
    // page reflects it; a client that pages through everything and then follows the event feed
    // from the first page's `asOfOffset` misses nothing (a later event it already has is stale
    // by its version).
    let as_of = api.bus.last_sequence(<CentralEvent as DomainEvent>::STREAM).await.ok();
    // `after` pages by id (a walk of everything misses no row however rows come and go between
    // pages); `offset` pages by position, as seed 003 does.
    let read = api.handle.db.read(|txn| {
        let rows = match params.after.as_deref() {
            Some(after) => PRODUCTS.page(txn, Some(after), paging.limit)?,
            None => PRODUCTS.slice(txn, paging.offset, paging.limit)?,
        };
        Ok((rows, PRODUCTS.len(txn)?))
    });
    match read {
        Ok((rows, total)) => {
            let next = (rows.len() == paging.limit).then(|| rows.last().map(|(id, _)| id.clone())).flatten();
            let products: Vec<ProductJson> = rows.into_iter().map(|(id, p)| ProductView::of(id, p).into()).collect();
            let has_more = match params.after {
                Some(_) => next.is_some(),
                None => (paging.offset + products.len()) < total as usize,
            };
            axum::Json(serde_json::json!({
                "products": products,
                "pagination": { "offset": paging.offset, "limit": paging.limit, "total": total, "hasMore": has_more, "next": next },
                "asOfOffset": as_of,
            }))
            .into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).into_response(),
    }
}

async fn product(State(api): State<CentralApi>, Path(product_id): Path<String>) -> Response {
    match api.handle.db.read(|txn| PRODUCTS.get(txn, &product_id)) {
        Ok(Some(row)) => {
            let version = row.version;
            let mut response = axum::Json(ProductJson::from(ProductView::of(product_id, row))).into_response();
            if let Ok(etag) = axum::http::HeaderValue::from_str(&format!("\"{version}\"")) {
                response.headers_mut().insert(axum::http::header::ETAG, etag);
            }
            response
        }
        Ok(None) => ApiError::new(StatusCode::NOT_FOUND, "product_not_found", "no such product")
            .with_details(serde_json::json!({ "productId": product_id }))
            .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModifyRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    version: Option<u64>,
}

/// The version an `If-Match` header names (`"7"` or `7`), when it names one.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim().trim_start_matches("W/").trim_matches('"');
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::bad_field("If-Match", format!("must name a version, like \"7\"; got {text:?}")))
}

async fn modify(
    State(api): State<CentralApi>,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ModifyRequest>,
) -> Response {
    let result: Result<Response, ApiError> = async {
        let price = body.price.map(|p| cents("price", p)).transpose()?;
        let version = body.version.or(if_match(&headers)?);
        let command = CentralCommand::ModifyProduct { product_id: product_id.clone(), name: body.name, price, version };
        let key = key_of(None, &headers, &command)?;
        let reply = execute(&api, command, key).await;
        if !reply.ok {
            return Err(precondition(refusal(&reply), &headers));
        }
        let product = product_after(&reply).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "product_changed", "changed again before it could be read")
        })?;
        Ok(replayed_header(axum::Json(product).into_response(), reply.replayed))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A version conflict on a request that named its version in `If-Match` is a failed
/// precondition (412), as HTTP clients expect.
fn precondition(error: ApiError, headers: &HeaderMap) -> ApiError {
    if error.code == "version_conflict" && headers.contains_key(axum::http::header::IF_MATCH) {
        return ApiError { status: StatusCode::PRECONDITION_FAILED, ..error };
    }
    error
}

async fn delete(State(api): State<CentralApi>, Path(product_id): Path<String>, headers: HeaderMap) -> Response {
    let result: Result<Response, ApiError> = async {
        let command = CentralCommand::DeleteProduct { product_id: product_id.clone(), version: if_match(&headers)? };
        let key = key_of(None, &headers, &command)?;
        let reply = execute(&api, command, key).await;
        if !reply.ok {
            return Err(precondition(refusal(&reply), &headers));
        }
        let version = reply.event.as_ref().map(|e| e.aggregate_version);
        let body = serde_json::json!({ "productId": product_id, "deleted": true, "version": version });
        Ok(replayed_header(axum::Json(body).into_response(), reply.replayed))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Decides one stock update; the result and whether it was a replay.
async fn update_one(
    api: &CentralApi,
    headers: &HeaderMap,
    product_id: String,
    delta: i64,
    version: Option<u64>,
    key: Option<&str>,
) -> (UpdateResult, bool) {
    let command = CentralCommand::UpdateInventory { product_id: product_id.clone(), delta, version };
    let key = match key_of(key, headers, &command) {
        Ok(key) => key,
        Err(e) => {
            let reply = CommandReply::failed("invalid", e.message);
            return UpdateResult::from_reply(&product_id, &reply);
        }
    };
    UpdateResult::from_reply(&product_id, &execute(api, command, key).await)
}

async fn update(
    State(api): State<CentralApi>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateRequest>,
) -> Response {
    let version = match if_match(&headers) {
        Ok(v) => body.version.or(v),
        Err(e) => return e.into_response(),
    };
    let (result, replayed) =
        update_one(&api, &headers, body.product_id, body.delta, version, body.idempotency_key.as_deref()).await;
    let status = match result.status() {
        StatusCode::CONFLICT
            if result.error_type.as_deref() == Some("version_conflict") && headers.contains_key("if-match") =>
        {
            StatusCode::PRECONDITION_FAILED
        }
        status => status,
    };
    replayed_header((status, axum::Json(result)).into_response(), replayed)
}

async fn batch_update(
    State(api): State<CentralApi>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Response {
    if headers.contains_key(IDEMPOTENCY_KEY_HEADER) {
        return batch_header_refused().into_response();
    }
    if body.updates.is_empty() || body.updates.len() > MAX_BATCH {
        let problem = format!("must hold 1 to {MAX_BATCH} updates, got {}", body.updates.len());
        return ApiError::bad_field("updates", problem).into_response();
    }
    // The items are queued in order on the first poll (join_all polls each in turn), so they
    // share the writer's group commit and each sees the ones before it; each is decided on its
    // own, so a refused item leaves the others.
    let no_headers = HeaderMap::new();
    let results = futures::future::join_all(body.updates.into_iter().map(|item| {
        let (api, no_headers) = (&api, &no_headers);
        async move {
            let key = item.idempotency_key.as_deref();
            update_one(api, no_headers, item.product_id, item.delta, item.version, key).await.0
        }
    }))
    .await;
    let success_count = results.iter().filter(|r| r.applied).count();
    let body = BatchResult {
        store_id: body.store_id,
        total_count: results.len(),
        success_count,
        failure_count: results.len() - success_count,
        results,
    };
    axum::Json(body).into_response()
}

/// Longest a feed request waits for an event.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Most events in one feed answer.
pub const MAX_EVENTS: usize = 1000;

#[derive(Deserialize)]
struct FeedParams {
    offset: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

/// `GET /v1/events?offset=&limit=&wait=`: the stream `CENTRAL` for clients that do not speak
/// NATS. `offset` is the last stream sequence the client has (0 for none); the answer holds the
/// events after it, as soon as there is at least one, waiting up to `wait` seconds (default 20,
/// at most 60) for the first; a wait that ends with none answers 200 with no events and the same
/// offset. An offset the stream no longer holds the events after answers 409
/// `offset_not_retained`: the client full-syncs (`GET /v1/inventory`, then the feed from its
/// `asOfOffset`).
async fn events(State(api): State<CentralApi>, Query(params): Query<FeedParams>) -> Response {
    let result: Result<Response, ApiError> = async {
        let number = |field: &str, raw: Option<&str>, default: u64| -> Result<u64, ApiError> {
            match raw {
                None | Some("") => Ok(default),
                Some(raw) => raw.parse::<u64>().map_err(|_| ApiError::bad_field(field, format!("must be a whole number of 0 or more, got {raw:?}"))),
            }
        };
        let offset = number("offset", params.offset.as_deref(), 0)?;
        let limit = number("limit", params.limit.as_deref(), 100)?;
        if limit == 0 || limit > MAX_EVENTS as u64 {
            return Err(ApiError::bad_field("limit", format!("must be 1 to {MAX_EVENTS}, got {limit}")));
        }
        let wait = std::time::Duration::from_secs(number("wait", params.wait.as_deref(), 20)?.min(MAX_WAIT_SECONDS));
        let stream = <CentralEvent as DomainEvent>::STREAM;
        let unavailable = |e: carrier_actors::BusError| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).with_header("retry-after", "1")
        };
        let requested = offset.checked_add(1).ok_or_else(|| ApiError::bad_field("offset", "is too large"))?;
        let (first, last) = api.bus.stream_bounds(stream).await.map_err(unavailable)?;
        if offset > last {
            // The stream was recreated (its sequences started over) or the client's offset is not
            // one of this stream's: following on would skip events.
            let mut error = ApiError::new(
                StatusCode::CONFLICT,
                "offset_ahead",
                format!("the stream's last offset is {last}, below {offset}: full-sync, then follow from asOfOffset"),
            );
            error.details = Some(serde_json::json!({ "requested": requested, "lastOffset": last }));
            return Err(error);
        }
        if first > requested {
            let mut error = ApiError::new(
                StatusCode::CONFLICT,
                "offset_not_retained",
                format!("the stream holds events from {first} on; events {requested} to {} are gone: full-sync, then follow from asOfOffset", first - 1),
            );
            error.details = Some(serde_json::json!({ "requested": requested, "firstRetained": first }));
            return Err(error);
        }
        let mut events = Vec::new();
        if offset < last || !wait.is_zero() {
            let mut reader = api.bus.replay(stream, <CentralEvent as DomainEvent>::STREAM_SUBJECTS, requested, limit as usize).await.map_err(unavailable)?;
            let wait = if offset < last { std::time::Duration::from_secs(5) } else { wait };
            let deliveries = reader.next_batch(wait).await.map_err(unavailable)?;
            // Trimmed between the bounds and the read: JetStream starts at its first retained
            // sequence without a word.
            if let Some(first_delivered) = deliveries.first().map(|d| d.stream_seq).filter(|seq| *seq > requested) {
                let mut error = ApiError::new(
                    StatusCode::CONFLICT,
                    "offset_not_retained",
                    format!("the stream holds events from {first_delivered} on: full-sync, then follow from asOfOffset"),
                );
                error.details = Some(serde_json::json!({ "requested": requested, "firstRetained": first_delivered }));
                return Err(error);
            }
            for delivery in deliveries {
                events.push(feed_event(&delivery));
            }
        }
        let next = events.last().and_then(|e| e["offset"].as_u64()).unwrap_or(offset);
        Ok(axum::Json(serde_json::json!({ "events": events, "offset": next, "lastOffset": last.max(next) })).into_response())
    }
    .await;
    match result {
        Ok(response) => response,
        Err(e) if e.code == "offset_not_retained" => {
            // The shape: the positions beside the code, where a client looks first.
            let details = e.details.clone().unwrap_or_default();
            let body = serde_json::json!({ "error": {
                "code": e.code, "message": e.message,
                "requested": details["requested"], "firstRetained": details["firstRetained"],
            }});
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// One stream message as the feed shows it (seed 003's event shape).
fn feed_event(delivery: &carrier_actors::Delivery) -> serde_json::Value {
    let decoded = carrier_messages::Decoded::<CentralEvent>::decode(
        &delivery.subject,
        |name| delivery.header(name),
        &delivery.payload,
    );
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            return serde_json::json!({ "offset": delivery.stream_seq, "eventType": "undecodable", "error": e.to_string() });
        }
    };
    let envelope = &decoded.envelope;
    let version = envelope.aggregate_version;
    let (kind, data) = match &decoded.event {
        CentralEvent::ProductCreated(e) => {
            ("product_created", product_data(&e.id, &e.name, e.price, e.available, version, &e.last_updated))
        }
        CentralEvent::ProductModified(e) => {
            ("product_modified", product_data(&e.id, &e.name, e.price, e.available, version, &e.last_updated))
        }
        CentralEvent::InventoryUpdated(e) => {
            let mut data = product_data(&e.id, &e.name, e.price, e.available, version, &e.last_updated);
            data["delta"] = e.delta.into();
            ("inventory_updated", data)
        }
        CentralEvent::ProductDeleted(e) => (
            "product_deleted",
            serde_json::json!({ "productId": e.id, "deleted": true, "version": version, "lastUpdated": e.last_updated }),
        ),
    };
    serde_json::json!({
        "offset": delivery.stream_seq,
        "eventId": envelope.event_id.to_string(),
        "timestamp": envelope.occurred_at_rfc3339(),
        "eventType": kind,
        "productId": envelope.aggregate_id,
        "version": version,
        "data": data,
    })
}

fn product_data(
    id: &str,
    name: &str,
    cents: i64,
    available: i64,
    version: u64,
    last_updated: &str,
) -> serde_json::Value {
    serde_json::to_value(ProductJson {
        product_id: id.to_string(),
        name: name.to_string(),
        available,
        version,
        last_updated: last_updated.to_string(),
        price: price(cents),
    })
    .unwrap_or_default()
}
