//! The search context's queries: seed 001's `search.orders` read model, asked on `query.search`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::baskets::events::BasketItem;
use crate::ordering::events::OrderStatus;
use carrier_messages::CommandFailure;

/// The most orders one search returns.
pub const MAX_LIMIT: u32 = 500;
/// How many orders a search returns when it names no limit.
pub const DEFAULT_LIMIT: u32 = 50;

/// A question to the search context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum SearchQuery {
    /// One order by id.
    GetOrder {
        /// Order id.
        id: String,
    },
    /// Orders matching every given filter, by order id, a page at a time.
    SearchOrders(OrderFilter),
}

/// Filters of [`SearchQuery::SearchOrders`]; an absent field matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct OrderFilter {
    /// Only this customer's orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Only orders in this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// Only orders with an item from this store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// Only orders with this product.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Only orders created at or after this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// Only orders created before this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
    /// Only orders whose total is at least this (minor units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_min: Option<i64>,
    /// Only orders whose total is at most this (minor units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_max: Option<i64>,
    /// At most this many orders (default 50, at most 500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One order as search knows it: the columns of seed 001's `search.orders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Their name, from the search customers cache.
    pub customer_name: String,
    /// The lines, with store and product names.
    pub items: Vec<BasketItem>,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// Where the order stands.
    pub status: OrderStatus,
    /// Every product ordered, sorted.
    pub product_ids: Vec<String>,
    /// Every store ordered from, sorted.
    pub store_ids: Vec<String>,
    /// When the order was created (RFC 3339, UTC).
    pub created_at: String,
    /// When its status last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// The answer to a [`SearchQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SearchReply {
    /// Whether the query was answered (nothing found is still `ok`).
    pub ok: bool,
    /// For `get_order`, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderView>,
    /// For `search_orders`: the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orders: Vec<OrderView>,
    /// For `search_orders`: pass it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

impl carrier_messages::QueryReply for SearchReply {
    fn failed(code: &str, message: String) -> Self {
        SearchReply::failed(code, message)
    }
}

impl SearchReply {
    /// A refusal with `code`.
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        SearchReply {
            ok: false,
            error: Some(CommandFailure { code: code.to_string(), message: message.into(), details: None }),
            ..SearchReply::default()
        }
    }
}
