//! The stores bounded context: the owner of stores and products.
//!
//! Under the `carrier/stores` supervisor: `cache` (the writer of `stores.redb`, deciding
//! commands), `outbox-relay` (to `STORES`), `commands` (on `cmd.stores`) and `queries`, which answers `query.stores` from the database:
//! the fallback other contexts' caches use.

pub mod events;
pub mod queries;
mod state;

pub use events::*;
pub use state::*;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

pub use carrier_actors::ExecuteError;

/// The context's name.
pub const CONTEXT: &str = "stores";

/// What the rest of the process may use of a running stores context.
pub type StoresHandle = ContextHandle<Stores>;

/// The context's declaration: the owner actors and `query.stores`. A second instance stands by,
/// following `STORES` into its own rows, and takes over when the first dies.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Stores>()
        .decides::<StoresCommand>()
        .follows_itself()
        .queries(queries::answer)
        .entities(queries::entity)
        .build()
}
