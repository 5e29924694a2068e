//! Caches of the stores context's data in a consuming context's file (baskets, depot, search).
//!
//! Every such cache has the same two tables, `stores_cache` and `products_cache` (id → CBOR
//! row). What differs between contexts is only what a row holds and what each event does to it:
//! a [`StoresCache`]. `stores_cache!` then makes the context react to
//! stores events and adopt the stores context's answers (a cache miss, a version gap), like any
//! cache of another context's entities on Carrier.

use serde::{de::DeserializeOwned, Serialize};

use carrier_messages::Envelope;
use carrier_storage::ReactError;
use carrier_storage::{ContextFile, ContextKind, Rows, RowsMut, StorageError, WriteTransaction};

use crate::stores::events::{ProductSnapshot, StoreSnapshot, StoresEvent};

/// The stores cache table's name.
pub const STORES_CACHE: &str = "stores_cache";
/// The products cache table's name.
pub const PRODUCTS_CACHE: &str = "products_cache";

/// What one consuming context keeps of stores and products, and what each event does to it.
/// `stores_cache!(Kind)` implements the rest (`Reacts` and `Adopts` of stores events).
pub trait StoresCache: ContextKind + carrier_storage::Adopts<StoresEvent> {
    /// A cached store.
    type Store: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// A cached product.
    type Product: Serialize + DeserializeOwned + Clone + Send + 'static;

    /// Applies one event to the rows (called only for the entity's next version).
    fn apply(tables: &mut StoresCacheTables<'_, Self>, event: &StoresEvent) -> Result<(), ReactError>;

    /// The store row from the owner's snapshot.
    fn store_row(snapshot: &StoreSnapshot) -> Self::Store;

    /// The product row from the owner's snapshot; `None` when it was removed.
    fn product_row(snapshot: &ProductSnapshot) -> Option<Self::Product>;

    /// The stores cache table.
    fn stores_table() -> Rows<Self::Store> {
        Rows::new(STORES_CACHE)
    }

    /// The products cache table.
    fn products_table() -> Rows<Self::Product> {
        Rows::new(PRODUCTS_CACHE)
    }
}

/// The two cache tables opened for one transaction.
pub struct StoresCacheTables<'txn, K: StoresCache> {
    stores: RowsMut<'txn, K::Store>,
    products: RowsMut<'txn, K::Product>,
}

impl<'txn, K: StoresCache> StoresCacheTables<'txn, K> {
    /// Opens them in `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        Ok(StoresCacheTables { stores: K::stores_table().open(txn)?, products: K::products_table().open(txn)? })
    }

    /// Creates both tables (for a kind's [`ContextKind::create_tables`]).
    pub fn create(txn: &WriteTransaction) -> Result<(), StorageError> {
        K::stores_table().create(txn)?;
        K::products_table().create(txn)
    }

    /// One cached store.
    pub fn store(&self, id: &str) -> Result<Option<K::Store>, StorageError> {
        self.stores.get(id)
    }

    /// One cached product.
    pub fn product(&self, id: &str) -> Result<Option<K::Product>, StorageError> {
        self.products.get(id)
    }

    /// Writes a store row (seed 001's `StoreCacheRepository.Add`).
    pub fn put_store(&mut self, id: &str, row: &K::Store) -> Result<(), StorageError> {
        self.stores.put(id, row)
    }

    /// Changes a cached store (e.g. `Rename`); a store the cache never saw is left alone.
    pub fn update_store(&mut self, id: &str, change: impl FnOnce(&mut K::Store)) -> Result<(), StorageError> {
        if !self.stores.update(id, change)? {
            // Versions make this unreachable for one owner's events: version 1 adds the row.
            tracing::warn!(store.id = id, "store missing from the cache; change skipped");
        }
        Ok(())
    }

    /// Writes a product row (`ProductCacheRepository.Add`).
    pub fn put_product(&mut self, id: &str, row: &K::Product) -> Result<(), StorageError> {
        self.products.put(id, row)
    }

    /// Changes a cached product (`Rebrand`, `UpdatePrice`); a product the cache never saw is
    /// refused.
    pub fn update_product(&mut self, id: &str, change: impl FnOnce(&mut K::Product)) -> Result<(), ReactError> {
        if self.products.update(id, change)? {
            return Ok(());
        }
        // Versions let a product's next event through only after its earlier ones, so a missing
        // row means the product was removed: removal is final (the owner refuses changes to a
        // removed product), and an event that changes one breaks the contract.
        Err(ReactError::reject(format!(
            "product {id:?} was removed (or never added): a removed product takes no further changes"
        )))
    }

    /// Deletes a product (`ProductCacheRepository.Remove`).
    pub fn remove_product(&mut self, id: &str) -> Result<(), StorageError> {
        self.products.remove(id)
    }

    /// Deletes a store (its owner answered it deleted).
    pub fn remove_store(&mut self, id: &str) -> Result<(), StorageError> {
        self.stores.remove(id)
    }
}

