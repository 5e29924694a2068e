//! A context declared by a test, on Carrier's public API only, beside the mall's stores owner:
//! what a user's own reaction can tell Carrier about an event it cannot apply.

use std::sync::atomic::Ordering;
use std::time::Duration;

use carrier_actors::bus::{dead_letter_header, dead_letter_stream};
use carrier_actors::{BoundedContext, CarrierSystem, ContextHandle, SystemConfig};
use carrier_messages::stores::{StoresCommand, StoresEvent};
use carrier_messages::{Causality, Envelope, NoEvents};
use carrier_storage::{ContextKind, Emitter, Reacts, Rows, RowsMut, StorageError, WriteTransaction};
use carrier_tests::{wait_until, TestEnv};
use futures::StreamExt;

/// Keeps the names of stores, and refuses for good any store called "Poison".
struct Picky;

const NAMES: Rows<String> = Rows::new("names");

impl ContextKind for Picky {
    const NAME: &'static str = "picky";
    type Event = NoEvents;
}

impl Reacts<StoresEvent> for Picky {
    type Tables<'txn> = RowsMut<'txn, String>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, String>, StorageError> {
        NAMES.open(txn)
    }

    fn react(
        names: &mut RowsMut<'_, String>,
        _emit: &mut Emitter<'_, NoEvents>,
        _envelope: &Envelope,
        event: &StoresEvent,
    ) -> Result<(), StorageError> {
        match event {
            StoresEvent::StoreCreated(e) if e.name == "Poison" => {
                Err(StorageError::poison("no store may be called Poison"))
            }
            StoresEvent::StoreCreated(e) => names.put(&e.id, &e.name),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_that_refuses_an_event_dead_letters_it_and_the_rest_of_the_batch_applies() {
    let env = TestEnv::start();
    let picky = BoundedContext::of::<Picky>().consume::<StoresEvent>().build();
    let mut config = SystemConfig::new(env.url(), env.data_dir(), vec![carrier_mall::stores::context(), picky]);
    config.ack_wait = Duration::from_secs(2);
    let system = CarrierSystem::start(config).await.expect("starts");
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    for (id, name) in [("a", "Apples"), ("p", "Poison"), ("b", "Bread")] {
        let create = StoresCommand::CreateStore { id: id.into(), name: name.into(), location: "Hall".into() };
        stores.execute(create, Causality::default()).await.expect("created");
    }
    let picky = system.handle::<ContextHandle<Picky>>().expect("picky runs");
    wait_until(Duration::from_secs(30), "picky keeps the two good stores", || {
        let names = picky.db.read(|txn| NAMES.all(txn)).unwrap_or_default();
        async move { names.len() == 2 }
    })
    .await;
    let names = picky.db.read(|txn| NAMES.all(txn)).expect("read");
    assert_eq!(names, vec![("a".to_string(), "Apples".to_string()), ("b".to_string(), "Bread".to_string())]);
    assert_eq!(picky.consumer("stores").expect("consumer").dead_lettered.load(Ordering::Relaxed), 1);

    let dlq = system.bus.jetstream().get_stream(dead_letter_stream("picky")).await.expect("dead-letter stream");
    let reader = dlq.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("reader");
    let mut letters = reader.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let letter = letters.next().await.expect("one dead letter").expect("readable");
    let h = letter.headers.as_ref().expect("headers");
    assert_eq!(h.get(dead_letter_header::REASON).map(|v| v.as_str()), Some("rejected"));
    assert!(h.get(dead_letter_header::ERROR).is_some_and(|v| v.as_str().contains("called Poison")));
    assert_eq!(system.health()["picky"], carrier_actors::Health::Healthy, "a refused event is not a failure");
    system.shutdown().await;
}

/// An owner declared by the test: accounts with a name, opened and renamed.
mod ledger {
    use carrier_messages::request::Entity;
    use carrier_messages::{domain_events, Causality, Validate};
    use carrier_storage::{Adopts, Reacts, RowsMut, WriteTransaction};
    use carrier_storage::{CommandError, ContextFile, ContextKind, Decides, Emitter, Rows, StorageError};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct AccountNamed {
        pub id: String,
        pub name: String,
    }
    impl Validate for AccountNamed {}

    domain_events! {
        /// What the ledger publishes.
        enum LedgerEvent, context "ledger", stream "LEDGER", subjects "ledger.>";
        AccountNamed => "account", "ledger.account.named";
    }

    #[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
    pub struct Name {
        pub id: String,
        pub name: String,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct Account {
        pub name: String,
        pub version: u64,
        pub opened_by: String,
    }

    pub const ACCOUNTS: Rows<Account> = Rows::new("accounts");

    pub struct Ledger;

    impl ContextKind for Ledger {
        const NAME: &'static str = "ledger";
        type Event = LedgerEvent;
    }

    impl Decides<Name> for Ledger {
        fn decide(
            txn: &WriteTransaction,
            emit: &mut Emitter<'_, LedgerEvent>,
            command: &Name,
            causality: &Causality,
        ) -> Result<(), CommandError> {
            let mut accounts = ACCOUNTS.open(txn)?;
            let version = accounts.get(&command.id)?.map(|a| a.version).unwrap_or(0) + 1;
            let account = Account { name: command.name.clone(), version, opened_by: "test".into() };
            accounts.put(&command.id, &account)?;
            let event = LedgerEvent::AccountNamed(AccountNamed { id: command.id.clone(), name: command.name.clone() });
            emit.decided(event, version, causality)
        }
    }

    /// The owner's entity endpoint: an account at its version.
    pub fn entity(
        db: &ContextFile<Ledger>,
        _aggregate: &str,
        id: &str,
    ) -> Result<Option<Entity<serde_json::Value>>, StorageError> {
        Ok(db.read(|txn| ACCOUNTS.get(txn, id))?.map(|a| Entity::of(a.version, &a)))
    }

    /// A cache of account names.
    pub struct Mirror;

    pub const NAMES: Rows<String> = Rows::new("names");

    impl ContextKind for Mirror {
        const NAME: &'static str = "mirror";
        type Event = carrier_messages::NoEvents;
    }

    impl Reacts<LedgerEvent> for Mirror {
        type Tables<'txn> = RowsMut<'txn, String>;
        fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, String>, StorageError> {
            NAMES.open(txn)
        }
        fn react(
            names: &mut RowsMut<'_, String>,
            _emit: &mut Emitter<'_, carrier_messages::NoEvents>,
            _envelope: &carrier_messages::Envelope,
            event: &LedgerEvent,
        ) -> Result<(), StorageError> {
            let LedgerEvent::AccountNamed(e) = event;
            names.put(&e.id, &e.name)
        }
    }

    /// The fields of the owner's account the mirror keeps.
    #[derive(Deserialize)]
    pub struct MirroredAccount {
        pub name: String,
    }

    impl Adopts<LedgerEvent> for Mirror {
        type State = MirroredAccount;
        fn adopt(
            names: &mut RowsMut<'_, String>,
            _aggregate: &str,
            id: &str,
            state: MirroredAccount,
        ) -> Result<(), StorageError> {
            names.put(id, &state.name)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_a_users_own_owner_repairs_a_version_gap_through_the_owners_entity_endpoint() {
    use ledger::{Ledger, Mirror, Name, NAMES};
    let env = TestEnv::start();
    let owner = BoundedContext::of::<Ledger>().decides::<Name>().entities(ledger::entity).build();
    let mut config = SystemConfig::new(env.url(), env.data_dir(), vec![owner]);
    config.ack_wait = Duration::from_secs(2);
    let owners = CarrierSystem::start(config).await.expect("the ledger starts");
    let ledger = owners.handle::<ContextHandle<Ledger>>().expect("ledger");
    for name in ["First", "Second"] {
        ledger.execute(Name { id: "a".into(), name: name.into() }, Causality::default()).await.expect("named");
    }
    // The first event is gone from the stream (trimmed, or lost): the mirror sees version 2 first.
    let js = owners.bus.jetstream().clone();
    wait_until(Duration::from_secs(30), "both events are on the stream", || {
        let js = js.clone();
        async move {
            match js.get_stream("LEDGER").await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages == 2).unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    js.get_stream("LEDGER").await.expect("stream").delete_message(1).await.expect("deleted");

    let mirror = BoundedContext::of::<Mirror>().caches::<ledger::LedgerEvent>().build();
    let mut config = SystemConfig::new(env.url(), env.data_dir(), vec![mirror]);
    config.gap_grace = Duration::from_millis(200);
    let caches = CarrierSystem::start(config).await.expect("the mirror starts");
    let mirror = caches.handle::<ContextHandle<Mirror>>().expect("mirror");
    wait_until(Duration::from_secs(30), "the mirror adopted the owner's state over the gap", || {
        let name = mirror.db.read(|txn| NAMES.get(txn, "a")).ok().flatten();
        async move { name.as_deref() == Some("Second") }
    })
    .await;
    let fallback = &mirror.entity_fallbacks[0];
    assert_eq!(fallback.owner(), "ledger");
    assert!(fallback.stats.ok.load(Ordering::Relaxed) >= 1, "the owner was asked");
    let parked = mirror.consumer("ledger").expect("consumer").parked.load(Ordering::Relaxed);
    assert_eq!(parked, 1, "version 2 was parked behind the missing version 1");
    caches.shutdown().await;
    owners.shutdown().await;
}
