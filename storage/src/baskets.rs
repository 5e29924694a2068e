//! The baskets context's local caches of the stores context's data (seed 001's
//! `baskets.stores_cache` and `baskets.products_cache`), so that a basket never asks the stores
//! service for a name or a price on the hot path.

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

/// A store as the baskets context knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedStore {
    /// Display name.
    pub name: String,
}

/// A product as the baskets context knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedProduct {
    /// The store that sells it.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// Price in minor units.
    pub price: i64,
}

/// `baskets.redb`: the caches plus the engine's inbox, versions and checkpoints.
pub struct BasketsDb {
    db: Database,
    path: PathBuf,
}

impl BasketsDb {
    /// Opens or creates the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = engine::open_database(&path, |txn| {
            engine::create_tables(txn)?;
            txn.open_table(STORES_CACHE).during("create stores_cache")?;
            txn.open_table(PRODUCTS_CACHE).during("create products_cache")?;
            Ok(())
        })?;
        Ok(BasketsDb { db, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One cached store.
    pub fn store(&self, id: &str) -> Result<Option<CachedStore>, StorageError> {
        get_row(&self.db, STORES_CACHE, "stores_cache", id)
    }

    /// One cached product.
    pub fn product(&self, id: &str) -> Result<Option<CachedProduct>, StorageError> {
        get_row(&self.db, PRODUCTS_CACHE, "products_cache", id)
    }

    /// Every cached store with its version, by id.
    pub fn stores(&self) -> Result<Vec<(String, CachedStore, u64)>, StorageError> {
        all_rows_with_version(&self.db, STORES_CACHE, "stores_cache", "store")
    }

    /// Every cached product with its version, by id.
    pub fn products(&self) -> Result<Vec<(String, CachedProduct, u64)>, StorageError> {
        all_rows_with_version(&self.db, PRODUCTS_CACHE, "products_cache", "product")
    }
}

impl crate::StoresCacheDb for BasketsDb {
    type Store = CachedStore;
    type Product = CachedProduct;

    fn database(&self) -> &Database {
        &self.db
    }

    fn cached_store(&self, id: &str) -> Result<Option<CachedStore>, StorageError> {
        self.store(id)
    }

    fn cached_product(&self, id: &str) -> Result<Option<CachedProduct>, StorageError> {
        self.product(id)
    }

    fn store_row(snapshot: &StoreSnapshot) -> CachedStore {
        CachedStore { name: snapshot.name.clone() }
    }

    fn product_row(snapshot: &ProductSnapshot) -> Option<CachedProduct> {
        (!snapshot.removed).then(|| CachedProduct {
            store_id: snapshot.store_id.clone(),
            name: snapshot.name.clone(),
            price: snapshot.price,
        })
    }

    fn apply_stores_events(
        &self,
        consumer: &str,
        batch: &[Inbound<StoresEvent>],
    ) -> Result<BatchOutcome, StorageError> {
        engine::apply_batch(&self.db, consumer, &StoresProjection, batch)
    }

    fn adopt_store(&self, snapshot: &StoreSnapshot) -> Result<Adopted, StorageError> {
        engine::adopt::<StoresEvent, _>(&self.db, &StoresProjection, "store", &snapshot.id, snapshot.version, |t| {
            t.add_store(&snapshot.id, &snapshot.name)
        })
    }

    fn adopt_product(&self, snapshot: &ProductSnapshot) -> Result<Adopted, StorageError> {
        engine::adopt::<StoresEvent, _>(&self.db, &StoresProjection, "product", &snapshot.id, snapshot.version, |t| {
            if snapshot.removed {
                t.remove_product(&snapshot.id)
            } else {
                t.add_product(&snapshot.id, &snapshot.store_id, &snapshot.name, snapshot.price)
            }
        })
    }
}

/// The caches opened for one batch, with seed 001's repository operations.
pub struct BasketsTables<'txn> {
    stores: Table<'txn, &'static str, &'static [u8]>,
    products: Table<'txn, &'static str, &'static [u8]>,
}

