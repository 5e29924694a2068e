//! The stores context's own state (the source of truth for stores and products) and its outbox.
//!
//! A command is decided against the current rows, and the resulting event is both folded into
//! the rows and appended to the outbox in one transaction, so the state and the events that
//! describe it can never disagree.

use serde::{Deserialize, Serialize};

use carrier_messages::Causality;
use carrier_messages::{DomainEvent, Envelope};
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, Rows, RowsMut, StorageError, WriteTransaction,
};

use super::events::*;

const STORES: Rows<StoreRow> = Rows::new("stores");
const PRODUCTS: Rows<ProductRow> = Rows::new("products");

/// A store, as its owner knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRow {
    /// Display name.
    pub name: String,
    /// Where in the mall.
    pub location: String,
    /// Whether it takes part in automated ordering.
    pub participating: bool,
    /// Version of its last event.
    pub version: u64,
}

/// A product, as its owner knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRow {
    /// The store that sells it.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Price in minor units.
    pub price: i64,
    /// Version of its last event.
    pub version: u64,
    /// Taken out of the catalogue; kept so that its id is never reused.
    pub removed: bool,
}

/// `stores.redb`: stores, products and the outbox.
pub type StoresDb = ContextFile<Stores>;

/// The stores context's state and rules: an owner, deciding commands and reacting to nothing.
pub struct Stores;

impl ContextKind for Stores {
    const NAME: &'static str = "stores";
    type Event = StoresEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        STORES.create(txn)?;
        PRODUCTS.create(txn)
    }
}

impl Decides<StoresCommand> for Stores {
    fn command_name(command: &StoresCommand) -> &'static str {
        command.name()
    }

    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, StoresEvent>,
        command: &StoresCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut stores = STORES.open(txn)?;
        let mut products = PRODUCTS.open(txn)?;
        let (event, version) = decide(&stores, &products, command)?;
        event.validate()?;
        evolve(&mut stores, &mut products, &event, version)?;
        emit.record(event, version, causality)?;
        Ok(())
    }
}

impl Follows for Stores {
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &StoresEvent) -> Result<(), StorageError> {
        let mut stores = STORES.open(txn)?;
        let mut products = PRODUCTS.open(txn)?;
        let id = envelope.aggregate_id.as_str();
        let have = match event.aggregate_type() {
            "store" => stores.get(id)?.map(|r| r.version),
            _ => products.get(id)?.map(|r| r.version),
        };
        if have.is_some_and(|v| v >= envelope.aggregate_version) {
            return Ok(());
        }
        evolve(&mut stores, &mut products, event, envelope.aggregate_version)
    }
}

/// What the stores context's file answers: its stores and products.
pub trait StoresFile {
    /// One store.
    fn store(&self, id: &str) -> Result<Option<StoreRow>, StorageError>;
    /// One product (removed ones included).
    fn product(&self, id: &str) -> Result<Option<ProductRow>, StorageError>;
    /// Every store, by id.
    fn stores(&self) -> Result<Vec<(String, StoreRow)>, StorageError>;
    /// Every product (removed ones included), by id.
    fn products(&self) -> Result<Vec<(String, ProductRow)>, StorageError>;
}

impl StoresFile for ContextFile<Stores> {
    fn store(&self, id: &str) -> Result<Option<StoreRow>, StorageError> {
        self.read(|txn| STORES.get(txn, id))
    }

    fn product(&self, id: &str) -> Result<Option<ProductRow>, StorageError> {
        self.read(|txn| PRODUCTS.get(txn, id))
    }

    fn stores(&self) -> Result<Vec<(String, StoreRow)>, StorageError> {
        self.read(|txn| STORES.all(txn))
    }

    fn products(&self) -> Result<Vec<(String, ProductRow)>, StorageError> {
        self.read(|txn| PRODUCTS.all(txn))
    }
}

fn store_of(stores: &RowsMut<'_, StoreRow>, id: &str) -> Result<StoreRow, CommandError> {
    stores.get(id)?.ok_or_else(|| CommandError::NotFound { kind: "store", id: id.to_string() })
}