/// A stores event applied to `K`'s caches: what `K`'s `Reacts<StoresEvent>` does.
pub fn react<K: StoresCache>(
    tables: &mut StoresCacheTables<'_, K>,
    envelope: &Envelope,
    event: &StoresEvent,
) -> Result<(), ReactError> {
    // An id is never reused: the event creating an entity is its version 1, so a
    // `ProductAdded` (or `StoreCreated`) at a later version re-adds a removed product's id.
    let creates = matches!(event, StoresEvent::ProductAdded(_) | StoresEvent::StoreCreated(_));
    if creates && envelope.aggregate_version != 1 {
        return Err(ReactError::reject(format!(
            "{} creates {:?} but has aggregate version {}: an entity is created at version 1, \
             and a removed product's id is not reused",
            envelope.event_type, envelope.aggregate_id, envelope.aggregate_version
        )));
    }
    K::apply(tables, event)
}

/// The owner's store or product written to `K`'s caches: what `K`'s `Adopts<StoresEvent>` does.
pub fn adopt<K: StoresCache>(
    tables: &mut StoresCacheTables<'_, K>,
    aggregate: &str,
    id: &str,
    state: serde_json::Value,
) -> Result<(), StorageError> {
    let corrupt = |e: serde_json::Error| StorageError::Corrupt {
        table: STORES_CACHE,
        reason: format!("the stores context's {aggregate} {id:?}: {e}"),
    };
    match aggregate {
        "store" => tables.put_store(id, &K::store_row(&serde_json::from_value(state).map_err(corrupt)?)),
        _ => match K::product_row(&serde_json::from_value(state).map_err(corrupt)?) {
            Some(row) => tables.put_product(id, &row),
            None => tables.remove_product(id),
        },
    }
}

/// A store or product its owner deleted, forgotten.
pub fn forget<K: StoresCache>(
    tables: &mut StoresCacheTables<'_, K>,
    aggregate: &str,
    id: &str,
) -> Result<(), StorageError> {
    match aggregate {
        "store" => tables.remove_store(id),
        _ => tables.remove_product(id),
    }
}