impl BasketsTables<'_> {
    /// `StoreCacheRepository.Add`.
    pub fn add_store(&mut self, id: &str, name: &str) -> Result<(), StorageError> {
        let row = encode_row("stores_cache", &CachedStore { name: name.to_string() })?;
        self.stores.insert(id, row.as_slice()).during("write stores_cache")?;
        Ok(())
    }

    /// `StoreCacheRepository.Rename`. A store the cache has never seen is added: the name is all
    /// this cache keeps, so the rename carries the whole row.
    pub fn rename_store(&mut self, id: &str, name: &str) -> Result<(), StorageError> {
        self.add_store(id, name)
    }

    /// `ProductCacheRepository.Add`.
    pub fn add_product(&mut self, id: &str, store_id: &str, name: &str, price: i64) -> Result<(), StorageError> {
        let row = CachedProduct { store_id: store_id.to_string(), name: name.to_string(), price };
        let bytes = encode_row("products_cache", &row)?;
        self.products.insert(id, bytes.as_slice()).during("write products_cache")?;
        Ok(())
    }

    /// `ProductCacheRepository.Rebrand`.
    pub fn rebrand_product(&mut self, id: &str, name: &str) -> Result<(), StorageError> {
        self.update_product(id, |p| p.name = name.to_string())
    }

    /// `ProductCacheRepository.UpdatePrice`: adds `delta` (negative to lower it).
    pub fn update_price(&mut self, id: &str, delta: i64) -> Result<(), StorageError> {
        self.update_product(id, |p| p.price = p.price.saturating_add(delta))
    }

    /// `ProductCacheRepository.Remove`.
    pub fn remove_product(&mut self, id: &str) -> Result<(), StorageError> {
        self.products.remove(id).during("remove products_cache")?;
        Ok(())
    }

    fn update_product(&mut self, id: &str, change: impl FnOnce(&mut CachedProduct)) -> Result<(), StorageError> {
        let current = self.products.get(id).during("read products_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            // Versions make this unreachable for events from one owner: the product's
            // version-1 event adds it first. Say so loudly rather than invent a row.
            tracing::warn!(product.id = id, "product missing from baskets cache; change skipped");
            return Ok(());
        };
        let mut row: CachedProduct = decode_row("products_cache", &bytes)?;
        change(&mut row);
        let bytes = encode_row("products_cache", &row)?;
        self.products.insert(id, bytes.as_slice()).during("write products_cache")?;
        Ok(())
    }
}

/// Maps stores events onto the baskets caches.
struct StoresProjection;

impl Projection<StoresEvent> for StoresProjection {
    type Tables<'txn> = BasketsTables<'txn>;

    fn open<'txn>(&self, txn: &'txn WriteTransaction) -> Result<BasketsTables<'txn>, StorageError> {
        Ok(BasketsTables {
            stores: txn.open_table(STORES_CACHE).during("open stores_cache")?,
            products: txn.open_table(PRODUCTS_CACHE).during("open products_cache")?,
        })
    }

    fn apply(&self, t: &mut BasketsTables<'_>, _envelope: &Envelope, event: &StoresEvent) -> Result<(), StorageError> {
        match event {
            StoresEvent::StoreCreated(e) => t.add_store(&e.id, &e.name),
            StoresEvent::StoreRebranded(e) => t.rename_store(&e.id, &e.name),
            // Baskets does not care whether a store takes part in automated ordering, but the
            // events still advance the store's version, which the engine records.
            StoresEvent::StoreParticipationEnabled(_) | StoresEvent::StoreParticipationDisabled(_) => Ok(()),
            StoresEvent::ProductAdded(e) => t.add_product(&e.id, &e.store_id, &e.name, e.price),
            StoresEvent::ProductRebranded(e) => t.rebrand_product(&e.id, &e.name),
            StoresEvent::ProductPriceIncreased(e) => t.update_price(&e.id, e.delta),
            StoresEvent::ProductPriceDecreased(e) => t.update_price(&e.id, -e.delta),
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Disposition;
    use crate::StoresCacheDb;
    use carrier_messages::codec::Causality;
    use carrier_messages::stores::*;
    use carrier_messages::Decoded;

    fn event(e: StoresEvent, version: u64) -> Inbound<StoresEvent> {
        Inbound { stream_seq: version, decoded: Decoded::new(e, version, &Causality::default()) }
    }

    fn added() -> Inbound<StoresEvent> {
        event(
            StoresEvent::ProductAdded(ProductAdded {
                id: "p".into(),
                store_id: "s".into(),
                name: "Kettle".into(),
                description: String::new(),
                sku: String::new(),
                price: 1000,
            }),
            1,
        )
    }

    fn raise(delta: i64, version: u64) -> Inbound<StoresEvent> {
        event(StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: "p".into(), delta }), version)
    }

    fn db() -> (tempfile::TempDir, BasketsDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = BasketsDb::open(dir.path().join("baskets.redb")).expect("open");
        (dir, db)
    }

    #[test]
    fn a_redelivered_price_delta_is_applied_once() {
        let (_dir, db) = db();
        let (a, r) = (added(), raise(50, 2));
        let first = db.apply_stores_events("c", &[a.clone(), r.clone()]).expect("apply");
        assert_eq!(first.dispositions, vec![Disposition::Applied, Disposition::Applied]);
        let again = db.apply_stores_events("c", &[a, r.clone(), r]).expect("apply");
        assert_eq!(again.dispositions, vec![Disposition::Duplicate; 3]);
        assert_eq!(db.product("p").expect("read").expect("row").price, 1050);
    }

    #[test]
    fn the_same_version_under_a_new_id_is_stale() {
        let (_dir, db) = db();
        db.apply_stores_events("c", &[added(), raise(50, 2)]).expect("apply");
        let republished = raise(50, 2); // a fresh event id, an old version
        let out = db.apply_stores_events("c", &[republished]).expect("apply");
        assert_eq!(out.dispositions, vec![Disposition::Stale { current: 2 }]);
        assert_eq!(db.product("p").expect("read").expect("row").price, 1050);
    }

    #[test]
    fn an_event_after_a_gap_waits_for_the_missing_one() {
        let (_dir, db) = db();
        let out = db.apply_stores_events("c", &[added(), raise(7, 3), raise(100, 4)]).expect("apply");
        assert_eq!(out.dispositions[1], Disposition::Parked { expected: 2 });
        assert_eq!(db.product("p").expect("read").expect("row").price, 1000);
        assert_eq!(db.engine_stats().expect("stats").parked, 2);

        let out = db.apply_stores_events("c", &[raise(1, 2)]).expect("apply");
        assert_eq!(out.dispositions, vec![Disposition::Applied]);
        assert_eq!(out.unparked, 2);
        assert_eq!(db.product("p").expect("read").expect("row").price, 1108);
        let stats = db.engine_stats().expect("stats");
        assert_eq!(stats.parked, 0);
        assert_eq!(stats.checkpoints, vec![("c".to_string(), 4)]);
        let (_, _, version) = db.products().expect("rows").into_iter().next().expect("one");
        assert_eq!(version, 4);
    }

    #[test]
    fn a_store_rename_and_a_product_removal_reach_the_caches() {
        let (_dir, db) = db();
        let created = event(
            StoresEvent::StoreCreated(StoreCreated { id: "s".into(), name: "A".into(), location: "L".into() }),
            1,
        );
        let renamed = event(StoresEvent::StoreRebranded(StoreRebranded { id: "s".into(), name: "B".into() }), 2);
        let removed = event(StoresEvent::ProductRemoved(ProductRemoved { id: "p".into() }), 2);
        db.apply_stores_events("c", &[created, renamed, added(), removed]).expect("apply");
        assert_eq!(db.store("s").expect("read"), Some(CachedStore { name: "B".into() }));
        assert_eq!(db.product("p").expect("read"), None);
    }

    #[test]
    fn past_the_inbox_horizon_a_redelivery_is_still_harmless() {
        let (_dir, db) = db();
        let (a, r) = (added(), raise(50, 2));
        db.apply_stores_events("c", &[a.clone(), r.clone()]).expect("apply");
        assert_eq!(db.prune_inbox(std::time::Duration::from_secs(3600), 100).expect("prune"), 0, "nothing old yet");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(db.prune_inbox(std::time::Duration::ZERO, 100).expect("prune"), 2);
        assert_eq!(db.engine_stats().expect("stats").inbox, 0);
        let again = db.apply_stores_events("c", &[a, r]).expect("apply");
        assert_eq!(again.dispositions, vec![Disposition::Stale { current: 2 }; 2], "versions still guard");
        assert_eq!(db.product("p").expect("read").expect("row").price, 1050);
    }
}

