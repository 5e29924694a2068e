//! The payments bounded context: authorizes an order's payment when it is created (only an
//! enabled customer may pay, from its customers cache) and pays its invoice once it is readied.
//!
//! Actors, under the `carrier/payments` supervisor (rest-for-one): `cache` (the only writer of
//! `payments.redb`), `customers-consumer` (`payments-customers`), `ordering-consumer`
//! (`payments-ordering`) and `outbox-relay` (to `PAYMENTS`).

use std::sync::Arc;

use carrier_messages::customers::CustomersEvent;
use carrier_messages::ordering::OrderingEvent;
use carrier_storage::payments::Payments;
use carrier_storage::CustomerCacheKind;

use crate::cache::{ContextHandle, Prefetch};
use crate::context::BoundedContext;

/// The context's name.
pub const CONTEXT: &str = "payments";

/// What the rest of the process may use of a running payments context.
pub type PaymentsHandle = ContextHandle<Payments>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Payments>()
        .customers_fallback()
        .consume::<CustomersEvent>()
        .consume_with_prefetch::<OrderingEvent>(prefetch_customers())
        .build()
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
