//! The customers bounded context: the owner of customers.
//!
//! Under the `carrier/customers` supervisor: `cache` (the writer of `customers.redb`, deciding
//! commands), `outbox-relay` (to `CUSTOMERS`), `commands` (on `cmd.customers`) and `queries`, which answers `query.customers`: the fallback of the customers caches.

pub mod events;
pub mod queries;
mod state;

pub use events::*;
pub use state::*;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// The context's name.
pub const CONTEXT: &str = "customers";

/// What the rest of the process may use of a running customers context.
pub type CustomersHandle = ContextHandle<Customers>;

/// The context's declaration: the owner actors and `query.customers`.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Customers>()
        .decides::<CustomersCommand>()
        .follows_itself()
        .queries(queries::answer)
        .entities(queries::entity)
        .build()
}
