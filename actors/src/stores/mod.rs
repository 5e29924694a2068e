//! The stores bounded context: the owner of stores and products.
//!
//! Under the `carrier/stores` supervisor: the [`owner`](crate::owner) actors (owner, outbox relay,
//! command server on `cmd.stores`) and `queries`, which answers `query.stores` from the database:
//! the fallback other contexts' caches use.

pub mod queries;

use carrier_storage::stores::Stores;

use crate::context::BoundedContext;
use crate::owner::OwnerHandle;

pub use crate::owner::ExecuteError;

/// The context's name.
pub const CONTEXT: &str = "stores";

/// What the rest of the process may use of a running stores context.
pub type StoresHandle = OwnerHandle<Stores>;

/// The context's declaration: the owner actors and `query.stores`.
pub fn context() -> BoundedContext {
    BoundedContext::owner::<Stores>().queries(queries::answer).build()
}
