//! The notifications bounded context: texts the customer when an order is created, readied or
//! canceled, once per order event, to the customer's current SMS number (from its customers
//! cache).
//!
//! Actors, under the `carrier/notifications` supervisor (rest-for-one): `cache` (the only writer
//! of `notifications.redb`, whose `sent` table is the default sink), `customers-consumer`
//! (`notifications-customers-<instance>`), `ordering-consumer` (`notifications-ordering-<instance>`)
//! and `outbox-relay`: each text is also published as `notifications.TextSent` on
//! `NOTIFICATIONS`, once by its id, for a gateway to take. A second instance stands by,
//! following `NOTIFICATIONS`, and sends only the texts the holder did not.

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use crate::customers::events::CustomersEvent;
use crate::ordering::events::OrderingEvent;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// The context's name.
pub const CONTEXT: &str = "notifications";

/// What the rest of the process may use of a running notifications context.
pub type NotificationsHandle = ContextHandle<Notifications>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Notifications>()
        .caches::<CustomersEvent>()
        .consume_prefetching::<OrderingEvent>()
        .follows_itself()
        .build()
}
