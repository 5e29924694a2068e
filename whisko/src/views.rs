//! Whisko's read side: two projections in redb, each a Carrier read model fed by a durable
//! consumer of its stream. The view, the inbox record, the entity's version and the checkpoint
//! commit in one transaction per batch, so a redelivered event changes nothing and a crash
//! loses nothing. Every instance keeps its own copy (they take no lease).
//!
//! - `user_views` ([`UserViews`]): a user by id, a page of users, a search by name or e-mail.
//! - `payment_views` ([`PaymentViews`]): a payment by id or by order code, a user's payments.
//!
//! Both are declared with `projects`, so `carrier rebuild user_views` rebuilds one blue/green from
//! its stream while the live one serves.

use carrier_actors::{BoundedContext, ContextHandle};
use carrier_messages::CommandFailure;
use carrier_messages::NoEvents;
use carrier_messages::{Envelope, QueryReply};
use carrier_storage::ReactError;
use carrier_storage::{
    ContextFile, ContextKind, Emitter, Reacts, ReadTransaction, Rows, RowsMut, StorageError, WriteTransaction,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{BillingEvent, PaymentItem, PaymentStatus, UsersEvent};

/// Most rows in one page.
pub const MAX_PAGE: usize = 500;

/// A user as the read model keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserView {
    /// The user id.
    pub id: String,
    /// Their name.
    pub name: String,
    /// Their e-mail address.
    pub email: String,
    /// Their phone number.
    pub phone: String,
    /// Their address.
    pub address: String,
    /// Whether they were deleted.
    pub deleted: bool,
    /// The version of their last event applied.
    pub version: u64,
    /// When they registered, RFC 3339.
    pub created_at: String,
    /// When they last changed, RFC 3339.
    pub updated_at: String,
}

/// A payment as the read model keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentView {
    /// The payment id.
    pub id: String,
    /// Who pays.
    pub user_id: String,
    /// The order.
    pub order_code: i64,
    /// The amount, in minor units.
    pub amount: i64,
    /// What it pays for.
    pub items: Vec<PaymentItem>,
    /// Its status.
    pub status: PaymentStatus,
    /// The version of its last event applied.
    pub version: u64,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
}

/// Live users, by id.
pub const USERS: Rows<UserView> = Rows::new("users");
/// Deleted users, by id (kept apart so that pages of users need no filtering).
pub const DELETED_USERS: Rows<UserView> = Rows::new("deleted_users");
/// Payments, by id.
pub const PAYMENTS: Rows<PaymentView> = Rows::new("payments");
/// Order code (decimal) → payment id.
pub const PAYMENTS_BY_ORDER: Rows<String> = Rows::new("payments_by_order");
/// User id → their payments' ids, oldest first.
pub const PAYMENTS_BY_USER: Rows<Vec<String>> = Rows::new("payments_by_user");

/// The `user_views` file.
pub struct UserViews;

impl ContextKind for UserViews {
    const NAME: &'static str = "user_views";
    type Event = NoEvents;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        USERS.create(txn)?;
        DELETED_USERS.create(txn)
    }
}

fn time_of(envelope: &Envelope) -> String {
    envelope.occurred_at_rfc3339()
}

impl Reacts<UsersEvent> for UserViews {
    type Tables<'txn> = (RowsMut<'txn, UserView>, RowsMut<'txn, UserView>);

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Self::Tables<'txn>, StorageError> {
        Ok((USERS.open(txn)?, DELETED_USERS.open(txn)?))
    }

    fn react(
        (users, deleted): &mut Self::Tables<'_>,
        _emit: &mut Emitter<'_, NoEvents>,
        envelope: &Envelope,
        event: &UsersEvent,
    ) -> Result<(), ReactError> {
        let (version, at) = (envelope.aggregate_version, time_of(envelope));
        Ok(match event {
            UsersEvent::UserCreated(e) => users.put(
                &e.id,
                &UserView {
                    id: e.id.clone(),
                    name: e.name.clone(),
                    email: e.email.clone(),
                    phone: e.phone.clone(),
                    address: e.address.clone(),
                    deleted: false,
                    version,
                    created_at: at.clone(),
                    updated_at: at,
                },
            ),
            UsersEvent::UserProfileUpdated(e) => users
                .update(&e.id, |u| {
                    u.name = e.name.clone();
                    u.address = e.address.clone();
                    u.version = version;
                    u.updated_at = at;
                })
                .map(drop),
            UsersEvent::UserContactUpdated(e) => users
                .update(&e.id, |u| {
                    u.email = e.email.clone();
                    u.phone = e.phone.clone();
                    u.version = version;
                    u.updated_at = at;
                })
                .map(drop),
            UsersEvent::UserDeleted(e) => {
                if let Some(mut user) = users.get(&e.id)? {
                    user.deleted = true;
                    user.version = version;
                    user.updated_at = at;
                    users.remove(&e.id)?;
                    deleted.put(&e.id, &user)?;
                }
                Ok(())
            }
        }?)
    }
}

