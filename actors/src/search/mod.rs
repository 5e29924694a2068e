//! The search bounded context: seed 001's `search.orders` read model, built from order events
//! and its caches of customers, stores and products, and asked on `query.search`.
//!
//! Actors, under the `carrier/search` supervisor (rest-for-one): `cache` (the only writer of
//! `search.redb`), `stores-consumer`, `customers-consumer` and `ordering-consumer` (durables
//! `search-stores`, `search-customers`, `search-ordering`) and `queries` ([`SearchQueries`]).

use std::sync::Arc;

use carrier_messages::customers::CustomersEvent;
use carrier_messages::ordering::OrderingEvent;
use carrier_messages::request::{decode_request, encode_body};
use carrier_messages::search::{SearchQuery, SearchReply};
use carrier_messages::stores::StoresEvent;
use carrier_messages::ContentType;
use carrier_storage::search::Search;
use carrier_storage::{CommandError, SearchDb};

use crate::bus::{Bus, IncomingRequest};
use crate::cache::{CacheHandle, CacheSettings, ContextBuilder};
use crate::faults::Faults;
use crate::responder::Answer;
use crate::supervisor::{SupervisionTree, SupervisorArgs};

/// The context's name.
pub const CONTEXT: &str = "search";

/// What the rest of the process may use of a running search context.
pub type SearchHandle = CacheHandle<Search>;

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<SearchDb>,
    settings: CacheSettings,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, SearchHandle) {
    let mut builder = ContextBuilder::new(bus.clone(), db.clone(), settings, faults);
    let prefetch = crate::payments::prefetch_customers();
    builder
        .stores_fallback()
        .customers_fallback()
        .consume::<StoresEvent>(None)
        .consume::<CustomersEvent>(None)
        .consume::<OrderingEvent>(Some(prefetch));
    builder.serve(crate::serve::queries(CONTEXT, bus, move || SearchQueries { db: db.clone() }));
    builder.build(tree, path)
}

/// Answers `query.search` from the read model. It only reads, so it never waits on the writer.
pub struct SearchQueries {
    /// The read model.
    pub db: Arc<SearchDb>,
}

impl Answer for SearchQueries {
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        let reply = match decode_request::<SearchQuery>(content_type, &request.payload) {
            Err(reason) => SearchReply::failed("bad_request", format!("not a search query: {reason}")),
            Ok(query) => {
                let db = self.db.clone();
                match tokio::task::spawn_blocking(move || answer(&db, query)).await {
                    Ok(reply) => reply,
                    Err(e) => SearchReply::failed("unavailable", e.to_string()),
                }
            }
        };
        encode_body(content_type, &reply)
    }
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
