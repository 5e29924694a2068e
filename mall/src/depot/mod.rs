//! The depot bounded context: shopping lists, and caches of stores (name, location) and products
//! (store, name) fed by the stores stream: what a shopping list needs to send a bot to the right
//! store.
//!
//! Actors, under the `carrier/depot` supervisor (rest-for-one): `cache` (the only writer of
//! `depot.redb`), `stores-consumer` (`depot-stores-<instance>` on `STORES`), `ordering-consumer`
//! (`depot-ordering-<instance>` on `ORDERING`: creates a shopping list per order), `outbox-relay`
//! (to `DEPOT`) and `commands` (on `cmd.depot`, where the bots report a list completed). A
//! second instance stands by, following `DEPOT`.

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use std::collections::BTreeSet;

use crate::ordering::events::OrderingEvent;
use crate::stores::events::StoresEvent;

use carrier_actors::BoundedContext;
use carrier_actors::{ContextHandle, Prefetches};

use crate::StoresLookups;

/// The context's name.
pub const CONTEXT: &str = "depot";

/// What the rest of the process may use of a running depot context.
pub type DepotHandle = ContextHandle<Depot>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Depot>()
        .caches::<StoresEvent>()
        .consume_prefetching::<OrderingEvent>()
        .decides::<DepotCommand>()
        .follows_itself()
        .build()
}

/// A new order's stores must be in the cache before its shopping list is made.
impl Prefetches<OrderingEvent> for Depot {
    async fn prefetch(handle: &ContextHandle<Depot>, events: &[OrderingEvent]) {
        let stores: BTreeSet<&str> = events
            .iter()
            .filter_map(|e| match e {
                OrderingEvent::OrderCreated(o) => Some(o.items.iter().map(|i| i.store_id.as_str())),
                _ => None,
            })
            .flatten()
            .collect();
        for id in stores {
            if let Err(error) = handle.store(id).await {
                tracing::warn!(store.id = %id, %error, "store lookup for a shopping list failed");
            }
        }
    }
}