/// The `payment_views` file.
pub struct PaymentViews;

impl ContextKind for PaymentViews {
    const NAME: &'static str = "payment_views";
    type Event = NoEvents;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        PAYMENTS.create(txn)?;
        PAYMENTS_BY_ORDER.create(txn)?;
        PAYMENTS_BY_USER.create(txn)
    }
}

impl Reacts<BillingEvent> for PaymentViews {
    type Tables<'txn> = (RowsMut<'txn, PaymentView>, RowsMut<'txn, String>, RowsMut<'txn, Vec<String>>);

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Self::Tables<'txn>, StorageError> {
        Ok((PAYMENTS.open(txn)?, PAYMENTS_BY_ORDER.open(txn)?, PAYMENTS_BY_USER.open(txn)?))
    }

    fn react(
        (payments, by_order, by_user): &mut Self::Tables<'_>,
        _emit: &mut Emitter<'_, NoEvents>,
        envelope: &Envelope,
        event: &BillingEvent,
    ) -> Result<(), ReactError> {
        let (version, at) = (envelope.aggregate_version, time_of(envelope));
        Ok(match event {
            BillingEvent::PaymentCreated(e) => {
                payments.put(
                    &e.id,
                    &PaymentView {
                        id: e.id.clone(),
                        user_id: e.user_id.clone(),
                        order_code: e.order_code,
                        amount: e.amount,
                        items: e.items.clone(),
                        status: PaymentStatus::Pending,
                        version,
                        created_at: at.clone(),
                        updated_at: at,
                    },
                )?;
                by_order.put(&e.order_code.to_string(), &e.id)?;
                let mut mine = by_user.get(&e.user_id)?.unwrap_or_default();
                if !mine.contains(&e.id) {
                    mine.push(e.id.clone());
                }
                by_user.put(&e.user_id, &mine)
            }
            BillingEvent::PaymentUpdated(e) => payments
                .update(&e.id, |p| {
                    p.amount = e.amount;
                    p.items = e.items.clone();
                    p.version = version;
                    p.updated_at = at;
                })
                .map(drop),
            BillingEvent::PaymentStatusChanged(e) => payments
                .update(&e.id, |p| {
                    p.status = e.to;
                    p.version = version;
                    p.updated_at = at;
                })
                .map(drop),
        }?)
    }
}

/// The answer to a view query: one row (`found`), or a page (`items` of `total`), or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct ViewReply<T> {
    /// Whether the query was answered (finding nothing is an answer).
    pub ok: bool,
    /// The row, for a lookup that found one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<T>,
    /// The rows, for a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<T>>,
    /// How many rows match in all, for a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

impl<T: Serialize + JsonSchema + Send + 'static> QueryReply for ViewReply<T> {
    fn failed(code: &str, message: String) -> Self {
        ViewReply {
            ok: false,
            found: None,
            items: None,
            total: None,
            error: Some(CommandFailure { code: code.to_string(), message, details: None }),
        }
    }
}

impl<T> ViewReply<T> {
    fn one(found: Option<T>) -> Self {
        ViewReply { ok: true, found, items: None, total: None, error: None }
    }

    fn page(items: Vec<T>, total: u64) -> Self {
        ViewReply { ok: true, found: None, items: Some(items), total: Some(total), error: None }
    }

    fn of(result: Result<Self, StorageError>) -> Self
    where
        Self: QueryReply,
    {
        result.unwrap_or_else(|e| Self::failed("unavailable", e.to_string()))
    }
}

/// Queries of `user_views`, on `query.user_views` (tagged by `query`). Each may carry
/// `min_position` (a command's `position`) to read its writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum UserViewsQuery {
    /// One user (a deleted one too, with `deleted: true`).
    GetUser {
        /// The user id.
        id: String,
    },
    /// A page of live users in id order, or those whose name or e-mail contains `search`
    /// (case-insensitive).
    ListUsers {
        /// Rows to skip.
        #[serde(default)]
        offset: usize,
        /// Rows to return, 1 to 500.
        #[serde(default = "default_limit")]
        limit: usize,
        /// Text to look for in names and e-mail addresses.
        #[serde(default)]
        search: Option<String>,
    },
}

fn default_limit() -> usize {
    50
}

/// Queries of `payment_views`, on `query.payment_views` (tagged by `query`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum PaymentViewsQuery {
    /// One payment.
    GetPayment {
        /// The payment id.
        id: String,
    },
    /// The payment of an order.
    GetPaymentByOrder {
        /// The order code.
        order_code: i64,
    },
    /// A user's payments, oldest first.
    ListUserPayments {
        /// The user.
        user_id: String,
        /// Rows to skip.
        #[serde(default)]
        offset: usize,
        /// Rows to return, 1 to 500.
        #[serde(default = "default_limit")]
        limit: usize,
    },
}

