//! The depot context's local caches of the stores context's data (seed 001's
//! `depot.stores_cache` and `depot.products_cache`): what a shopping list needs to send a bot to
//! the right store (name and location) for the right product.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};
use carrier_messages::Envelope;

use crate::engine::{self, Adopted, BatchOutcome, Inbound, Projection};
use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::rows::{all_rows_with_version, get_row};
use crate::StorageError;

const STORES_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("stores_cache");
const PRODUCTS_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("products_cache");

/// A store as the depot knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepotStore {
    /// Display name.
    pub name: String,
    /// Where in the mall: where the bots go.
    pub location: String,
}

/// A product as the depot knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepotProduct {
    /// The store that sells it.
    pub store_id: String,
    /// Display name.
    pub name: String,
}

/// `depot.redb`: the caches plus the engine's inbox, versions and checkpoints.
pub struct DepotDb {
    db: Database,
    path: PathBuf,
}

impl DepotDb {
    /// Opens or creates the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = engine::open_database(&path, |txn| {
            engine::create_tables(txn)?;
            txn.open_table(STORES_CACHE).during("create stores_cache")?;
            txn.open_table(PRODUCTS_CACHE).during("create products_cache")?;
            Ok(())
        })?;
        Ok(DepotDb { db, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One cached store.
    pub fn store(&self, id: &str) -> Result<Option<DepotStore>, StorageError> {
        get_row(&self.db, STORES_CACHE, "stores_cache", id)
    }

    /// One cached product.
    pub fn product(&self, id: &str) -> Result<Option<DepotProduct>, StorageError> {
        get_row(&self.db, PRODUCTS_CACHE, "products_cache", id)
    }

    /// Every cached store with its version, by id.
    pub fn stores(&self) -> Result<Vec<(String, DepotStore, u64)>, StorageError> {
        all_rows_with_version(&self.db, STORES_CACHE, "stores_cache", "store")
    }

    /// Every cached product with its version, by id.
    pub fn products(&self) -> Result<Vec<(String, DepotProduct, u64)>, StorageError> {
        all_rows_with_version(&self.db, PRODUCTS_CACHE, "products_cache", "product")
    }
}

impl crate::StoresCacheDb for DepotDb {
    type Store = DepotStore;
    type Product = DepotProduct;

    fn database(&self) -> &Database {
        &self.db
    }

    fn cached_store(&self, id: &str) -> Result<Option<DepotStore>, StorageError> {
        self.store(id)
    }

    fn cached_product(&self, id: &str) -> Result<Option<DepotProduct>, StorageError> {
        self.product(id)
    }

    fn store_row(snapshot: &StoreSnapshot) -> DepotStore {
        DepotStore { name: snapshot.name.clone(), location: snapshot.location.clone() }
    }

    fn product_row(snapshot: &ProductSnapshot) -> Option<DepotProduct> {
        (!snapshot.removed).then(|| DepotProduct { store_id: snapshot.store_id.clone(), name: snapshot.name.clone() })
    }

    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[Inbound<StoresEvent>],
    ) -> Result<BatchOutcome, StorageError> {
        engine::apply_batch(&self.db, consumer, &DepotProjection, batch)
    }

    fn adopt_store(&self, snapshot: &StoreSnapshot) -> Result<Adopted, StorageError> {
        engine::adopt::<StoresEvent, _>(&self.db, &DepotProjection, "store", &snapshot.id, snapshot.version, |t| {
            t.add_store(&snapshot.id, &snapshot.name, &snapshot.location)
        })
    }

    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<Adopted, StorageError> {
        engine::adopt::<StoresEvent, _>(&self.db, &DepotProjection, "product", &snapshot.id, snapshot.version, |t| {
            if snapshot.removed {
                t.remove_product(&snapshot.id)
            } else {
                t.add_product(&snapshot.id, &snapshot.store_id, &snapshot.name)
            }
        })
    }
}

/// The depot caches opened for one batch, with seed 001's depot repository operations.
pub struct DepotTables<'txn> {
    stores: Table<'txn, &'static str, &'static [u8]>,
    products: Table<'txn, &'static str, &'static [u8]>,
}

impl DepotTables<'_> {
    /// `StoreCacheRepository.Add(storeID, name, location)`.
    pub fn add_store(&mut self, id: &str, name: &str, location: &str) -> Result<(), StorageError> {
        let row = encode_row("stores_cache", &DepotStore { name: name.to_string(), location: location.to_string() })?;
        self.stores.insert(id, row.as_slice()).during("write stores_cache")?;
        Ok(())
    }

    /// `StoreCacheRepository.Rename`.
    pub fn rename_store(&mut self, id: &str, name: &str) -> Result<(), StorageError> {
        let current = self.stores.get(id).during("read stores_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            tracing::warn!(store.id = id, "store missing from depot cache; rename skipped");
            return Ok(());
        };
        let mut row: DepotStore = decode_row("stores_cache", &bytes)?;
        row.name = name.to_string();
        self.add_store(id, &row.name, &row.location)
    }

    /// `ProductCacheRepository.Add(productID, storeID, name)`.
    pub fn add_product(&mut self, id: &str, store_id: &str, name: &str) -> Result<(), StorageError> {
        let row =
            encode_row("products_cache", &DepotProduct { store_id: store_id.to_string(), name: name.to_string() })?;
        self.products.insert(id, row.as_slice()).during("write products_cache")?;
        Ok(())
    }

    /// `ProductCacheRepository.Rebrand`.
    pub fn rebrand_product(&mut self, id: &str, name: &str) -> Result<(), StorageError> {
        let current = self.products.get(id).during("read products_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            tracing::warn!(product.id = id, "product missing from depot cache; rebrand skipped");
            return Ok(());
        };
        let row: DepotProduct = decode_row("products_cache", &bytes)?;
        self.add_product(id, &row.store_id, name)
    }

    /// `ProductCacheRepository.Remove`.
    pub fn remove_product(&mut self, id: &str) -> Result<(), StorageError> {
        self.products.remove(id).during("remove products_cache")?;
        Ok(())
    }
}

/// Maps stores events onto the depot caches.
struct DepotProjection;

impl Projection<StoresEvent> for DepotProjection {
    type Tables<'txn> = DepotTables<'txn>;

    fn open<'txn>(&self, txn: &'txn WriteTransaction) -> Result<DepotTables<'txn>, StorageError> {
        Ok(DepotTables {
            stores: txn.open_table(STORES_CACHE).during("open stores_cache")?,
            products: txn.open_table(PRODUCTS_CACHE).during("open products_cache")?,
        })
    }

    fn apply(&self, t: &mut DepotTables<'_>, _envelope: &Envelope, event: &StoresEvent) -> Result<(), StorageError> {
        match event {
            StoresEvent::StoreCreated(e) => t.add_store(&e.id, &e.name, &e.location),
            StoresEvent::StoreRebranded(e) => t.rename_store(&e.id, &e.name),
            StoresEvent::ProductAdded(e) => t.add_product(&e.id, &e.store_id, &e.name),
            StoresEvent::ProductRebranded(e) => t.rebrand_product(&e.id, &e.name),
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id),
            // The depot needs neither participation nor prices; their versions still count.
            StoresEvent::StoreParticipationEnabled(_)
            | StoresEvent::StoreParticipationDisabled(_)
            | StoresEvent::ProductPriceIncreased(_)
            | StoresEvent::ProductPriceDecreased(_) => Ok(()),
        }
    }
}
