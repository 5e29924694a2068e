//! The depot context's file: shopping lists, and its local caches of the stores context's data
//! (seed 001's `depot.stores_cache` and `depot.products_cache`): what a shopping list needs to
//! send a bot to the right store (name and location) for the right product.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use carrier_messages::Causality;
use carrier_messages::Envelope;
use carrier_storage::ReactError;
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, Reacts, Rows, RowsMut, StorageError,
    WriteTransaction,
};

use super::events::*;
use crate::caches::stores::{stores_cache, StoresCache, StoresCacheTables};
use crate::ordering::events::OrderingEvent;
use crate::stores::events::{ProductSnapshot, StoreSnapshot, StoresEvent};

const SHOPPING_LISTS: Rows<ShoppingListRow> = Rows::new("shopping_lists");

/// Where a shopping list stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShoppingListStatus {
    /// The bots are collecting.
    Available,
    /// Everything was collected.
    Completed,
    /// The order was canceled first.
    Canceled,
}

/// A shopping list as the depot owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListRow {
    /// The order it collects.
    pub order_id: String,
    /// Where to go and what to pick up.
    pub stops: Vec<Stop>,
    /// Where it stands.
    pub status: ShoppingListStatus,
    /// The version of its last event.
    pub version: u64,
}

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

/// `depot.redb`: shopping lists, the caches, the outbox and the engine's tables.
pub type DepotDb = ContextFile<Depot>;

/// What the depot keeps: shopping lists; names and locations of stores, names of products.
pub struct Depot;

impl ContextKind for Depot {
    const NAME: &'static str = "depot";
    type Event = DepotEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        StoresCacheTables::<Depot>::create(txn)?;
        SHOPPING_LISTS.create(txn)?;
        Ok(())
    }
}

/// The depot's tables while it reacts to orders.
pub struct DepotOrderTables<'txn> {
    cache: StoresCacheTables<'txn, Depot>,
    lists: RowsMut<'txn, ShoppingListRow>,
}

impl Reacts<OrderingEvent> for Depot {
    fn may_emit(event: &OrderingEvent) -> bool {
        matches!(event, OrderingEvent::OrderCreated(_) | OrderingEvent::OrderCanceled(_))
    }

    type Tables<'txn> = DepotOrderTables<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<DepotOrderTables<'txn>, StorageError> {
        Ok(DepotOrderTables { cache: StoresCacheTables::open(txn)?, lists: SHOPPING_LISTS.open(txn)? })
    }

    fn react(
        t: &mut DepotOrderTables<'_>,
        emit: &mut Emitter<'_, DepotEvent>,
        envelope: &Envelope,
        event: &OrderingEvent,
    ) -> Result<(), ReactError> {
        match event {
            // CreateShoppingList: one stop per store, names and locations from the caches.
            OrderingEvent::OrderCreated(order) => {
                if t.lists.get(order.id.as_str())?.is_some() {
                    return Ok(());
                }
                let mut stops: BTreeMap<String, Stop> = BTreeMap::new();
                for item in &order.items {
                    if !stops.contains_key(&item.store_id) {
                        let store: DepotStore = t
                            .cache
                            .store(&item.store_id)?
                            .ok_or_else(|| ReactError::not_ready(format!("store {:?} is not cached", item.store_id)))?;
                        stops.insert(
                            item.store_id.clone(),
                            Stop {
                                store_id: item.store_id.clone(),
                                store_name: store.name,
                                store_location: store.location,
                                items: Vec::new(),
                            },
                        );
                    }
                    // A product removed since checkout keeps the name the order carries.
                    let product: Option<DepotProduct> = t.cache.product(&item.product_id)?;
                    let product_name = product.map(|p| p.name).unwrap_or_else(|| item.product_name.clone());
                    if let Some(stop) = stops.get_mut(&item.store_id) {
                        stop.items.push(StopItem {
                            product_id: item.product_id.clone(),
                            product_name,
                            quantity: item.quantity,
                        });
                    }
                }
                let stops: Vec<Stop> = stops.into_values().collect();
                let row = ShoppingListRow {
                    order_id: order.id.clone(),
                    stops: stops.clone(),
                    status: ShoppingListStatus::Available,
                    version: 1,
                };
                t.lists.put(&order.id, &row)?;
                let created = ShoppingListCreated { id: order.id.clone(), order_id: order.id.clone(), stops };
                Ok(emit.emit(DepotEvent::ShoppingListCreated(created), 1, envelope)?)
            }
            OrderingEvent::OrderCanceled(order) => {
                let Some(mut row) = t.lists.get(&order.id)? else { return Ok(()) };
                if row.status != ShoppingListStatus::Available {
                    return Ok(());
                }
                row.status = ShoppingListStatus::Canceled;
                row.version += 1;
                t.lists.put(&order.id, &row)?;
                let canceled = ShoppingListCanceled { id: order.id.clone(), order_id: order.id.clone() };
                Ok(emit.emit(DepotEvent::ShoppingListCanceled(canceled), row.version, envelope)?)
            }
            OrderingEvent::OrderReadied(_) | OrderingEvent::OrderCompleted(_) => Ok(()),
        }
    }
}

