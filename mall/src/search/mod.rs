//! The search bounded context: seed 001's `search.orders` read model, built from order events
//! and its caches of customers, stores and products, and asked on `query.search`.
//!
//! Actors, under the `carrier/search` supervisor (rest-for-one): `cache` (the only writer of
//! `search.redb`), `stores-consumer`, `customers-consumer` and `ordering-consumer` and `queries`
//! (on `query.search`, answered by [`answer`]). It is a read model (it publishes and decides
//! nothing), so every instance runs it, reading through durables of its own
//! (`search-stores-<instance>`, `search-customers-<instance>`, `search-ordering-<instance>`).

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use crate::customers::events::CustomersEvent;
use crate::ordering::events::OrderingEvent;
use crate::stores::events::StoresEvent;
use carrier_storage::CommandError;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// The context's name.
pub const CONTEXT: &str = "search";

/// What the rest of the process may use of a running search context.
pub type SearchHandle = ContextHandle<Search>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Search>()
        .read_model()
        .caches::<StoresEvent>()
        .caches::<CustomersEvent>()
        .consume_prefetching::<OrderingEvent>()
        .queries(answer)
        .build()
}

/// Answers one query.
pub fn answer(db: &SearchDb, query: SearchQuery) -> SearchReply {
    match query {
        SearchQuery::GetOrder { id } => match db.order(&id) {
            Ok(order) => SearchReply { ok: true, order, ..SearchReply::default() },
            Err(e) => SearchReply::failed("unavailable", e.to_string()),
        },
        SearchQuery::SearchOrders(filter) => match db.search(&filter) {
            Ok((orders, next_cursor)) => SearchReply { ok: true, orders, next_cursor, ..SearchReply::default() },
            Err(CommandError::Invalid(e)) => SearchReply::failed("invalid", e.to_string()),
            Err(e) => SearchReply::failed("unavailable", e.to_string()),
        },
    }
}
