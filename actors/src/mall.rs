//! The MallBots mall (seed 001): its eight bounded contexts as declarations, in start order
//! (owners first). `carrier` runs these; a user's binary runs its own list the same way.

use std::sync::Arc;

use carrier_messages::ordering::OrderingEvent;
use carrier_storage::CustomerCacheKind;

use crate::cache::{ContextHandle, Prefetch};
use crate::context::BoundedContext;

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
