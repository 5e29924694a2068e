//! The depot context's local caches of the stores context's data (seed 001's
//! `depot.stores_cache` and `depot.products_cache`): what a shopping list needs to send a bot to
//! the right store (name and location) for the right product.

use serde::{Deserialize, Serialize};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};

use crate::cache::{CacheKind, CacheTables, StoresCacheFile};
use crate::StorageError;

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
pub type DepotDb = StoresCacheFile<Depot>;

/// What the depot keeps: names and locations of stores, names of products.
pub struct Depot;

impl CacheKind for Depot {
    type Store = DepotStore;
    type Product = DepotProduct;

    fn apply(t: &mut CacheTables<'_, Self>, event: &StoresEvent) -> Result<(), StorageError> {
        match event {
            // StoreCacheRepository.Add(storeID, name, location) and Rename.
            StoresEvent::StoreCreated(e) => {
                t.put_store(&e.id, &DepotStore { name: e.name.clone(), location: e.location.clone() })
            }
            StoresEvent::StoreRebranded(e) => t.update_store(&e.id, |s| s.name = e.name.clone()),
            // ProductCacheRepository.Add(productID, storeID, name), Rebrand and Remove.
            StoresEvent::ProductAdded(e) => {
                t.put_product(&e.id, &DepotProduct { store_id: e.store_id.clone(), name: e.name.clone() })
            }
            StoresEvent::ProductRebranded(e) => t.update_product(&e.id, |p| p.name = e.name.clone()),
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id),
            // The depot needs neither participation nor prices; their versions still count.
            StoresEvent::StoreParticipationEnabled(_)
            | StoresEvent::StoreParticipationDisabled(_)
            | StoresEvent::ProductPriceIncreased(_)
            | StoresEvent::ProductPriceDecreased(_) => Ok(()),
        }
    }

    fn store_row(snapshot: &StoreSnapshot) -> DepotStore {
        DepotStore { name: snapshot.name.clone(), location: snapshot.location.clone() }
    }

    fn product_row(snapshot: &ProductSnapshot) -> Option<DepotProduct> {
        (!snapshot.removed).then(|| DepotProduct { store_id: snapshot.store_id.clone(), name: snapshot.name.clone() })
    }
}
