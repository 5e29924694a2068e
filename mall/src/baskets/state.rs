//! The baskets context's file: its baskets, and its local caches of the stores context's data
//! (seed 001's `baskets.stores_cache` and `baskets.products_cache`), so that a basket never asks
//! the stores service for a name or a price on the hot path.

use serde::{Deserialize, Serialize};

use carrier_messages::Causality;
use carrier_messages::{DomainEvent, Envelope};
use carrier_storage::ReactError;
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, Rows, StorageError, WriteTransaction,
};

use super::events::*;
use crate::caches::stores::{stores_cache, StoresCache, StoresCacheTables};
use crate::stores::events::{ProductSnapshot, StoreSnapshot, StoresEvent};

const BASKETS: Rows<BasketRow> = Rows::new("baskets");

/// Where a basket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasketStatus {
    /// Items may be added and removed.
    Open,
    /// Abandoned.
    Canceled,
    /// Turned into an order.
    CheckedOut,
}

/// A basket, as the baskets context owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketRow {
    /// Whose basket.
    pub customer_id: String,
    /// One line per product.
    pub items: Vec<BasketItem>,
    /// Where it stands.
    pub status: BasketStatus,
    /// The version of its last event.
    pub version: u64,
}

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

/// `baskets.redb`: baskets, the caches, the outbox and the engine's tables.
pub type BasketsDb = ContextFile<Baskets>;

/// What baskets keeps: baskets, and names and prices of stores and products.
pub struct Baskets;

impl ContextKind for Baskets {
    const NAME: &'static str = "baskets";
    type Event = BasketsEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        StoresCacheTables::<Baskets>::create(txn)?;
        BASKETS.create(txn)
    }
}

/// A basket command with, for `AddItem`, the line as the caches know it now (store and product
/// names, price; the quantity is the command's). The caller looks it up beforehand so that no
/// lookup runs inside the write transaction.
#[derive(Clone, Debug)]
pub struct PricedBasketCommand {
    /// The command.
    pub command: BasketsCommand,
    /// The line `AddItem` adds (`None` for the other commands, or an unknown product).
    pub item: Option<BasketItem>,
}

impl Decides<PricedBasketCommand> for Baskets {
    fn command_name(command: &PricedBasketCommand) -> &'static str {
        command.command.name()
    }

    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, BasketsEvent>,
        command: &PricedBasketCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let (event, row) = decide_basket(txn, &command.command, command.item.clone())?;
        event.validate()?;
        BASKETS.open(txn)?.put(event.aggregate_id(), &row)?;
        emit.record(event, row.version, causality)?;
        Ok(())
    }
}

impl Follows for Baskets {
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &BasketsEvent) -> Result<(), StorageError> {
        let mut table = BASKETS.open(txn)?;
        let id = event.aggregate_id();
        let current = table.get(id)?;
        if current.as_ref().is_some_and(|r| r.version >= envelope.aggregate_version) {
            return Ok(());
        }
        let row = evolve(current, event);
        let row = BasketRow { version: envelope.aggregate_version, ..row };
        table.put(id, &row)
    }
}

/// What the baskets context's file answers of its baskets.
pub trait BasketsFile {
    /// One basket.
    fn basket(&self, id: &str) -> Result<Option<BasketRow>, StorageError>;
    /// Every basket, by id.
    fn baskets(&self) -> Result<Vec<(String, BasketRow)>, StorageError>;
}

impl BasketsFile for ContextFile<Baskets> {
    fn basket(&self, id: &str) -> Result<Option<BasketRow>, StorageError> {
        self.read(|txn| BASKETS.get(txn, id))
    }

    fn baskets(&self) -> Result<Vec<(String, BasketRow)>, StorageError> {
        self.read(|txn| BASKETS.all(txn))
    }
}

