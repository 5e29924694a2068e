//! The depot bounded context's caches of stores (name, location) and products (store, name), fed
//! by the stores stream: what a shopping list needs to send a bot to the right store.
//!
//! Actors, under the `carrier/depot` supervisor (rest-for-one): `cache` (the only writer of
//! `depot.redb`) and `stores-consumer` (the durable `depot-stores` on `STORES`).

use carrier_storage::DepotDb;

use crate::cache::CacheHandle;

/// The context's name.
pub const CONTEXT: &str = "depot";

/// What the rest of the process may use of a running depot context.
pub type DepotHandle = CacheHandle<DepotDb>;
