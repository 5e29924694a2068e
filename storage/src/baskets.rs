//! The baskets context's local caches of the stores context's data (seed 001's
//! `baskets.stores_cache` and `baskets.products_cache`), so that a basket never asks the stores
//! service for a name or a price on the hot path.

use serde::{Deserialize, Serialize};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};

use crate::cache::{CacheKind, CacheTables, StoresCacheFile};
use crate::StorageError;

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
pub type BasketsDb = StoresCacheFile<Baskets>;

/// What baskets keeps: names and prices.
pub struct Baskets;

impl CacheKind for Baskets {
    type Store = CachedStore;
    type Product = CachedProduct;

    fn apply(t: &mut CacheTables<'_, Self>, event: &StoresEvent) -> Result<(), StorageError> {
        match event {
            // StoreCacheRepository.Add; Rename carries the whole row this cache keeps.
            StoresEvent::StoreCreated(e) => t.put_store(&e.id, &CachedStore { name: e.name.clone() }),
            StoresEvent::StoreRebranded(e) => t.put_store(&e.id, &CachedStore { name: e.name.clone() }),
            // ProductCacheRepository.Add, Rebrand, UpdatePrice(delta), Remove.
            StoresEvent::ProductAdded(e) => t.put_product(
                &e.id,
                &CachedProduct { store_id: e.store_id.clone(), name: e.name.clone(), price: e.price },
            ),
            StoresEvent::ProductRebranded(e) => t.update_product(&e.id, |p| p.name = e.name.clone()),
            StoresEvent::ProductPriceIncreased(e) => {
                t.update_product(&e.id, |p| p.price = p.price.saturating_add(e.delta))
            }
            StoresEvent::ProductPriceDecreased(e) => {
                t.update_product(&e.id, |p| p.price = p.price.saturating_sub(e.delta))
            }
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id),
            // Baskets does not care whether a store takes part in automated ordering, but the
            // events still advance the store's version, which the engine records.
            StoresEvent::StoreParticipationEnabled(_) | StoresEvent::StoreParticipationDisabled(_) => Ok(()),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Disposition, Inbound};
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
    use crate::engine::{Adopted, Inbound};
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