fn decide_basket(
    txn: &WriteTransaction,
    command: &BasketsCommand,
    item: Option<BasketItem>,
) -> Result<(BasketsEvent, BasketRow), CommandError> {
    use BasketsCommand as C;
    let id = command.basket_id().to_string();
    let current = BASKETS.open(txn)?.get(&id)?;
    if let C::StartBasket { customer_id, .. } = command {
        if current.is_some() {
            return Err(CommandError::AlreadyExists { kind: "basket", id });
        }
        let event = BasketsEvent::BasketStarted(BasketStarted { id, customer_id: customer_id.clone() });
        let row = BasketRow { version: 1, ..evolve(None, &event) };
        return Ok((event, row));
    }
    let row = current.ok_or_else(|| CommandError::NotFound { kind: "basket", id: id.clone() })?;
    if row.status != BasketStatus::Open {
        return Err(CommandError::Rejected(format!("basket {id:?} is {:?}, not open", row.status).to_lowercase()));
    }
    let event = match command {
        C::StartBasket { .. } => unreachable!("handled above"),
        C::AddItem { product_id, quantity, .. } => {
            if *quantity <= 0 {
                return Err(CommandError::Rejected(format!("quantity must be greater than zero, got {quantity}")));
            }
            let mut item = item.ok_or_else(|| CommandError::NotFound { kind: "product", id: product_id.clone() })?;
            item.quantity = *quantity;
            BasketsEvent::BasketItemAdded(BasketItemAdded { id, item })
        }
        C::RemoveItem { product_id, quantity, .. } => {
            let Some(line) = row.items.iter().find(|i| &i.product_id == product_id) else {
                return Err(CommandError::NotFound { kind: "basket item", id: product_id.clone() });
            };
            let held = line.quantity;
            if *quantity <= 0 || *quantity > held {
                return Err(CommandError::Rejected(format!(
                    "can remove 1 to {held} of product {product_id:?}, not {quantity}"
                )));
            }
            BasketsEvent::BasketItemRemoved(BasketItemRemoved {
                id,
                product_id: product_id.clone(),
                quantity: *quantity,
            })
        }
        C::CancelBasket { .. } => BasketsEvent::BasketCanceled(BasketCanceled { id }),
        C::CheckoutBasket { payment_id, .. } => {
            if row.items.is_empty() {
                return Err(CommandError::Rejected(format!("basket {id:?} is empty")));
            }
            BasketsEvent::BasketCheckedOut(BasketCheckedOut {
                id,
                customer_id: row.customer_id.clone(),
                payment_id: payment_id.clone(),
                items: row.items.clone(),
            })
        }
    };
    let version = row.version + 1;
    Ok((event.clone(), BasketRow { version, ..evolve(Some(row), &event) }))
}

/// A basket after `event`: the one fold that both deciding a command and following the
/// context's own stream (an instance standing by) use, so the two can never disagree. The
/// version is the caller's to set.
fn evolve(current: Option<BasketRow>, event: &BasketsEvent) -> BasketRow {
    let mut row = current.unwrap_or_else(|| BasketRow {
        customer_id: String::new(),
        items: Vec::new(),
        status: BasketStatus::Open,
        version: 0,
    });
    match event {
        BasketsEvent::BasketStarted(e) => {
            row.customer_id = e.customer_id.clone();
            row.items.clear();
            row.status = BasketStatus::Open;
        }
        BasketsEvent::BasketItemAdded(e) => match row.items.iter_mut().find(|i| i.product_id == e.item.product_id) {
            // The line keeps the newest names and price: what the customer saw last.
            Some(line) => {
                let quantity = line.quantity.saturating_add(e.item.quantity);
                *line = BasketItem { quantity, ..e.item.clone() };
            }
            None => row.items.push(e.item.clone()),
        },
        BasketsEvent::BasketItemRemoved(e) => {
            if let Some(index) = row.items.iter().position(|i| i.product_id == e.product_id) {
                if row.items[index].quantity <= e.quantity {
                    row.items.remove(index);
                } else {
                    row.items[index].quantity -= e.quantity;
                }
            }
        }
        BasketsEvent::BasketCanceled(_) => row.status = BasketStatus::Canceled,
        BasketsEvent::BasketCheckedOut(e) => {
            row.customer_id = e.customer_id.clone();
            row.items = e.items.clone();
            row.status = BasketStatus::CheckedOut;
        }
    }
    row
}

stores_cache!(Baskets);

impl StoresCache for Baskets {
    type Store = CachedStore;
    type Product = CachedProduct;

