//! Whisko's HTTP API (axum): commands go to the event stores in this process, queries to the
//! projections. JSON in camelCase; errors as `{"error":{"code","message","details"?}}`.
//!
//! Every command answers with a `position` (`USERS:42`). A query given it, as `?minPosition=` or
//! the `Carrier-Min-Position` header, answers once its projection has applied that far (at most
//! 5 s, else 503 `behind`); without it a query answers at once and says in
//! `Carrier-Applied-Position` how far its projection has applied and in `Carrier-Lag` how many
//! messages of the stream it has yet to apply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::Router;
use carrier_actors::command_reply;
use carrier_actors::Bus;
use carrier_actors::{Aggregate, EventStore};
use carrier_actors::{Position, PositionWait};
use carrier_http::{ApiError, ApiKeys, JsonBody, Paging};
use carrier_messages::Causality;
use carrier_messages::DomainEvent;
use carrier_messages::{CommandReply, IdempotencyKey, IDEMPOTENCY_KEY_HEADER, MIN_POSITION_HEADER};
use serde::{Deserialize, Serialize};

use crate::billing::{payment_id, BillingCommand, Payment};
use crate::events::{BillingEvent, PaymentItem, PaymentStatus, UsersEvent};
use crate::users::{User, UsersCommand};
use crate::views::{self, PaymentView, PaymentViewsHandle, UserView, UserViewsHandle};

/// How long a query given a position waits for its projection.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_millis(carrier_messages::READ_YOUR_WRITES_WAIT_MS);

/// What the API serves from.
#[derive(Clone)]
pub struct WhiskoApi {
    /// The users' event store.
    pub users: EventStore<User>,
    /// The payments' event store.
    pub billing: EventStore<Payment>,
    /// The users projection.
    pub user_views: UserViewsHandle,
    /// The payments projection.
    pub payment_views: PaymentViewsHandle,
    /// Each stream's last sequence, as last read (for `Carrier-Lag`).
    pub stream_ends: Arc<StreamEnds>,
    /// Stops the stream watcher when the last clone of the API goes (the server stopped).
    _watcher: Arc<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The last sequence of each stream, read once a second by [`StreamEnds::watch`].
#[derive(Debug, Default)]
pub struct StreamEnds {
    users: AtomicU64,
    billing: AtomicU64,
}

impl StreamEnds {
    /// Reads both streams' last sequences once a second, for as long as the task lives.
    pub fn watch(self: &Arc<Self>, bus: Bus) -> tokio::task::JoinHandle<()> {
        let ends = self.clone();
        tokio::spawn(async move {
            loop {
                for (stream, slot) in [
                    (<UsersEvent as DomainEvent>::STREAM, &ends.users),
                    (<BillingEvent as DomainEvent>::STREAM, &ends.billing),
                ] {
                    if let Ok(last) = bus.last_sequence(stream).await {
                        slot.fetch_max(last, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

impl WhiskoApi {
    /// The API over a running [`Whisko`](crate::Whisko), with its stream watcher started.
    pub fn of(whisko: &crate::Whisko) -> WhiskoApi {
        let stream_ends = Arc::new(StreamEnds::default());
        let watcher = Arc::new(AbortOnDrop(Some(stream_ends.watch(whisko.system.bus.clone()))));
        WhiskoApi {
            _watcher: watcher,
            users: whisko.users.clone(),
            billing: whisko.billing.clone(),
            user_views: whisko.user_views.clone(),
            payment_views: whisko.payment_views.clone(),
            stream_ends,
        }
    }
}

/// The API: `/health` open, the rest behind `X-API-Key` when keys are configured.
pub fn router(api: WhiskoApi, keys: ApiKeys) -> Router {
    let protected = Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{id}", get(get_user).delete(delete_user))
        .route("/users/{id}/profile", patch(update_profile))
        .route("/users/{id}/contact", patch(update_contact))
        .route("/users/{id}/payments", get(user_payments))
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(get_payment).patch(update_payment))
        .route("/payments/{id}/status", post(change_status))
        .route("/payments/by-order/{order_code}", get(payment_by_order))
        .with_state(api.clone());
    let open = Router::new().route("/health", get(health)).with_state(api);
    if keys.is_empty() {
        carrier_http::api(open.merge(protected), Router::new(), keys)
    } else {
        carrier_http::api(open, protected, keys)
    }
}

async fn health(State(api): State<WhiskoApi>) -> Response {
    let users = api.user_views.db.read(|txn| views::USERS.len(txn)).unwrap_or(0);
    let payments = api.payment_views.db.read(|txn| views::PAYMENTS.len(txn)).unwrap_or(0);
    carrier_http::health(serde_json::json!({
        "service": "whisko",
        "users": users,
        "payments": payments,
        "appliedPositions": {
            "users": api.user_views.applied(<UsersEvent as DomainEvent>::STREAM),
            "billing": api.payment_views.applied(<BillingEvent as DomainEvent>::STREAM),
        },
    }))
}

// ---- commands ----

/// `POST /users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewUser {
    name: String,
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    address: String,
}

/// `PATCH /users/{id}/profile`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Profile {
    name: String,
    #[serde(default)]
    address: String,
}

/// `PATCH /users/{id}/contact`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Contact {
    email: String,
    #[serde(default)]
    phone: String,
}

/// An item as the API spells it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Item {
    name: String,
    quantity: i64,
    price: i64,
}

/// `POST /payments`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewPayment {
    user_id: String,
    order_code: i64,
    amount: i64,
    #[serde(default)]
    items: Vec<Item>,
}

/// `PATCH /payments/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PaymentChange {
    amount: i64,
    #[serde(default)]
    items: Vec<Item>,
}

/// `POST /payments/{id}/status`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StatusChange {
    status: String,
}

fn items(items: Vec<Item>) -> Vec<PaymentItem> {
    items.into_iter().map(|i| PaymentItem { name: i.name, quantity: i.quantity, price: i.price }).collect()
}

/// The request's idempotency key for `command`.
fn key<C: Serialize>(headers: &HeaderMap, command: &C) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let value =
        value.to_str().map_err(|_| ApiError::bad_field(IDEMPOTENCY_KEY_HEADER, "must be visible ASCII text"))?;
    IdempotencyKey::for_command(value, command)
        .map(Some)
        .map_err(|e| ApiError::bad_field(IDEMPOTENCY_KEY_HEADER, e.problem))
}