fn check_limit<T>(limit: usize) -> Result<(), ViewReply<T>>
where
    ViewReply<T>: QueryReply,
{
    if limit == 0 || limit > MAX_PAGE {
        return Err(ViewReply::failed("bad_request", format!("limit must be 1 to {MAX_PAGE}, got {limit}")));
    }
    Ok(())
}

/// A user by id, live or deleted.
pub fn user(txn: &ReadTransaction, id: &str) -> Result<Option<UserView>, StorageError> {
    match USERS.get(txn, id)? {
        Some(user) => Ok(Some(user)),
        None => DELETED_USERS.get(txn, id),
    }
}

/// A page of live users, or of those matching `search`.
pub fn list_users(
    txn: &ReadTransaction,
    offset: usize,
    limit: usize,
    search: Option<&str>,
) -> Result<(Vec<UserView>, u64), StorageError> {
    match search.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok((USERS.slice(txn, offset, limit)?.into_iter().map(|(_, u)| u).collect(), USERS.len(txn)?)),
        Some(text) => {
            let text = text.to_lowercase();
            let matching: Vec<UserView> = USERS
                .all(txn)?
                .into_iter()
                .map(|(_, u)| u)
                .filter(|u| u.name.to_lowercase().contains(&text) || u.email.to_lowercase().contains(&text))
                .collect();
            let total = matching.len() as u64;
            Ok((matching.into_iter().skip(offset).take(limit).collect(), total))
        }
    }
}

/// A payment by id.
pub fn payment(txn: &ReadTransaction, id: &str) -> Result<Option<PaymentView>, StorageError> {
    PAYMENTS.get(txn, id)
}

/// The payment of an order.
pub fn payment_by_order(txn: &ReadTransaction, order_code: i64) -> Result<Option<PaymentView>, StorageError> {
    match PAYMENTS_BY_ORDER.get(txn, &order_code.to_string())? {
        Some(id) => PAYMENTS.get(txn, &id),
        None => Ok(None),
    }
}

/// A page of a user's payments, oldest first.
pub fn user_payments(
    txn: &ReadTransaction,
    user_id: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<PaymentView>, u64), StorageError> {
    let ids = PAYMENTS_BY_USER.get(txn, user_id)?.unwrap_or_default();
    let mut page = Vec::new();
    for id in ids.iter().skip(offset).take(limit) {
        if let Some(p) = PAYMENTS.get(txn, id)? {
            page.push(p);
        }
    }
    Ok((page, ids.len() as u64))
}

fn answer_users(db: &ContextFile<UserViews>, query: UserViewsQuery) -> ViewReply<UserView> {
    match query {
        UserViewsQuery::GetUser { id } => ViewReply::of(db.read(|txn| user(txn, &id)).map(ViewReply::one)),
        UserViewsQuery::ListUsers { offset, limit, search } => {
            if let Err(refusal) = check_limit(limit) {
                return refusal;
            }
            ViewReply::of(
                db.read(|txn| list_users(txn, offset, limit, search.as_deref()))
                    .map(|(items, total)| ViewReply::page(items, total)),
            )
        }
    }
}

fn answer_payments(db: &ContextFile<PaymentViews>, query: PaymentViewsQuery) -> ViewReply<PaymentView> {
    match query {
        PaymentViewsQuery::GetPayment { id } => ViewReply::of(db.read(|txn| payment(txn, &id)).map(ViewReply::one)),
        PaymentViewsQuery::GetPaymentByOrder { order_code } => {
            ViewReply::of(db.read(|txn| payment_by_order(txn, order_code)).map(ViewReply::one))
        }
        PaymentViewsQuery::ListUserPayments { user_id, offset, limit } => {
            if let Err(refusal) = check_limit(limit) {
                return refusal;
            }
            ViewReply::of(
                db.read(|txn| user_payments(txn, &user_id, offset, limit))
                    .map(|(items, total)| ViewReply::page(items, total)),
            )
        }
    }
}

/// The `user_views` read model's declaration.
pub fn user_views() -> BoundedContext {
    BoundedContext::of::<UserViews>()
        .projects::<UsersEvent>(&["users", "deleted_users"], &["user"])
        .queries(answer_users)
        .read_model()
        .build()
}

/// The `payment_views` read model's declaration.
pub fn payment_views() -> BoundedContext {
    BoundedContext::of::<PaymentViews>()
        .projects::<BillingEvent>(&["payments", "payments_by_order", "payments_by_user"], &["payment"])
        .queries(answer_payments)
        .read_model()
        .build()
}

/// The handle of the users read model.
pub type UserViewsHandle = ContextHandle<UserViews>;
/// The handle of the payments read model.
pub type PaymentViewsHandle = ContextHandle<PaymentViews>;
