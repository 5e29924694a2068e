//! The ordering bounded context: orders, created from checked-out baskets, readied by completed
//! shopping lists, completed by paid invoices, canceled by declined payments or on request.
//!
//! Actors, under the `carrier/ordering` supervisor (rest-for-one): `cache` (the only writer of
//! `ordering.redb`), `baskets-consumer`, `depot-consumer` and `payments-consumer` (durables
//! `ordering-baskets-<instance>`, `ordering-depot-<instance>`, `ordering-payments-<instance>`:
//! each instance its own), `outbox-relay` (to `ORDERING`) and `commands` (on `cmd.ordering`).
//! A second instance stands by: it follows `ORDERING` and reacts only to what the holder did
//! not (see `carrier_actors::standby`).

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use crate::baskets::events::BasketsEvent;
use crate::depot::events::DepotEvent;
use crate::payments::events::PaymentsEvent;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// The context's name.
pub const CONTEXT: &str = "ordering";

/// What the rest of the process may use of a running ordering context.
pub type OrderingHandle = ContextHandle<Ordering>;

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Ordering>()
        .consume::<BasketsEvent>()
        .consume::<DepotEvent>()
        .consume::<PaymentsEvent>()
        .decides::<OrderingCommand>()
        .follows_itself()
        .build()
}
