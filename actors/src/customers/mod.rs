//! The customers bounded context: the owner of customers.
//!
//! Under the `carrier/customers` supervisor: the [`owner`](crate::owner) actors (owner, outbox
//! relay to the `CUSTOMERS` stream, command server on `cmd.customers`) and `queries`, which answers `query.customers`: the fallback of the customers caches.

pub mod queries;

use carrier_storage::customers::Customers;

use crate::context::BoundedContext;
use crate::owner::OwnerHandle;

/// The context's name.
pub const CONTEXT: &str = "customers";

/// What the rest of the process may use of a running customers context.
pub type CustomersHandle = OwnerHandle<Customers>;

/// The context's declaration: the owner actors and `query.customers`.
pub fn context() -> BoundedContext {
    BoundedContext::owner::<Customers>().queries(queries::answer).build()
}
