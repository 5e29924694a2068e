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
    let mut config = SystemConfig::new(env.url(), env.data_dir(), vec![carrier_actors::stores::context(), picky]);
    config.ack_wait = Duration::from_secs(2);
    let system = CarrierSystem::start(config).await.expect("starts");
    let stores = system.handle::<carrier_actors::stores::StoresHandle>().expect("stores");
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