/// A depot command: the bots report a list collected.
impl Decides<DepotCommand> for Depot {
    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, DepotEvent>,
        command: &DepotCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut lists = SHOPPING_LISTS.open(txn)?;
        match command {
            DepotCommand::CompleteShoppingList { id } => {
                let mut row =
                    lists.get(id)?.ok_or_else(|| CommandError::NotFound { kind: "shopping list", id: id.clone() })?;
                if row.status != ShoppingListStatus::Available {
                    return Err(CommandError::Rejected(format!(
                        "shopping list {id:?} is {:?}, not available",
                        row.status
                    )));
                }
                row.status = ShoppingListStatus::Completed;
                row.version += 1;
                lists.put(id, &row)?;
                let completed = ShoppingListCompleted { id: id.clone(), order_id: row.order_id.clone() };
                emit.record(DepotEvent::ShoppingListCompleted(completed), row.version, causality)?;
                Ok(())
            }
        }
    }
}

impl Follows for Depot {
    /// Every change to a shopping list is one of its events: created with its stops, then a
    /// status.
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &DepotEvent) -> Result<(), StorageError> {
        let mut lists = SHOPPING_LISTS.open(txn)?;
        let id = envelope.aggregate_id.as_str();
        let current = lists.get(id)?;
        if current.as_ref().is_some_and(|r| r.version >= envelope.aggregate_version) {
            return Ok(());
        }
        let row = match (current, event) {
            (_, DepotEvent::ShoppingListCreated(e)) => ShoppingListRow {
                order_id: e.order_id.clone(),
                stops: e.stops.clone(),
                status: ShoppingListStatus::Available,
                version: envelope.aggregate_version,
            },
            (Some(row), DepotEvent::ShoppingListCompleted(_)) => {
                ShoppingListRow { status: ShoppingListStatus::Completed, version: envelope.aggregate_version, ..row }
            }
            (Some(row), DepotEvent::ShoppingListCanceled(_)) => {
                ShoppingListRow { status: ShoppingListStatus::Canceled, version: envelope.aggregate_version, ..row }
            }
            (None, _) => {
                tracing::warn!(shopping_list.id = id, "followed a shopping list's step without its creation; ignored");
                return Ok(());
            }
        };
        lists.put(id, &row)
    }
}

/// What the depot's file answers of its shopping lists.
pub trait DepotFile {
    /// One shopping list.
    fn shopping_list(&self, id: &str) -> Result<Option<ShoppingListRow>, StorageError>;
    /// Every shopping list, by id.
    fn shopping_lists(&self) -> Result<Vec<(String, ShoppingListRow)>, StorageError>;
}

impl DepotFile for ContextFile<Depot> {
    fn shopping_list(&self, id: &str) -> Result<Option<ShoppingListRow>, StorageError> {
        self.read(|txn| SHOPPING_LISTS.get(txn, id))
    }

    fn shopping_lists(&self) -> Result<Vec<(String, ShoppingListRow)>, StorageError> {
        self.read(|txn| SHOPPING_LISTS.all(txn))
    }
}

stores_cache!(Depot);

impl StoresCache for Depot {
    type Store = DepotStore;
    type Product = DepotProduct;

    fn apply(t: &mut StoresCacheTables<'_, Self>, event: &StoresEvent) -> Result<(), ReactError> {
        match event {
            // StoreCacheRepository.Add(storeID, name, location) and Rename.
            StoresEvent::StoreCreated(e) => {
                t.put_store(&e.id, &DepotStore { name: e.name.clone(), location: e.location.clone() })?
            }
            StoresEvent::StoreRebranded(e) => t.update_store(&e.id, |s| s.name = e.name.clone())?,
            // ProductCacheRepository.Add(productID, storeID, name), Rebrand and Remove.
            StoresEvent::ProductAdded(e) => {
                t.put_product(&e.id, &DepotProduct { store_id: e.store_id.clone(), name: e.name.clone() })?
            }
            StoresEvent::ProductRebranded(e) => t.update_product(&e.id, |p| p.name = e.name.clone())?,
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id)?,
            // The depot needs neither participation nor prices; their versions still count.
            StoresEvent::StoreParticipationEnabled(_)
            | StoresEvent::StoreParticipationDisabled(_)
            | StoresEvent::ProductPriceIncreased(_)
            | StoresEvent::ProductPriceDecreased(_) => {}
        }
        Ok(())
    }

    fn store_row(snapshot: &StoreSnapshot) -> DepotStore {
        DepotStore { name: snapshot.name.clone(), location: snapshot.location.clone() }
    }

    fn product_row(snapshot: &ProductSnapshot) -> Option<DepotProduct> {
        (!snapshot.removed).then(|| DepotProduct { store_id: snapshot.store_id.clone(), name: snapshot.name.clone() })
    }
}