async fn run<A: Aggregate>(
    store: &EventStore<A>,
    headers: &HeaderMap,
    command: A::Command,
) -> Result<CommandReply, ApiError>
where
    A::Command: Serialize,
{
    // The command's span continues the caller's trace when it sent a `traceparent` (a
    // malformed one is ignored, as W3C asks); the events it records name this span as theirs.
    let caller = headers
        .get(carrier_messages::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<carrier_messages::TraceContext>().ok());
    let span = caller.map(|c| c.child()).unwrap_or_else(carrier_messages::TraceContext::new_root);
    let causality = Causality { idempotency: key(headers, &command)?, trace: Some(span), ..Causality::default() };
    let started = std::time::SystemTime::now();
    let reply = command_reply(store.execute(command, causality).await);
    command_span::<A>(span, caller, started, &reply);
    if reply.ok {
        Ok(reply)
    } else {
        Err(refusal(&reply))
    }
}

/// The HTTP command's span, when an exporter is installed (as the NATS path records its own).
fn command_span<A: Aggregate>(
    span: carrier_messages::TraceContext,
    parent: Option<carrier_messages::TraceContext>,
    start: std::time::SystemTime,
    reply: &CommandReply,
) {
    use carrier_actors::telemetry::{self, Attribute};
    if !telemetry::enabled() {
        return;
    }
    let context = <A::Event as DomainEvent>::CONTEXT;
    let mut attributes = vec![Attribute::new("carrier.context", context), Attribute::new("carrier.ok", reply.ok)];
    if let Some(event) = &reply.event {
        attributes.push(Attribute::new("carrier.event_id", event.event_id.clone()));
        attributes.push(Attribute::new("carrier.event_type", event.event_type.clone()));
        attributes.push(Attribute::new("carrier.aggregate_version", event.aggregate_version as i64));
    }
    if let Some(position) = &reply.position {
        attributes.push(Attribute::new("carrier.position", position.clone()));
    }
    telemetry::record(telemetry::SpanRecord {
        name: format!("HTTP command {context}"),
        kind: telemetry::Kind::Server,
        span,
        parent,
        start,
        end: std::time::SystemTime::now(),
        attributes,
        error: reply.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
    });
}