fn live_product(products: &RowsMut<'_, ProductRow>, id: &str) -> Result<ProductRow, CommandError> {
    match products.get(id)? {
        Some(p) if !p.removed => Ok(p),
        _ => Err(CommandError::NotFound { kind: "product", id: id.to_string() }),
    }
}

/// The business rules: which event a command produces, at which entity version.
fn decide(
    stores: &RowsMut<'_, StoreRow>,
    products: &RowsMut<'_, ProductRow>,
    command: &StoresCommand,
) -> Result<(StoresEvent, u64), CommandError> {
    use StoresCommand as C;
    Ok(match command.clone() {
        C::CreateStore { id, name, location } => {
            if stores.get(&id)?.is_some() {
                return Err(CommandError::AlreadyExists { kind: "store", id });
            }
            (StoresEvent::StoreCreated(StoreCreated { id, name, location }), 1)
        }
        C::RebrandStore { id, name } => {
            let s = store_of(stores, &id)?;
            (StoresEvent::StoreRebranded(StoreRebranded { id, name }), s.version + 1)
        }
        C::EnableParticipation { id } => {
            let s = store_of(stores, &id)?;
            if s.participating {
                return Err(CommandError::Rejected(format!("store {id:?} is already participating")));
            }
            (StoresEvent::StoreParticipationEnabled(StoreParticipationEnabled { id }), s.version + 1)
        }
        C::DisableParticipation { id } => {
            let s = store_of(stores, &id)?;
            if !s.participating {
                return Err(CommandError::Rejected(format!("store {id:?} is not participating")));
            }
            (StoresEvent::StoreParticipationDisabled(StoreParticipationDisabled { id }), s.version + 1)
        }
        C::AddProduct { id, store_id, name, description, sku, price } => {
            if products.get(&id)?.is_some() {
                return Err(CommandError::AlreadyExists { kind: "product", id });
            }
            store_of(stores, &store_id)?;
            (StoresEvent::ProductAdded(ProductAdded { id, store_id, name, description, sku, price }), 1)
        }
        C::RebrandProduct { id, name, description } => {
            let p = live_product(products, &id)?;
            (StoresEvent::ProductRebranded(ProductRebranded { id, name, description }), p.version + 1)
        }
        C::IncreaseProductPrice { id, delta } => {
            let p = live_product(products, &id)?;
            if p.price.checked_add(delta).is_none() {
                return Err(CommandError::Rejected(format!("price of {id:?} would overflow")));
            }
            (StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id, delta }), p.version + 1)
        }
        C::DecreaseProductPrice { id, delta } => {
            let p = live_product(products, &id)?;
            if p.price < delta {
                return Err(CommandError::Rejected(format!(
                    "price of {id:?} is {} and cannot fall by {delta} below zero",
                    p.price
                )));
            }
            (StoresEvent::ProductPriceDecreased(ProductPriceDecreased { id, delta }), p.version + 1)
        }
        C::RemoveProduct { id } => {
            let p = live_product(products, &id)?;
            (StoresEvent::ProductRemoved(ProductRemoved { id }), p.version + 1)
        }
    })
}

/// Folds a decided event into the owner's rows.
fn evolve(
    stores: &mut RowsMut<'_, StoreRow>,
    products: &mut RowsMut<'_, ProductRow>,
    event: &StoresEvent,
    version: u64,
) -> Result<(), StorageError> {
    match event {
        StoresEvent::StoreCreated(e) => {
            let row = StoreRow { name: e.name.clone(), location: e.location.clone(), participating: false, version };
            stores.put(&e.id, &row)
        }
        StoresEvent::StoreRebranded(e) => change(stores, &e.id, version, |r| r.name = e.name.clone()),
        StoresEvent::StoreParticipationEnabled(e) => change(stores, &e.id, version, |r| r.participating = true),
        StoresEvent::StoreParticipationDisabled(e) => change(stores, &e.id, version, |r| r.participating = false),
        StoresEvent::ProductAdded(e) => {
            let row = ProductRow {
                store_id: e.store_id.clone(),
                name: e.name.clone(),
                description: e.description.clone(),
                sku: e.sku.clone(),
                price: e.price,
                version,
                removed: false,
            };
            products.put(&e.id, &row)
        }
        StoresEvent::ProductRebranded(e) => change(products, &e.id, version, |r| {
            r.name = e.name.clone();
            r.description = e.description.clone();
        }),
        StoresEvent::ProductPriceIncreased(e) => {
            change(products, &e.id, version, |r| r.price = r.price.saturating_add(e.delta))
        }
        StoresEvent::ProductPriceDecreased(e) => {
            change(products, &e.id, version, |r| r.price = r.price.saturating_sub(e.delta))
        }
        StoresEvent::ProductRemoved(e) => change(products, &e.id, version, |r| r.removed = true),
    }
}

