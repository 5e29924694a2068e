//! The MallBots mall (seed 001) as a user of Carrier: its eight bounded contexts declared on
//! Carrier's public API, in start order (owners first). `carrier` runs [`contexts`]; a user's
//! binary runs its own list the same way.
//!
//! - [`stores`], [`customers`]: the owners, with their queries (the caches' fallbacks).
//! - [`baskets`], [`ordering`], [`depot`], [`payments`], [`notifications`], [`search`]: the
//!   contexts that cache and react, each a declaration of a few builder calls.
//! - [`lookups`]: the caches' lookups of stores, products and customers ([`StoresLookups`],
//!   [`CustomerLookups`]), on Carrier's one lookup with the owner's entity endpoint behind it.
//! - [`verify`]: compares caches with their owner (the demo's verdict, the tests' oracle);
//!   [`workload`]: synthetic events with a known end state (the bench and the crash tests).

pub mod baskets;
pub mod customers;
pub mod depot;
pub mod lookups;
pub mod notifications;
pub mod ordering;
pub mod payments;
pub mod search;
pub mod stores;
pub mod verify;
pub mod workload;

pub use lookups::{CustomerLookups, StoresLookups};

use std::sync::Arc;

use carrier_messages::ordering::OrderingEvent;
use carrier_storage::CustomerCacheKind;

use carrier_actors::cache::{ContextHandle, Prefetch};
use carrier_actors::context::BoundedContext;

/// Every context of the mall, owners first.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        crate::stores::context(),
        crate::customers::context(),
        crate::baskets::context(),
        crate::ordering::context(),
        crate::depot::context(),
        crate::payments::context(),
        crate::notifications::context(),
        crate::search::context(),
    ]
}

/// Looks up the customers of new orders, so that a customer registered a moment ago (whose event
/// has not arrived yet) is asked of the customers context instead of failing the batch.
pub(crate) fn prefetch_customers<K: CustomerCacheKind>() -> Prefetch<K, OrderingEvent> {
    Arc::new(|handle: ContextHandle<K>, events: Vec<OrderingEvent>| {
        Box::pin(async move {
            let mut customers: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    OrderingEvent::OrderCreated(o) => Some(o.customer_id.clone()),
                    OrderingEvent::OrderReadied(o) => Some(o.customer_id.clone()),
                    OrderingEvent::OrderCanceled(o) => Some(o.customer_id.clone()),
                    OrderingEvent::OrderCompleted(_) => None,
                })
                .collect();
            customers.sort();
            customers.dedup();
            for id in customers {
                if let Err(error) = handle.customer(&id).await {
                    tracing::warn!(customer.id = %id, %error, "customer lookup failed; the batch will wait");
                }
            }
        })
    })
}
