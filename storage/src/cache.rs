//! Caches of the stores context's data in a consuming context's file (baskets, depot, search).
//!
//! Every such cache has the same two tables, `stores_cache` and `products_cache` (id → CBOR
//! row). What differs between contexts is only what a row holds and what each event does to it:
//! a [`CacheKind`], which makes the context react to stores events and adopt the stores
//! context's answers (a cache miss, a version gap) like any cache of another context's entities.

use std::marker::PhantomData;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};
use carrier_messages::Envelope;

use crate::context::{Adopts, ContextFile, ContextKind, Emitter, Reacts};
use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::rows::all_rows_with_version;
use crate::{Rows, StorageError};

pub(crate) const STORES_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("stores_cache");
pub(crate) const PRODUCTS_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("products_cache");

/// What one consuming context keeps of stores and products, and what each event does to it.
pub trait CacheKind: ContextKind {
    /// A cached store.
    type Store: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// A cached product.
    type Product: Serialize + DeserializeOwned + Clone + Send + 'static;

    /// Applies one event to the rows (called only for the entity's next version).
    fn apply(tables: &mut CacheTables<'_, Self>, event: &StoresEvent) -> Result<(), StorageError>;

    /// The store row from the owner's snapshot.
    fn store_row(snapshot: &StoreSnapshot) -> Self::Store;

    /// The product row from the owner's snapshot; `None` when it was removed.
    fn product_row(snapshot: &ProductSnapshot) -> Option<Self::Product>;
}

/// The two cache tables opened for one transaction.
pub struct CacheTables<'txn, K> {
    stores: Table<'txn, &'static str, &'static [u8]>,
    products: Table<'txn, &'static str, &'static [u8]>,
    kind: PhantomData<K>,
}

impl<K: CacheKind> CacheTables<'_, K> {
    /// Writes a store row (seed 001's `StoreCacheRepository.Add`).
    pub fn put_store(&mut self, id: &str, row: &K::Store) -> Result<(), StorageError> {
        let bytes = encode_row("stores_cache", row)?;
        self.stores.insert(id, bytes.as_slice()).during("write stores_cache")?;
        Ok(())
    }

    /// Changes a cached store (e.g. `Rename`); a store the cache never saw is left alone.
    pub fn update_store(&mut self, id: &str, change: impl FnOnce(&mut K::Store)) -> Result<(), StorageError> {
        let current = self.stores.get(id).during("read stores_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            // Versions make this unreachable for one owner's events: version 1 adds the row.
            tracing::warn!(store.id = id, "store missing from the cache; change skipped");
            return Ok(());
        };
        let mut row: K::Store = decode_row("stores_cache", &bytes)?;
        change(&mut row);
        self.put_store(id, &row)
    }

    /// Writes a product row (`ProductCacheRepository.Add`).
    pub fn put_product(&mut self, id: &str, row: &K::Product) -> Result<(), StorageError> {
        let bytes = encode_row("products_cache", row)?;
        self.products.insert(id, bytes.as_slice()).during("write products_cache")?;
        Ok(())
    }

    /// Changes a cached product (`Rebrand`, `UpdatePrice`); a product the cache never saw is left
    /// alone.
    pub fn update_product(&mut self, id: &str, change: impl FnOnce(&mut K::Product)) -> Result<(), StorageError> {
        let current = self.products.get(id).during("read products_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            // Versions let a product's next event through only after its earlier ones, so a
            // missing row means the product was removed: removal is final (the owner refuses
            // changes to a removed product), and an event that changes one breaks the contract.
            return Err(StorageError::poison(format!(
                "product {id:?} was removed (or never added): a removed product takes no further changes"
            )));
        };
        let mut row: K::Product = decode_row("products_cache", &bytes)?;
        change(&mut row);
        self.put_product(id, &row)
    }

    /// Deletes a product (`ProductCacheRepository.Remove`).
    pub fn remove_product(&mut self, id: &str) -> Result<(), StorageError> {
        self.products.remove(id).during("remove products_cache")?;
        Ok(())
    }
}

impl<K: CacheKind> Reacts<StoresEvent> for K {
    /// A cache: it never emits.
    fn may_emit(_event: &StoresEvent) -> bool {
        false
    }

