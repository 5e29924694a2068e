//! What every cache of the stores context's data offers its actor, whichever context it serves.

use std::time::Duration;

use redb::Database;

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};

use crate::engine::{self, Adopted, BatchOutcome, EngineStats, Inbound};
use crate::StorageError;

/// A context's cache of stores and products (baskets, depot, search).
///
/// The context-specific parts are the projection of events and of the owner's snapshots; the
/// inbox, versions, gaps and checkpoints are the engine's and come with the trait.
pub trait StoresCacheDb: Send + Sync + 'static {
    /// A cached store, as this context keeps it.
    type Store: Clone + Send + 'static;
    /// A cached product, as this context keeps it.
    type Product: Clone + Send + 'static;

    /// The redb file.
    fn database(&self) -> &Database;

    /// One cached store.
    fn cached_store(&self, id: &str) -> Result<Option<Self::Store>, StorageError>;

    /// One cached product.
    fn cached_product(&self, id: &str) -> Result<Option<Self::Product>, StorageError>;

    /// The store as this context keeps it, from the owner's snapshot.
    fn store_row(snapshot: &StoreSnapshot) -> Self::Store;

    /// The product as this context keeps it, from the owner's snapshot (`None` if removed).
    fn product_row(snapshot: &ProductSnapshot) -> Option<Self::Product>;

    /// Applies a batch of stores events in one transaction (see [`engine::apply_batch`]).
    fn apply_stores_events(&self, consumer: &str, batch: &[Inbound<StoresEvent>])
        -> Result<BatchOutcome, StorageError>;

    /// Writes a store as its owner reported it (see [`engine::adopt`]).
    fn adopt_store(&self, snapshot: &StoreSnapshot) -> Result<Adopted, StorageError>;

    /// Writes a product as its owner reported it; a removed one leaves the cache.
    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<Adopted, StorageError>;

    /// Inbox size, parked events and checkpoints.
    fn engine_stats(&self) -> Result<EngineStats, StorageError> {
        engine::stats(self.database())
    }

    /// The first `limit` inbox entries.
    fn inbox(&self, limit: usize) -> Result<Vec<(carrier_messages::EventId, u64)>, StorageError> {
        engine::inbox_entries(self.database(), limit)
    }

    /// The last stream sequence committed for `consumer` (0 when none).
    fn checkpoint(&self, consumer: &str) -> Result<u64, StorageError> {
        engine::checkpoint(self.database(), consumer)
    }

    /// Deletes up to `limit` inbox records older than `horizon`. Returns how many went.
    fn prune_inbox(&self, horizon: Duration, limit: usize) -> Result<u64, StorageError> {
        let cutoff = engine::unix_ms().saturating_sub(horizon.as_millis() as u64);
        engine::prune_inbox(self.database(), cutoff, limit)
    }

    /// Entities waiting for a missing version: (aggregate type, id, current version, lowest
    /// parked version).
    fn gaps(&self) -> Result<Vec<(String, String, u64, u64)>, StorageError> {
        engine::gaps(self.database())
    }
}
