//! The payments bounded context: authorizes an order's payment when it is created (only an
//! enabled customer may pay, from its customers cache) and pays its invoice once it is readied.
//!
//! Actors, under the `carrier/payments` supervisor (rest-for-one): `cache` (the only writer of
//! `payments.redb`), `customers-consumer` (`payments-customers-<instance>`), `ordering-consumer`
//! (`payments-ordering-<instance>`) and `outbox-relay` (to `PAYMENTS`: `PaymentAuthorized` or
//! `PaymentDeclined` per order, `InvoicePaid`). A second instance stands by, following
//! `PAYMENTS`.

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use crate::customers::events::CustomersEvent;
use crate::ordering::events::OrderingEvent;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// The context's name.
pub const CONTEXT: &str = "payments";

/// What the rest of the process may use of a running payments context.
pub type PaymentsHandle = ContextHandle<Payments>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Payments>()
        .caches::<CustomersEvent>()
        .consume_prefetching::<OrderingEvent>()
        .follows_itself()
        .build()
}