/// A refused command as an HTTP error.
fn refusal(reply: &CommandReply) -> ApiError {
    let (code, message, details) = match &reply.error {
        Some(e) => (e.code.clone(), e.message.clone(), e.details.clone()),
        None => ("unavailable".to_string(), "no answer".to_string(), None),
    };
    let status = match code.as_str() {
        "not_found" => StatusCode::NOT_FOUND,
        "invalid" => StatusCode::UNPROCESSABLE_ENTITY,
        "bad_request" => StatusCode::BAD_REQUEST,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        // already_exists, conflict, user_deleted, illegal_transition, payment_not_editable,
        // order_already_paid_for, no_change: the state does not allow it.
        _ => StatusCode::CONFLICT,
    };
    let code: &'static str = match code.as_str() {
        "not_found" => "not_found",
        "invalid" => "invalid_field",
        "bad_request" => "bad_request",
        "unavailable" => "unavailable",
        "already_exists" => "already_exists",
        "conflict" => "conflict",
        "user_deleted" => "user_deleted",
        "illegal_transition" => "illegal_transition",
        "payment_not_editable" => "payment_not_editable",
        "order_already_paid_for" => "order_already_paid_for",
        "no_change" => "no_change",
        "idempotency_key_reused" => "idempotency_key_reused",
        _ => "rejected",
    };
    let mut error = ApiError::new(status, code, message);
    error.details = details.map(carrier_http::camel_case_keys);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        error = error.with_header("retry-after", "1");
    }
    error
}

/// A command's answer: the entity's id, its version and where its event is.
fn accepted(status: StatusCode, reply: &CommandReply) -> Response {
    let event = reply.event.as_ref();
    let body = serde_json::json!({
        "id": event.map(|e| e.aggregate_id.clone()),
        "version": event.map(|e| e.aggregate_version),
        "position": reply.position,
        "event": event.map(|e| e.event_type.clone()),
        "replayed": reply.replayed,
    });
    let mut response = carrier_http::json(status, &body);
    if let Some(position) = reply.position.as_deref().and_then(|p| HeaderValue::from_str(p).ok()) {
        response.headers_mut().insert("carrier-position", position);
    }
    response
}

async fn create_user(
    State(api): State<WhiskoApi>,
    headers: HeaderMap,
    JsonBody(user): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    // A resend with the same idempotency key must name the same user, or it would register a
    // second one: the id is then derived from the key.
    const KEYED_USERS: uuid::Uuid = uuid::Uuid::from_u128(0x7c3e_9b1d_4a55_4e0f_8f21_6d0a_3b9e_1f42);
    let id = match headers.get(IDEMPOTENCY_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        Some(key) => uuid::Uuid::new_v5(&KEYED_USERS, key.as_bytes()).to_string(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let command =
        UsersCommand::CreateUser { id, name: user.name, email: user.email, phone: user.phone, address: user.address };
    let reply = run(&api.users, &headers, command).await?;
    Ok(accepted(StatusCode::CREATED, &reply))
}

async fn update_profile(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(profile): JsonBody<Profile>,
) -> Result<Response, ApiError> {
    let reply =
        run(&api.users, &headers, UsersCommand::UpdateProfile { id, name: profile.name, address: profile.address })
            .await?;
    Ok(accepted(StatusCode::OK, &reply))
}

async fn update_contact(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(contact): JsonBody<Contact>,
) -> Result<Response, ApiError> {
    let reply =
        run(&api.users, &headers, UsersCommand::UpdateContact { id, email: contact.email, phone: contact.phone })
            .await?;
    Ok(accepted(StatusCode::OK, &reply))
}

async fn delete_user(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let reply = run(&api.users, &headers, UsersCommand::DeleteUser { id }).await?;
    Ok(accepted(StatusCode::OK, &reply))
}

async fn create_payment(
    State(api): State<WhiskoApi>,
    headers: HeaderMap,
    JsonBody(payment): JsonBody<NewPayment>,
) -> Result<Response, ApiError> {
    if payment.order_code <= 0 {
        return Err(ApiError::bad_field(
            "orderCode",
            format!("must be a positive whole number, got {}", payment.order_code),
        )
        .with_status(StatusCode::UNPROCESSABLE_ENTITY));
    }
    // The payer must be a live user, as this instance's projection knows them (a user created
    // just before may be named with minPosition, like any read).
    let wait = min_position(&headers, &HashMap::new())?;
    if let Some(position) = &wait {
        if position.stream == <UsersEvent as DomainEvent>::STREAM {
            api.user_views.wait_for_position(position, READ_YOUR_WRITES_WAIT).await.map_err(behind)?;
        }
    }
    let user_id = payment.user_id.clone();
    match api.user_views.db.read(|txn| views::user(txn, &user_id)) {
        Ok(Some(user)) if !user.deleted => {}
        Ok(Some(_)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "user_deleted", format!("user {user_id:?} was deleted"))
                .with_details(serde_json::json!({ "field": "userId" })))
        }
        Ok(None) => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_user", format!("no user {user_id:?}"))
                .with_details(serde_json::json!({ "field": "userId" })))
        }
        Err(e) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())),
    }
    let command = BillingCommand::CreatePayment {
        id: payment_id(payment.order_code),
        user_id: payment.user_id,
        order_code: payment.order_code,
        amount: payment.amount,
        items: items(payment.items),
    };
    let reply = run(&api.billing, &headers, command).await?;
    Ok(accepted(StatusCode::CREATED, &reply))
}