/// A row that records the version of its entity's last event.
trait Versioned: Serialize + serde::de::DeserializeOwned {
    fn set_version(&mut self, version: u64);
}

impl Versioned for StoreRow {
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
}

impl Versioned for ProductRow {
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
}

/// Loads a row that `decide` found, applies `edit`, stamps `version`, and writes it back.
fn change<T: Versioned>(
    table: &mut RowsMut<'_, T>,
    id: &str,
    version: u64,
    edit: impl FnOnce(&mut T),
) -> Result<(), StorageError> {
    let mut row: T =
        table.get(id)?.ok_or(StorageError::Corrupt { table: "stores", reason: format!("{id:?} vanished") })?;
    edit(&mut row);
    row.set_version(version);
    table.put(id, &row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, carrier_storage::FileWriter<Stores>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = carrier_storage::FileWriter::<Stores>::open(dir.path().join("stores.redb")).expect("open");
        (dir, db)
    }

    #[test]
    fn a_follower_of_the_published_events_ends_with_the_deciders_rows_and_skips_what_it_has() {
        let (_a, decider) = db();
        let c = Causality::default();
        let commands = [
            StoresCommand::CreateStore { id: "s".into(), name: "Shop".into(), location: "Hall".into() },
            StoresCommand::EnableParticipation { id: "s".into() },
            StoresCommand::RebrandStore { id: "s".into(), name: "Shop 2".into() },
            StoresCommand::AddProduct {
                id: "p".into(),
                store_id: "s".into(),
                name: "Tea".into(),
                description: "Green".into(),
                sku: "T1".into(),
                price: 300,
            },
            StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 50 },
            StoresCommand::DecreaseProductPrice { id: "p".into(), delta: 20 },
            StoresCommand::RemoveProduct { id: "p".into() },
        ];
        for command in &commands {
            decider.execute(command, &c).expect("decided");
        }
        let published = crate::outbox_as_delivered(&decider);
        let (_b, follower) = db();
        assert_eq!(follower.follow("stores-self", &published[..3], 0).expect("followed"), 3);
        assert_eq!(follower.follow("stores-self", &published, 0).expect("followed again"), 7);
        // A batch that comes again (a crash before its checkpoint) changes nothing.
        follower.follow("stores-self", &published, 0).expect("followed a third time");
        assert_eq!(follower.file().stores().expect("stores"), decider.file().stores().expect("stores"));
        assert_eq!(follower.file().products().expect("products"), decider.file().products().expect("products"));
        let product = follower.file().product("p").expect("read").expect("kept");
        assert_eq!((product.price, product.removed, product.version), (330, true, 4));
        assert_eq!(carrier_storage::ContextDb::checkpoint(&*follower.file(), "stores-self").expect("checkpoint"), 7);
        assert_eq!(follower.outbox_len().expect("outbox"), 0, "a follower publishes nothing");
    }

    #[test]
    fn commands_write_state_and_outbox_together_and_versions_count_per_entity() {
        let (_dir, db) = db();
        let c = Causality::default();
        let create = StoresCommand::CreateStore { id: "s".into(), name: "A".into(), location: "L".into() };
        assert_eq!(db.execute(&create, &c).expect("create").envelope.aggregate_version, 1);
        let add = StoresCommand::AddProduct {
            id: "p".into(),
            store_id: "s".into(),
            name: "K".into(),
            description: String::new(),
            sku: String::new(),
            price: 100,
        };
        assert_eq!(db.execute(&add, &c).expect("add").envelope.aggregate_version, 1);
        let rebrand = StoresCommand::RebrandStore { id: "s".into(), name: "B".into() };
        assert_eq!(db.execute(&rebrand, &c).expect("rebrand").envelope.aggregate_version, 2);
        assert_eq!(db.store("s").expect("read").expect("row").name, "B");
        let pending = db.outbox_pending(10).expect("outbox");
        assert_eq!(pending.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(pending[2].1.subject, "stores.store.rebranded");
        db.outbox_remove(&[1, 2]).expect("remove");
        assert_eq!(db.outbox_len().expect("len"), 1);
        // Keys are never reused, even after the outbox empties.
        db.outbox_remove(&[3]).expect("remove");
        let rename = StoresCommand::RebrandStore { id: "s".into(), name: "C".into() };
        db.execute(&rename, &c).expect("rebrand");
        assert_eq!(db.outbox_pending(10).expect("outbox")[0].0, 4);
    }

    /// Group commit: one transaction for many commands; each sees the ones before it; a refused
    /// one (in the middle) leaves nothing behind while the others are all kept, in order.
    #[test]
    fn commands_decided_together_commit_once_and_a_refused_one_leaves_nothing() {
        use carrier_storage::Decides;
        let (_dir, db) = db();
        let c = Causality::default();
        let decision = |command: StoresCommand| -> carrier_storage::Decision<Stores> {
            let c = c.clone();
            Box::new(
                move |txn: &carrier_storage::WriteTransaction, emit: &mut carrier_storage::Emitter<'_, StoresEvent>| {
                    <Stores as Decides<StoresCommand>>::decide(txn, emit, &command, &c)
                },
            )
        };
        let add = |id: &str, price: i64| StoresCommand::AddProduct {
            id: id.into(),
            store_id: "s".into(),
            name: "K".into(),
            description: String::new(),
            sku: String::new(),
            price,
        };
        let mut decisions = vec![
            decision(StoresCommand::CreateStore { id: "s".into(), name: "A".into(), location: "L".into() }),
            decision(add("p1", 100)),
            // Refused: p1 exists already (decided by the command before it, same transaction).
            decision(add("p1", 999)),
            decision(add("p2", 200)),
            decision(StoresCommand::RebrandStore { id: "s".into(), name: "B".into() }),
        ];
        let results = db.decide_all(&mut decisions);
        assert_eq!(results.len(), 5);
        assert!(results[2].is_err(), "the duplicate add is refused: {:?}", results[2].as_ref().map(|_| ()));
        let versions: Vec<u64> = results
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, r)| r.as_ref().expect("decided").envelope.aggregate_version)
            .collect();
        assert_eq!(versions, vec![1, 1, 1, 2]);
        assert_eq!(db.product("p1").expect("read").expect("p1").price, 100);
        assert_eq!(db.product("p2").expect("read").expect("p2").price, 200);
        assert_eq!(db.store("s").expect("read").expect("s").name, "B");
        let pending = db.outbox_pending(10).expect("outbox");
        let subjects: Vec<&str> = pending.iter().map(|(_, e)| e.subject.as_str()).collect();
        assert_eq!(
            subjects,
            vec!["stores.store.created", "stores.product.added", "stores.product.added", "stores.store.rebranded"]
        );
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let (_dir, db) = db();
        let c = Causality::default();
        let missing = StoresCommand::RebrandStore { id: "nope".into(), name: "B".into() };
        assert!(matches!(db.execute(&missing, &c), Err(CommandError::NotFound { kind: "store", .. })));
        let create = StoresCommand::CreateStore { id: "s".into(), name: "A".into(), location: "L".into() };
        db.execute(&create, &c).expect("create");
        assert!(matches!(db.execute(&create, &c), Err(CommandError::AlreadyExists { .. })));
        let blank = StoresCommand::RebrandStore { id: "s".into(), name: "  ".into() };
        assert!(matches!(db.execute(&blank, &c), Err(CommandError::Invalid(_))));
        let add = StoresCommand::AddProduct {
            id: "p".into(),
            store_id: "s".into(),
            name: "K".into(),
            description: String::new(),
            sku: String::new(),
            price: 100,
        };
        db.execute(&add, &c).expect("add");
        let too_far = StoresCommand::DecreaseProductPrice { id: "p".into(), delta: 101 };
        assert!(matches!(db.execute(&too_far, &c), Err(CommandError::Rejected(_))));
        assert_eq!(db.product("p").expect("read").expect("row").price, 100);
        assert_eq!(db.outbox_len().expect("len"), 2);
    }

    /// Idempotency keys: a key seen before answers with its first event and decides nothing,
    /// also within one group; the same key with other parameters is refused; a refused command
    /// keeps no key, so it is decided again; expired keys are pruned.
    #[test]
    fn a_command_sent_again_with_its_key_is_answered_with_the_first_event() {
        use carrier_messages::IdempotencyKey;
        use carrier_storage::Decides;
        let (_dir, db) = db();
        let c = Causality::default();
        let decision = |command: StoresCommand| -> carrier_storage::Decision<Stores> {
            let c = c.clone();
            Box::new(
                move |txn: &carrier_storage::WriteTransaction, emit: &mut carrier_storage::Emitter<'_, StoresEvent>| {
                    <Stores as Decides<StoresCommand>>::decide(txn, emit, &command, &c)
                },
            )
        };
        let create = StoresCommand::CreateStore { id: "s".into(), name: "A".into(), location: "L".into() };
        let rebrand = |name: &str| StoresCommand::RebrandStore { id: "s".into(), name: name.into() };
        let key = |k: &str, command: &StoresCommand| Some(IdempotencyKey::for_command(k, command).expect("key"));
        // One group: the create, a rebrand with key k1, and the same rebrand again with k1.
        let mut decisions = vec![decision(create.clone()), decision(rebrand("B")), decision(rebrand("B"))];
        let keys = vec![None, key("k1", &rebrand("B")), key("k1", &rebrand("B"))];
        let results = db.decide_all_keyed(&mut decisions, &keys);
        let first = results[1].as_ref().expect("decided");
        let again = results[2].as_ref().expect("replayed");
        assert!(!first.replayed && again.replayed);
        assert_eq!(first.event.envelope.event_id, again.event.envelope.event_id);
        assert_eq!(again.event.envelope.aggregate_version, 2);
        assert_eq!(db.outbox_len().expect("len"), 2, "the replay recorded no event");
        // Later, in another group: still the first event.
        let mut later = vec![decision(rebrand("B"))];
        let replay = db.decide_all_keyed(&mut later, &[key("k1", &rebrand("B"))]).remove(0).expect("replayed");
        assert!(replay.replayed);
        assert_eq!(replay.event.envelope.event_id, first.event.envelope.event_id);
        // The same key with other parameters is refused, and nothing is decided.
        let mut other = vec![decision(rebrand("C"))];
        let refused = db.decide_all_keyed(&mut other, &[key("k1", &rebrand("C"))]).remove(0);
        assert!(matches!(refused, Err(CommandError::Refused { code: "idempotency_key_reused", .. })), "{refused:?}");
        assert_eq!(db.store("s").expect("read").expect("s").name, "B");
        // A refused command keeps no key: sent again once it can succeed, it is decided.
        let missing = StoresCommand::RebrandStore { id: "t".into(), name: "X".into() };
        let mut refused = vec![decision(missing.clone())];
        assert!(db.decide_all_keyed(&mut refused, &[key("k2", &missing)]).remove(0).is_err());
        let create_t = StoresCommand::CreateStore { id: "t".into(), name: "T".into(), location: "L".into() };
        db.execute(&create_t, &c).expect("create t");
        let mut retried = vec![decision(missing.clone())];
        let decided = db.decide_all_keyed(&mut retried, &[key("k2", &missing)]).remove(0).expect("decided");
        assert!(!decided.replayed);
        // Pruning: keys older than the retention go; with a long retention none do.
        assert_eq!(db.prune_idempotency(std::time::Duration::from_secs(3600), 100).expect("prune"), 0);
        assert_eq!(db.prune_idempotency(std::time::Duration::ZERO, 100).expect("prune"), 2);
        let mut after = vec![decision(rebrand("B"))];
        let fresh = db.decide_all_keyed(&mut after, &[key("k1", &rebrand("B"))]).remove(0).expect("decided again");
        assert!(!fresh.replayed, "a pruned key is new again");
    }
}