    type Tables<'txn> = CacheTables<'txn, K>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<CacheTables<'txn, K>, StorageError> {
        Ok(CacheTables {
            stores: txn.open_table(STORES_CACHE).during("open stores_cache")?,
            products: txn.open_table(PRODUCTS_CACHE).during("open products_cache")?,
            kind: PhantomData,
        })
    }

    fn react(
        tables: &mut CacheTables<'_, K>,
        _emit: &mut Emitter<'_, K::Event>,
        envelope: &Envelope,
        event: &StoresEvent,
    ) -> Result<(), StorageError> {
        // An id is never reused: the event creating an entity is its version 1, so a
        // `ProductAdded` (or `StoreCreated`) at a later version re-adds a removed product's id.
        let creates = matches!(event, StoresEvent::ProductAdded(_) | StoresEvent::StoreCreated(_));
        if creates && envelope.aggregate_version != 1 {
            return Err(StorageError::poison(format!(
                "{} creates {:?} but has aggregate version {}: an entity is created at version 1, \
                 and a removed product's id is not reused",
                envelope.event_type, envelope.aggregate_id, envelope.aggregate_version
            )));
        }
        K::apply(tables, event)
    }
}

/// Creates the two cache tables (for a kind's [`ContextKind::create_tables`]).
pub fn create_stores_cache_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(STORES_CACHE).during("create stores_cache")?;
    txn.open_table(PRODUCTS_CACHE).during("create products_cache")?;
    Ok(())
}

impl<K: CacheKind> ContextFile<K> {
    /// One cached store.
    pub fn store(&self, id: &str) -> Result<Option<K::Store>, StorageError> {
        crate::rows::get_row_in(&*self.snapshot()?, STORES_CACHE, "stores_cache", id)
    }

    /// One cached product.
    pub fn product(&self, id: &str) -> Result<Option<K::Product>, StorageError> {
        crate::rows::get_row_in(&*self.snapshot()?, PRODUCTS_CACHE, "products_cache", id)
    }

    /// Every cached store with its version, by id.
    pub fn stores(&self) -> Result<Vec<(String, K::Store, u64)>, StorageError> {
        all_rows_with_version(&self.db, STORES_CACHE, "stores_cache", "store")
    }

    /// Every cached product with its version, by id.
    pub fn products(&self) -> Result<Vec<(String, K::Product, u64)>, StorageError> {
        all_rows_with_version(&self.db, PRODUCTS_CACHE, "products_cache", "product")
    }
}

impl<K: CacheKind> Adopts<StoresEvent> for K {
    /// The owner's store or product, read as the aggregate says.
    type State = serde_json::Value;

    const TABLES: &'static [(&'static str, &'static str)] = &[("store", "stores_cache"), ("product", "products_cache")];

    fn adopt(
        tables: &mut CacheTables<'_, K>,
        aggregate: &str,
        id: &str,
        state: serde_json::Value,
    ) -> Result<(), StorageError> {
        let corrupt = |e: serde_json::Error| StorageError::Corrupt {
            table: "stores_cache",
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

    fn forget(tables: &mut CacheTables<'_, K>, aggregate: &str, id: &str) -> Result<(), StorageError> {
        match aggregate {
            "store" => {
                tables.stores.remove(id).during("remove stores_cache")?;
                Ok(())
            }
            _ => tables.remove_product(id),
        }
    }
}

/// The stores cache table of `K`, for lookups (`ContextHandle::lookup`).
pub fn stores_rows<K: CacheKind>() -> Rows<K::Store> {
    Rows::new("stores_cache")
}

/// The products cache table of `K`, for lookups.
pub fn products_rows<K: CacheKind>() -> Rows<K::Product> {
    Rows::new("products_cache")
}

/// What the stores caches' unit tests call on a file: a batch of stores events, and an owner's
/// answer about a product.
#[cfg(test)]
pub(crate) trait StoresCacheTestExt {
    /// Applies a batch of stores events in one transaction.
    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[crate::engine::Inbound<StoresEvent>],
    ) -> Result<crate::BatchOutcome, StorageError>;
    /// Writes a product as its owner reported it.
    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<crate::Adopted, StorageError>;
}

#[cfg(test)]
impl<K: CacheKind> StoresCacheTestExt for crate::FileWriter<K> {
    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[crate::engine::Inbound<StoresEvent>],
    ) -> Result<crate::BatchOutcome, StorageError> {
        self.apply(consumer, batch, 0)
    }

    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<crate::Adopted, StorageError> {
        let state = serde_json::to_value(snapshot)
            .map_err(|e| StorageError::Corrupt { table: "test", reason: e.to_string() })?;
        self.adopt::<StoresEvent>("product", &snapshot.id, snapshot.version, |t| {
            <K as Adopts<StoresEvent>>::adopt(t, "product", &snapshot.id, state)
        })
    }
}
