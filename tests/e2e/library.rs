//! A context declared by a test, on Carrier's public API only, beside the mall's stores owner:
//! what a user's own reaction can tell Carrier about an event it cannot apply.

use std::sync::atomic::Ordering;
use std::time::Duration;

use carrier_actors::{dead_letter_header, dead_letter_stream};
use carrier_actors::{BoundedContext, CarrierSystem, ContextHandle, SystemConfig};
use carrier_mall::stores::{StoresCommand, StoresEvent};
use carrier_messages::{Causality, Envelope, Found, NoEvents};
use carrier_storage::ReactError;
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
    ) -> Result<(), ReactError> {
        match event {
            StoresEvent::StoreCreated(e) if e.name == "Poison" => {
                Err(ReactError::reject("no store may be called Poison"))
            }
            StoresEvent::StoreCreated(e) => Ok(names.put(&e.id, &e.name)?),
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
    use carrier_messages::Entity;
    use carrier_messages::{domain_events, Causality, Validate};
    use carrier_storage::{Adopts, ReactError, Reacts, RowsMut, WriteTransaction};
    use carrier_storage::{CommandError, ContextFile, ContextKind, Decides, Emitter, Rows, StorageError};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct AccountNamed {
        pub id: String,
        pub name: String,
    }
    impl Validate for AccountNamed {}

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct AccountClosed {
        pub id: String,
    }
    impl Validate for AccountClosed {}

    domain_events! {
        /// What the ledger publishes.
        enum LedgerEvent, context "ledger", stream "LEDGER", subjects "ledger.>";
        AccountNamed => "account", "ledger.account.named";
        AccountClosed => "account", "ledger.account.closed";
    }

    #[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
    pub struct Name {
        pub id: String,
        pub name: String,
    }

    /// The mirror's query: the name of an account.
    #[derive(Debug, Deserialize, JsonSchema)]
    pub struct NameOf {
        pub id: String,
    }

    /// Closes an account: the owner keeps it as a tombstone.
    #[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
    pub struct Close {
        pub id: String,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct Account {
        pub name: String,
        pub version: u64,
        pub opened_by: String,
        #[serde(default)]
        pub closed: bool,
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
            let account = Account { name: command.name.clone(), version, opened_by: "test".into(), closed: false };
            accounts.put(&command.id, &account)?;
            let event = LedgerEvent::AccountNamed(AccountNamed { id: command.id.clone(), name: command.name.clone() });
            emit.decided(event, version, causality)
        }
    }

    impl Decides<Close> for Ledger {
        fn decide(
            txn: &WriteTransaction,
            emit: &mut Emitter<'_, LedgerEvent>,
            command: &Close,
            causality: &Causality,
        ) -> Result<(), CommandError> {
            let mut accounts = ACCOUNTS.open(txn)?;
            let not_found = || CommandError::NotFound { kind: "account", id: command.id.clone() };
            let mut account = accounts.get(&command.id)?.filter(|a| !a.closed).ok_or_else(not_found)?;
            (account.version, account.closed) = (account.version + 1, true);
            accounts.put(&command.id, &account)?;
            emit.decided(
                LedgerEvent::AccountClosed(AccountClosed { id: command.id.clone() }),
                account.version,
                causality,
            )
        }
    }

    /// The owner's entity endpoint: an account at its version; a closed one is a tombstone.
    pub fn entity(
        db: &ContextFile<Ledger>,
        _aggregate: &str,
        id: &str,
    ) -> Result<Option<Entity<serde_json::Value>>, StorageError> {
        Ok(db.read(|txn| ACCOUNTS.get(txn, id))?.map(|a| match a.closed {
            true => Entity::deleted(a.version),
            false => Entity::of(a.version, &a),
        }))
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
        ) -> Result<(), ReactError> {
            match event {
                LedgerEvent::AccountNamed(e) => names.put(&e.id, &e.name)?,
                LedgerEvent::AccountClosed(e) => names.remove(&e.id)?,
            }
            Ok(())
        }
    }

    /// The fields of the owner's account the mirror keeps.
    #[derive(Deserialize)]
    pub struct MirroredAccount {
        pub name: String,
    }

    impl Adopts<LedgerEvent> for Mirror {
        type State = MirroredAccount;
        const TABLES: &'static [(&'static str, &'static str)] = &[("account", "names")];
        fn adopt(
            names: &mut RowsMut<'_, String>,
            _aggregate: &str,
            id: &str,
            state: MirroredAccount,
        ) -> Result<(), StorageError> {
            names.put(id, &state.name)
        }
        fn forget(names: &mut RowsMut<'_, String>, _aggregate: &str, id: &str) -> Result<(), StorageError> {
            names.remove(id)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_cache_fills_a_miss_from_its_owner_forgets_a_deleted_entity_and_rebuilds() {
    use carrier_actors::RebuildProgress;
    use ledger::{Close, Ledger, LedgerEvent, Mirror, Name, NAMES};
    let env = TestEnv::start();
    let owner = BoundedContext::of::<Ledger>().decides::<Name>().decides::<Close>().entities(ledger::entity).build();
    let owners = CarrierSystem::start(SystemConfig::new(env.url(), env.data_dir(), vec![owner])).await.expect("starts");
    let ledger = owners.handle::<ContextHandle<Ledger>>().expect("ledger");
    for (id, name) in [("a", "Ann"), ("b", "Bob"), ("c", "Cid"), ("d", "Dee")] {
        ledger.execute(Name { id: id.into(), name: name.into() }, Causality::default()).await.expect("named");
    }
    ledger.execute(Close { id: "c".into() }, Causality::default()).await.expect("closed");
    // Only Ann's event stays on the stream: the mirror never sees Bob, Cid or Dee.
    let js = owners.bus.jetstream().clone();
    wait_until(Duration::from_secs(30), "the five events are on the stream", || {
        let js = js.clone();
        async move {
            match js.get_stream("LEDGER").await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages == 5).unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    let stream = js.get_stream("LEDGER").await.expect("stream");
    for seq in 2..=5 {
        stream.delete_message(seq).await.expect("deleted");
    }

    // Its query looks the name up: a miss is filled from the owner there too.
    let mirror = BoundedContext::of::<Mirror>()
        .caches::<LedgerEvent>()
        .queries_with(|handle: ContextHandle<Mirror>, q: ledger::NameOf| async move {
            Found::answer(handle.lookup::<LedgerEvent, _>("account", NAMES, &q.id).await)
        })
        .build();
    let caches =
        CarrierSystem::start(SystemConfig::new(env.url(), env.data_dir(), vec![mirror])).await.expect("starts");
    let mirror = caches.handle::<ContextHandle<Mirror>>().expect("mirror");
    wait_until(Duration::from_secs(30), "the mirror applied Ann's event", || {
        let name = mirror.db.read(|txn| NAMES.get(txn, "a")).ok().flatten();
        async move { name.as_deref() == Some("Ann") }
    })
    .await;
    let lookup = |id: &'static str| mirror.lookup::<LedgerEvent, _>("account", NAMES, id);
    assert_eq!(lookup("a").await.expect("a hit"), Some("Ann".to_string()));
    let fallback = mirror.fallback("ledger").expect("a fallback to the ledger");
    assert_eq!(fallback.stats.ok.load(Ordering::Relaxed), 0, "a hit asks nobody");

    assert_eq!(lookup("b").await.expect("filled from the owner"), Some("Bob".to_string()));
    assert_eq!(mirror.db.read(|txn| NAMES.get(txn, "b")).expect("read"), Some("Bob".to_string()), "and kept");
    assert_eq!(lookup("b").await.expect("now a hit"), Some("Bob".to_string()));
    assert_eq!(fallback.stats.ok.load(Ordering::Relaxed), 1, "the owner was asked once");

    assert_eq!(lookup("c").await.expect("answered with a tombstone"), None, "a closed account reads as gone");
    assert_eq!(lookup("c").await.expect("remembered"), None);
    assert_eq!(lookup("nobody").await.expect("answered"), None);
    assert_eq!(lookup("nobody").await.expect("remembered"), None);
    assert_eq!(fallback.stats.ok.load(Ordering::Relaxed), 3, "the tombstone and the unknown id were asked once each");
    assert_eq!(fallback.stats.negative_hits.load(Ordering::Relaxed), 2);

    let asked = caches.bus.request("query.mirror", &[], br#"{"id": "d"}"#.to_vec(), Duration::from_secs(10)).await;
    let answer: serde_json::Value = serde_json::from_slice(&asked.expect("the mirror answers")).expect("json");
    assert_eq!(answer, serde_json::json!({"ok": true, "found": "Dee"}), "a query's miss is filled from the owner");
    assert_eq!(mirror.db.read(|txn| NAMES.get(txn, "d")).expect("read"), Some("Dee".to_string()), "and kept");
    assert_eq!(fallback.stats.ok.load(Ordering::Relaxed), 4);

    // The cache's table is rebuilt from the stream, blue/green.
    assert!(mirror.has_caches(), "a cache of a user's owner can be rebuilt");
    let progress = std::sync::Arc::new(std::sync::Mutex::new(RebuildProgress::default()));
    mirror.rebuild_caches(&caches.bus, progress.clone()).await.expect("the rebuild succeeds");
    assert_eq!(progress.lock().expect("progress").state, "done");
    assert_eq!(mirror.db.read(|txn| NAMES.get(txn, "a")).expect("read"), Some("Ann".to_string()));
    caches.shutdown().await;
    owners.shutdown().await;
}

/// An event bus of handlers declared in the list, beside the mall's stores owner: its handler
/// runs inside the system (as `run` starts it) on the instance holding its lease, what it writes
/// commits with the record of the event, and an event it keeps failing on goes to its dead
/// letters, which every observer shows under its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_bus_handler_runs_in_the_system_and_its_dead_letters_show() {
    use carrier_actors::{EventBus, HandlerError};
    const SEEN: Rows<String> = Rows::new("seen");
    let env = TestEnv::start();
    let audit = BoundedContext::handlers("audit")
        .settings(|s| {
            s.max_attempts = 2;
            s.backoff_min = Duration::from_millis(10);
            s.backoff_max = Duration::from_millis(20);
        })
        .handle::<StoresEvent>("names", |event, txn| match &event.event {
            StoresEvent::StoreCreated(e) if e.name == "Poison" => {
                Err(HandlerError::new("no store may be called Poison"))
            }
            StoresEvent::StoreCreated(e) => Ok(SEEN.open(txn)?.put(&e.id, &e.name)?),
            _ => Ok(()),
        })
        .build();
    assert_eq!(audit.db_file(), "audit.bus.redb");
    assert_eq!(audit.reads().iter().map(|s| s.stream).collect::<Vec<_>>(), vec!["STORES"]);
    let config = SystemConfig::new(env.url(), env.data_dir(), vec![carrier_mall::stores::context(), audit]);
    let system = CarrierSystem::start(config).await.expect("starts");
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    for (id, name) in [("a", "Apples"), ("p", "Poison"), ("b", "Bread")] {
        let create = StoresCommand::CreateStore { id: id.into(), name: name.into(), location: "Hall".into() };
        stores.execute(create, Causality::default()).await.expect("created");
    }
    let bus = system.handle::<EventBus>().expect("the bus is the context's handle");
    wait_until(Duration::from_secs(30), "the handler saw the two good stores", || {
        let seen = bus.file().read().and_then(|txn| SEEN.all(&txn)).unwrap_or_default();
        async move { seen.len() == 2 }
    })
    .await;
    assert_eq!(bus.role(), "active", "the only instance holds the bus's lease");
    let observer = system.observer();
    let mut letters = Vec::new();
    wait_until(Duration::from_secs(30), "the poison store is a dead letter of the bus", || {
        let observer = observer.clone();
        async move {
            let report = observer.dead_letters().await;
            let audit = report.into_iter().find(|r| r.context == "audit");
            audit.is_some_and(|r| r.count == 1)
        }
    })
    .await;
    letters.extend(observer.dead_letters().await.into_iter().filter(|r| r.context == "audit"));
    assert_eq!(letters[0].latest[0].reason, "handler_failed", "{:?}", letters[0].latest);
    assert!(letters[0].latest[0].error.contains("called Poison"));
    assert!(observer.panels().iter().any(|p| p.title == "Event bus audit"), "its panel shows");
    // `dlq` lists it by the bus's name, as an operator would.
    let listed = std::process::Command::new(carrier_tests::carrier_bin())
        .args(["dlq", "list", "audit", "--nats-url", &env.url()])
        .output()
        .expect("carrier dlq runs");
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && out.contains("handler_failed") && out.contains("stores.StoreCreated"), "{out}");
    assert_eq!(system.health()["audit"], carrier_actors::Health::Healthy);
    drop((bus, observer));
    system.shutdown().await;
    // Stopped, its lease is given back: another system takes the bus over at once.
    let again = CarrierSystem::start(SystemConfig::new(
        env.url(),
        env.data_dir(),
        vec![BoundedContext::handlers("audit").handle::<StoresEvent>("names", |_, _| Ok(())).build()],
    ))
    .await
    .expect("starts again");
    let bus = again.handle::<EventBus>().expect("bus");
    assert_eq!(bus.role(), "active");
    again.shutdown().await;
}
