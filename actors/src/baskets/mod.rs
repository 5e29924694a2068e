//! The baskets bounded context: local caches of stores and products (name, price), fed by the
//! stores stream, so that a basket never asks the stores service on its hot path.
//!
//! Actors, under the `carrier/baskets` supervisor (rest-for-one):
//! - `cache` ([`StoresCache`](crate::cache::StoresCache) over [`BasketsDb`]): the only writer of
//!   `baskets.redb`;
//! - `stores-consumer` ([`EventConsumer`](crate::consumer::EventConsumer)): the durable consumer
//!   `baskets-stores` on `STORES`.

use carrier_storage::BasketsDb;

use crate::cache::CacheHandle;

/// The context's name, as used in durable names, paths and dead-letter streams.
pub const CONTEXT: &str = "baskets";

/// What the rest of the process may use of a running baskets context.
pub type BasketsHandle = CacheHandle<BasketsDb>;

/// The durable consumer's name on the stores stream.
pub fn stores_durable_name() -> String {
    crate::cache::stores_durable_name(CONTEXT)
}