    fn apply(t: &mut StoresCacheTables<'_, Self>, event: &StoresEvent) -> Result<(), ReactError> {
        match event {
            // StoreCacheRepository.Add; Rename carries the whole row this cache keeps.
            StoresEvent::StoreCreated(e) => t.put_store(&e.id, &CachedStore { name: e.name.clone() })?,
            StoresEvent::StoreRebranded(e) => t.put_store(&e.id, &CachedStore { name: e.name.clone() })?,
            // ProductCacheRepository.Add, Rebrand, UpdatePrice(delta), Remove.
            StoresEvent::ProductAdded(e) => t.put_product(
                &e.id,
                &CachedProduct { store_id: e.store_id.clone(), name: e.name.clone(), price: e.price },
            )?,
            StoresEvent::ProductRebranded(e) => t.update_product(&e.id, |p| p.name = e.name.clone())?,
            StoresEvent::ProductPriceIncreased(e) => {
                t.update_product(&e.id, |p| p.price = p.price.saturating_add(e.delta))?
            }
            StoresEvent::ProductPriceDecreased(e) => {
                t.update_product(&e.id, |p| p.price = p.price.saturating_sub(e.delta))?
            }
            StoresEvent::ProductRemoved(e) => t.remove_product(&e.id)?,
            // Baskets does not care whether a store takes part in automated ordering, but the
            // events still advance the store's version, which the engine records.
            StoresEvent::StoreParticipationEnabled(_) | StoresEvent::StoreParticipationDisabled(_) => {}
        }
        Ok(())
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
    use crate::caches::stores::{StoresCacheFile, StoresCacheTestExt};
    use crate::stores::events::*;
    use carrier_messages::Decoded;
    use carrier_storage::ContextDb;
    use carrier_storage::{Disposition, Inbound};

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

    fn db() -> (tempfile::TempDir, carrier_storage::FileWriter<Baskets>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = carrier_storage::FileWriter::<Baskets>::open(dir.path().join("baskets.redb")).expect("open");
        (dir, db)
    }

    fn item(product: &str, price: i64) -> BasketItem {
        BasketItem {
            store_id: "s".into(),
            store_name: "Shop".into(),
            product_id: product.into(),
            product_name: product.to_uppercase(),
            price,
            quantity: 0,
        }
    }

    fn basket_command(db: &carrier_storage::FileWriter<Baskets>, command: BasketsCommand, item: Option<BasketItem>) {
        let c = Causality::default();
        db.execute(&PricedBasketCommand { command, item }, &c).expect("decided");
    }

    #[test]
    fn a_follower_of_the_published_baskets_ends_with_the_deciders_rows_and_skips_what_it_has() {
        let (_a, decider) = db();
        let (b, p) = (|| "b".to_string(), |id: &str| id.to_string());
        basket_command(&decider, BasketsCommand::StartBasket { id: b(), customer_id: "c".into() }, None);
        for (product, quantity, price) in [("tea", 2, 300), ("jam", 1, 450), ("tea", 3, 320)] {
            let command = BasketsCommand::AddItem { id: b(), product_id: p(product), quantity };
            basket_command(&decider, command, Some(item(product, price)));
        }
        basket_command(&decider, BasketsCommand::RemoveItem { id: b(), product_id: p("jam"), quantity: 1 }, None);
        basket_command(&decider, BasketsCommand::RemoveItem { id: b(), product_id: p("tea"), quantity: 1 }, None);
        basket_command(&decider, BasketsCommand::StartBasket { id: "x".into(), customer_id: "d".into() }, None);
        basket_command(&decider, BasketsCommand::CancelBasket { id: "x".into() }, None);
        basket_command(&decider, BasketsCommand::CheckoutBasket { id: b(), payment_id: "pay".into() }, None);
        let published = crate::outbox_as_delivered(&decider);
        assert_eq!(published.len(), 9);

        let (_b, follower) = db();
        assert_eq!(follower.follow("baskets-self", &published[..4], 0).expect("followed"), 4);
        assert_eq!(follower.follow("baskets-self", &published, 0).expect("followed again"), 9);
        // A batch that comes again (a crash before its checkpoint) changes nothing.
        follower.follow("baskets-self", &published, 0).expect("followed a third time");
        assert_eq!(follower.file().baskets().expect("baskets"), decider.file().baskets().expect("baskets"));
        let basket = follower.file().basket("b").expect("read").expect("kept");
        assert_eq!(basket.status, BasketStatus::CheckedOut);
        assert_eq!(basket.version, 7);
        let lines: Vec<(String, i64, i64)> =
            basket.items.iter().map(|i| (i.product_id.clone(), i.quantity, i.price)).collect();
        assert_eq!(lines, vec![("tea".to_string(), 4, 320)]);
        assert_eq!(follower.outbox_len().expect("outbox"), 0, "a follower publishes nothing");
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

    fn product(id: &str, price: i64) -> StoresEvent {
        StoresEvent::ProductAdded(ProductAdded {
            id: id.into(),
            store_id: "s".into(),
            name: id.into(),
            description: String::new(),
            sku: String::new(),
            price,
        })
    }

    /// The swap goes a range of ids at a time; in the end the live file holds exactly the
    /// rebuilt rows and versions (a wrong row fixed, an extra one gone, a missing one added),
    /// and a fresh file behind the live one changes nothing.
    #[test]
    fn a_swap_in_steps_ends_with_exactly_the_rebuilt_caches() {
        use carrier_storage::{CacheSet, SwapCursor, SwapStep};
        let (_dir, live) = db();
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh =
            carrier_storage::FileWriter::<Baskets>::open_scratch(dir.path().join("fresh.redb"), 1 << 20).expect("open");
        let at = |e: StoresEvent, seq: u64, version: u64| Inbound {
            stream_seq: seq,
            decoded: Decoded::new(e, version, &Causality::default()),
        };
        let consumer = "baskets-stores";
        // Live: a at the wrong price, b that the streams do not have, e; through seq 3.
        live.apply_stores_events(
            consumer,
            &[at(product("a", 1), 1, 1), at(product("b", 2), 2, 1), at(product("e", 5), 3, 1)],
        )
        .expect("live");
        let sets = [CacheSet {
            tables: vec!["stores_cache", "products_cache"],
            aggregates: vec!["store", "product"],
            consumer: consumer.to_string(),
        }];
        // A fresh file behind the live one: nothing moves.
        fresh.apply_stores_events(consumer, &[at(product("a", 10), 1, 1)]).expect("fresh");
        let mut cursor = SwapCursor::default();
        let behind = live.swap_caches_step(&fresh.file(), &sets, &mut cursor, 1).expect("step");
        assert!(behind.is_err(), "{behind:?}");
        assert_eq!(live.product("a").expect("read").expect("row").price, 1);
        // Caught up: a fixed, c and d new, e equal, b absent.
        fresh
            .apply_stores_events(
                consumer,
                &[at(product("c", 3), 2, 1), at(product("d", 4), 3, 1), at(product("e", 5), 4, 1)],
            )
            .expect("fresh");
        let mut steps = 0;
        let tables = loop {
            steps += 1;
            match live.swap_caches_step(&fresh.file(), &sets, &mut cursor, 2).expect("step").expect("not behind") {
                SwapStep::More(_) => assert!(steps < 20, "the swap does not end"),
                SwapStep::Done(tables) => break tables,
            }
        };
        assert!(steps > 2, "ranges of two ids take several steps: {steps}");
        let products: Vec<(String, i64, u64)> =
            live.products().expect("products").into_iter().map(|(id, row, v)| (id, row.price, v)).collect();
        let expected: Vec<(String, i64, u64)> =
            [("a", 10), ("c", 3), ("d", 4), ("e", 5)].iter().map(|(id, p)| (id.to_string(), *p, 1)).collect();
        assert_eq!(products, expected);
        let products_table = tables.iter().find(|t| t.table == "products_cache").expect("products_cache swapped");
        assert_eq!((products_table.before, products_table.after), (3, 4));
        assert_eq!(live.checkpoint(consumer).expect("checkpoint"), 4);
        // b's version went with its row: a new b is applied as version 1 again.
        let out = live.apply_stores_events(consumer, &[at(product("b", 7), 5, 1)]).expect("apply");
        assert_eq!(out.dispositions, vec![Disposition::Applied]);
    }

    /// Lookups share a read snapshot, but never one from before a commit that has finished.
    #[test]
    fn a_lookup_after_a_commit_sees_it() {
        let (_dir, db) = db();
        db.apply_stores_events("c", &[added()]).expect("apply");
        let file = db.file();
        assert_eq!(file.product("p").expect("read").expect("row").price, 1000);
        assert_eq!(file.product("p").expect("read").expect("row").price, 1000);
        for (delta, version) in [(5, 2), (7, 3), (11, 4)] {
            db.apply_stores_events("c", &[raise(delta, version)]).expect("apply");
            let expected = 1000 + [5, 7, 11].iter().take(version as usize - 1).sum::<i64>();
            assert_eq!(file.product("p").expect("read").expect("row").price, expected);
        }
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
    use crate::caches::stores::{StoresCacheFile, StoresCacheTestExt};
    use crate::stores::events::*;
    use carrier_messages::Decoded;
    use carrier_storage::ContextDb;
    use carrier_storage::{Adopted, Inbound};

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
        let db = carrier_storage::FileWriter::<Baskets>::open(dir.path().join("b.redb")).expect("open");
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