async fn update_payment(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(change): JsonBody<PaymentChange>,
) -> Result<Response, ApiError> {
    let command = BillingCommand::UpdatePayment { id, amount: change.amount, items: items(change.items) };
    let reply = run(&api.billing, &headers, command).await?;
    Ok(accepted(StatusCode::OK, &reply))
}

async fn change_status(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(change): JsonBody<StatusChange>,
) -> Result<Response, ApiError> {
    let status = PaymentStatus::parse(&change.status).ok_or_else(|| {
        let names: Vec<&str> = PaymentStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::bad_field("status", format!("must be one of {}, got {:?}", names.join(", "), change.status))
    })?;
    let reply = run(&api.billing, &headers, BillingCommand::ChangeStatus { id, status }).await?;
    Ok(accepted(StatusCode::OK, &reply))
}

// ---- queries ----

/// The position a query asks to read from: `?minPosition=` or the `Carrier-Min-Position` header.
fn min_position(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<Option<Position>, ApiError> {
    let raw = match query.get("minPosition") {
        Some(value) => Some(value.clone()),
        None => headers
            .get(MIN_POSITION_HEADER)
            .map(|v| v.to_str().map(String::from).map_err(|_| ApiError::bad_field(MIN_POSITION_HEADER, "must be text")))
            .transpose()?,
    };
    raw.map(|raw| raw.parse::<Position>().map_err(|problem| ApiError::bad_field("minPosition", problem))).transpose()
}

fn behind(wait: PositionWait) -> ApiError {
    match wait {
        PositionWait::NotRead { stream, .. } => {
            ApiError::bad_field("minPosition", format!("this endpoint reads no stream {stream:?}"))
        }
        PositionWait::Behind { applied, wanted, .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "behind",
            format!("the projection has applied through {applied}, not yet {wanted}; try again"),
        )
        .with_details(serde_json::json!({ "applied": applied, "wanted": wanted }))
        .with_header("retry-after", "1"),
    }
}

/// Waits for the position a query names (if it names one for `stream`), and returns the headers
/// saying how far the projection is.
async fn read_from<K: carrier_storage::ContextKind>(
    handle: &carrier_actors::ContextHandle<K>,
    stream: &'static str,
    end: &AtomicU64,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<HowFar, ApiError> {
    if let Some(position) = min_position(headers, query)? {
        handle.wait_for_position(&position, READ_YOUR_WRITES_WAIT).await.map_err(behind)?;
    }
    let applied = handle.applied(stream).unwrap_or(0);
    let lag = end.load(Ordering::Relaxed).saturating_sub(applied);
    Ok([("carrier-applied-position", format!("{stream}:{applied}")), ("carrier-lag", lag.to_string())])
}

impl WhiskoApi {
    /// `read_from` the users projection.
    async fn users_at(&self, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<HowFar, ApiError> {
        read_from(&self.user_views, <UsersEvent as DomainEvent>::STREAM, &self.stream_ends.users, headers, query).await
    }

    /// `read_from` the payments projection.
    async fn payments_at(&self, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<HowFar, ApiError> {
        let stream = <BillingEvent as DomainEvent>::STREAM;
        read_from(&self.payment_views, stream, &self.stream_ends.billing, headers, query).await
    }
}

/// How far a projection is: the headers every query answer carries.
type HowFar = [(&'static str, String); 2];

/// `offset` and `limit` from a query string.
fn paging(query: &HashMap<String, String>) -> Result<Paging, ApiError> {
    let (offset, limit) = (query.get("offset").map(String::as_str), query.get("limit").map(String::as_str));
    Paging::parse(offset, limit, 50, views::MAX_PAGE)
}

/// One row found, or 404 with `missing`.
fn found(
    row: Option<serde_json::Value>,
    how_far: HowFar,
    missing: impl FnOnce() -> ApiError,
) -> Result<Response, ApiError> {
    match row {
        Some(row) => Ok(with_headers(carrier_http::json(StatusCode::OK, &row), how_far)),
        None => Err(missing()),
    }
}

/// A page of rows.
fn page(items: Vec<serde_json::Value>, total: u64, paging: Paging, how_far: HowFar) -> Response {
    let body = serde_json::json!({ "items": items, "total": total, "offset": paging.offset, "limit": paging.limit });
    with_headers(carrier_http::json(StatusCode::OK, &body), how_far)
}

fn with_headers(mut response: Response, headers: HowFar) -> Response {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn storage_error(e: carrier_storage::StorageError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
}

fn user_json(user: &UserView) -> serde_json::Value {
    carrier_http::camel_case_keys(serde_json::to_value(user).unwrap_or_default())
}

fn payment_json(payment: &PaymentView) -> serde_json::Value {
    carrier_http::camel_case_keys(serde_json::to_value(payment).unwrap_or_default())
}

async fn get_user(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let how_far = api.users_at(&headers, &query).await?;
    match api.user_views.db.read(|txn| views::user(txn, &id)).map_err(storage_error)? {
        Some(user) if user.deleted => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "user_deleted", format!("user {id:?} was deleted")))
        }
        user => found(user.as_ref().map(user_json), how_far, || {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no user {id:?}"))
        }),
    }
}

async fn list_users(
    State(api): State<WhiskoApi>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let paging = paging(&query)?;
    let how_far = api.users_at(&headers, &query).await?;
    let search = query.get("search").map(String::as_str);
    let (items, total) = api
        .user_views
        .db
        .read(|txn| views::list_users(txn, paging.offset, paging.limit, search))
        .map_err(storage_error)?;
    Ok(page(items.iter().map(user_json).collect(), total, paging, how_far))
}

async fn get_payment(
    State(api): State<WhiskoApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let how_far = api.payments_at(&headers, &query).await?;
    let payment = api.payment_views.db.read(|txn| views::payment(txn, &id)).map_err(storage_error)?;
    found(payment.as_ref().map(payment_json), how_far, || {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no payment {id:?}"))
    })
}

async fn payment_by_order(
    State(api): State<WhiskoApi>,
    Path(order_code): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let order_code: i64 = order_code.parse().ok().filter(|c| *c > 0).ok_or_else(|| {
        ApiError::bad_field("orderCode", format!("must be a positive whole number, got {order_code:?}"))
    })?;
    let how_far = api.payments_at(&headers, &query).await?;
    let payment = api.payment_views.db.read(|txn| views::payment_by_order(txn, order_code)).map_err(storage_error)?;
    found(payment.as_ref().map(payment_json), how_far, || {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no payment for order {order_code}"))
    })
}

async fn user_payments(
    State(api): State<WhiskoApi>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let paging = paging(&query)?;
    let how_far = api.payments_at(&headers, &query).await?;
    let (items, total) = api
        .payment_views
        .db
        .read(|txn| views::user_payments(txn, &user_id, paging.offset, paging.limit))
        .map_err(storage_error)?;
    Ok(page(items.iter().map(payment_json).collect(), total, paging, how_far))
}