#[cfg(test)]
mod adopt_tests {
    use super::*;
    use crate::StoresCacheDb;
    use carrier_messages::codec::Causality;
    use carrier_messages::stores::*;
    use carrier_messages::Decoded;

    fn raise(delta: i64, version: u64) -> Inbound<StoresEvent> {
        let e = StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: "p".into(), delta });
        Inbound { stream_seq: version, decoded: Decoded::new(e, version, &Causality::default()) }
    }

    fn snapshot(price: i64, version: u64) -> ProductSnapshot {
        ProductSnapshot {
            id: "p".into(),
            store_id: "s".into(),
            name: "K".into(),
            description: String::new(),
            sku: String::new(),
            price,
            removed: false,
            version,
        }
    }

    #[test]
    fn an_owner_snapshot_closes_a_gap_and_later_parked_events_follow() {
        let dir = tempfile::tempdir().expect("dir");
        let db = BasketsDb::open(dir.path().join("b.redb")).expect("open");
        // The cache never saw versions 1 to 3 (the stream was trimmed); 4 and 6 arrive.
        db.apply_stores_events("c", &[raise(10, 4), raise(1, 6)]).expect("apply");
        assert_eq!(db.gaps().expect("gaps"), vec![("product".into(), "p".into(), 0, 4)]);
        // The owner says: at version 4 the price is 1040 (version 4 included).
        assert_eq!(db.adopt_product(&snapshot(1040, 4)).expect("adopt"), Adopted::Written { unparked: 0 });
        assert_eq!(db.product("p").expect("read").expect("row").price, 1040);
        // Version 5 arrives late; 6 follows it out of the parked table.
        db.apply_stores_events("c", &[raise(100, 5)]).expect("apply");
        assert_eq!(db.product("p").expect("read").expect("row").price, 1141);
        assert!(db.gaps().expect("gaps").is_empty());
        // An older snapshot never overwrites newer data.
        assert_eq!(db.adopt_product(&snapshot(1, 2)).expect("adopt"), Adopted::AlreadyCurrent { current: 6 });
        assert_eq!(db.product("p").expect("read").expect("row").price, 1141);
    }
}