/// Makes a [`StoresCache`] kind a cache of the stores context's entities: it reacts to stores
/// events (never emitting) and adopts the stores context's answers, so that it is declared
/// `.caches::<StoresEvent>()`.
macro_rules! stores_cache {
    ($kind:ty) => {
        impl carrier_storage::Reacts<$crate::stores::events::StoresEvent> for $kind {
            /// A cache: it never emits.
            fn may_emit(_event: &$crate::stores::events::StoresEvent) -> bool {
                false
            }

            type Tables<'txn> = $crate::caches::stores::StoresCacheTables<'txn, $kind>;

            fn open<'txn>(
                txn: &'txn carrier_storage::WriteTransaction,
            ) -> Result<Self::Tables<'txn>, carrier_storage::StorageError> {
                $crate::caches::stores::StoresCacheTables::open(txn)
            }

            fn react(
                tables: &mut Self::Tables<'_>,
                _emit: &mut carrier_storage::Emitter<'_, <$kind as carrier_storage::ContextKind>::Event>,
                envelope: &carrier_messages::Envelope,
                event: &$crate::stores::events::StoresEvent,
            ) -> Result<(), carrier_storage::ReactError> {
                $crate::caches::stores::react::<$kind>(tables, envelope, event)
            }
        }

        impl carrier_storage::Adopts<$crate::stores::events::StoresEvent> for $kind {
            /// The owner's store or product, read as the aggregate says.
            type State = serde_json::Value;

            const TABLES: &'static [(&'static str, &'static str)] =
                &[("store", $crate::caches::stores::STORES_CACHE), ("product", $crate::caches::stores::PRODUCTS_CACHE)];

            fn adopt(
                tables: &mut Self::Tables<'_>,
                aggregate: &str,
                id: &str,
                state: serde_json::Value,
            ) -> Result<(), carrier_storage::StorageError> {
                $crate::caches::stores::adopt::<$kind>(tables, aggregate, id, state)
            }

            fn forget(
                tables: &mut Self::Tables<'_>,
                aggregate: &str,
                id: &str,
            ) -> Result<(), carrier_storage::StorageError> {
                $crate::caches::stores::forget::<$kind>(tables, aggregate, id)
            }
        }
    };
}
pub(crate) use stores_cache;

/// What a context's file answers of its stores caches.
pub trait StoresCacheFile {
    /// A cached store.
    type Store;
    /// A cached product.
    type Product;
    /// One cached store (read on the snapshot lookups share).
    fn store(&self, id: &str) -> Result<Option<Self::Store>, StorageError>;
    /// One cached product.
    fn product(&self, id: &str) -> Result<Option<Self::Product>, StorageError>;
    /// Every cached store with its version, by id.
    fn stores(&self) -> Result<Vec<(String, Self::Store, u64)>, StorageError>;
    /// Every cached product with its version, by id.
    fn products(&self) -> Result<Vec<(String, Self::Product, u64)>, StorageError>;
}

impl<K: StoresCache> StoresCacheFile for ContextFile<K> {
    type Store = K::Store;
    type Product = K::Product;

    fn store(&self, id: &str) -> Result<Option<K::Store>, StorageError> {
        self.row(&K::stores_table(), id)
    }

    fn product(&self, id: &str) -> Result<Option<K::Product>, StorageError> {
        self.row(&K::products_table(), id)
    }

    fn stores(&self) -> Result<Vec<(String, K::Store, u64)>, StorageError> {
        self.read(|txn| K::stores_table().all_with_versions(txn, "store"))
    }

    fn products(&self) -> Result<Vec<(String, K::Product, u64)>, StorageError> {
        self.read(|txn| K::products_table().all_with_versions(txn, "product"))
    }
}

/// What the stores caches' unit tests call on a file: a batch of stores events, and an owner's
/// answer about a product.
#[cfg(test)]
pub(crate) trait StoresCacheTestExt {
    /// Applies a batch of stores events in one transaction.
    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[carrier_storage::Inbound<StoresEvent>],
    ) -> Result<carrier_storage::BatchOutcome, StorageError>;
    /// Writes a product as its owner reported it.
    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<carrier_storage::Adopted, StorageError>;
}

#[cfg(test)]
impl<K> StoresCacheTestExt for carrier_storage::FileWriter<K>
where
    K: StoresCache + carrier_storage::Adopts<StoresEvent, State = serde_json::Value>,
{
    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[carrier_storage::Inbound<StoresEvent>],
    ) -> Result<carrier_storage::BatchOutcome, StorageError> {
        self.apply(consumer, batch, 0)
    }

    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<carrier_storage::Adopted, StorageError> {
        let state = serde_json::to_value(snapshot)
            .map_err(|e| StorageError::Corrupt { table: "test", reason: e.to_string() })?;
        self.adopt::<StoresEvent>("product", &snapshot.id, snapshot.version, |t| {
            <K as carrier_storage::Adopts<StoresEvent>>::adopt(t, "product", &snapshot.id, state)
        })
    }
}
