//! Fencing: a context whose lease this instance no longer holds stops its effects (consumers
//! hold back, commands are refused) until the lease is its own again.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::time::Duration;

use carrier_actors::{BoundedContext, CarrierSystem, ContextHandle, Health, SystemConfig};
use carrier_mall::stores::StoresCommand;
use carrier_mall::stores::StoresEvent;
use carrier_messages::Causality;
use carrier_messages::{Envelope, NoEvents};
use carrier_storage::ReactError;
use carrier_storage::{ContextKind, Emitter, Reacts, Rows, RowsMut, StorageError, WriteTransaction};
use carrier_tests::{wait_until, TestEnv};

fn create(id: &str) -> StoresCommand {
    StoresCommand::CreateStore { id: id.into(), name: format!("Store {id}"), location: "Hall".into() }
}

fn other_holder() -> bytes::Bytes {
    serde_json::to_vec(&serde_json::json!({
        "instance": "0192aaaa-0000-7000-8000-000000000000",
        "host": "other-host",
        "pid": 4711,
        "data_dir": "/elsewhere",
        "since": "2026-12-04T00:00:00Z"
    }))
    .expect("json")
    .into()
}

/// A context of the test's own that keeps store names, with no standby: a second instance is
/// refused, and a fenced one holds its consumers back.
struct Names;

const NAMES: Rows<String> = Rows::new("names");

impl ContextKind for Names {
    const NAME: &'static str = "names";
    type Event = NoEvents;
}

impl Reacts<StoresEvent> for Names {
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
            StoresEvent::StoreCreated(e) => Ok(names.put(&e.id, &e.name)?),
            _ => Ok(()),
        }
    }
}

fn stored_names(names: &ContextHandle<Names>) -> Vec<String> {
    names.db.read(|txn| NAMES.all(txn)).expect("names").into_iter().map(|(id, _)| id).collect()
}

fn fenced(system: &carrier_actors::CarrierSystem, context: &str) -> bool {
    matches!(system.health().get(context), Some(Health::Degraded(reason)) if reason.contains("fenced"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_whose_lease_another_instance_holds_is_fenced_until_the_lease_is_its_own_again() {
    let env = TestEnv::start();
    let names = BoundedContext::of::<Names>().consume::<StoresEvent>().build();
    let mut config = SystemConfig::new(env.url(), env.data_dir(), vec![carrier_mall::stores::context(), names]);
    config.ack_wait = Duration::from_secs(2);
    let system = CarrierSystem::start(config).await.expect("starts");
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let names = system.handle::<ContextHandle<Names>>().expect("names");
    stores.execute(create("s1"), Causality::default()).await.expect("decided");
    let js = async_nats::jetstream::new(env.plain_client().await);
    let leases = js.get_key_value("carrier_instances").await.expect("the lease bucket");

    // Another instance holds names' lease (as after this one was cut off past its expiry):
    // names' consumer holds back (a context that follows itself would go on, holding back only
    // its reactions that emit: see the next test), so an event published meanwhile is not applied here.
    leases.put("names", other_holder()).await.expect("written");
    let observer = system.observer();
    wait_until(Duration::from_secs(20), "names fenced and its consumer holding back", || {
        let (f, observer) = (fenced(&system, "names"), observer.clone());
        async move { f && observer.consumers().await.iter().any(|c| c.durable == "names-stores" && c.held_back) }
    })
    .await;
    assert!(!fenced(&system, "stores"), "only the context whose lease went");
    let leases_seen = observer.all_leases().await;
    let names_lease = leases_seen.iter().find(|l| l.context == "names").expect("names' lease listed");
    assert!(!names_lease.mine && names_lease.holder.host == "other-host", "{leases_seen:?}");
    assert!(leases_seen.iter().any(|l| l.context == "stores" && l.mine), "{leases_seen:?}");
    stores.execute(create("s2"), Causality::default()).await.expect("stores still decides");
    wait_until(Duration::from_secs(20), "s2 waits, pending, for names", || {
        let observer = observer.clone();
        async move {
            let report = observer.consumers().await;
            let c = report.iter().find(|c| c.durable == "names-stores").expect("names-stores");
            c.pending == 1 && c.ack_pending == 0
        }
    })
    .await;
    assert!(stored_names(&names).iter().all(|id| id != "s2"), "nothing applied while fenced");
    // Its position is not this instance's to move while fenced.
    let moved = observer.reposition("names", "stores", carrier_actors::Reposition::Skip { count: 1 }).await;
    assert!(
        matches!(moved, Err(carrier_actors::ActionError::Reposition(carrier_actors::RepositionError::Fenced(_)))),
        "{moved:?}"
    );

    // Commands of a fenced context are refused, naming why.
    leases.put("stores", other_holder()).await.expect("written");
    wait_until(Duration::from_secs(20), "stores fenced", || {
        let f = fenced(&system, "stores");
        async move { f }
    })
    .await;
    let refused = stores.execute(create("s3"), Causality::default()).await.expect_err("refused");
    assert!(refused.to_string().contains("fenced") && refused.to_string().contains("other-host"), "{refused}");
    // And it leaves the commands' queue group, so that the lease holder gets every request:
    // with no other instance here, nobody answers.
    let client = env.plain_client().await;
    let body = r#"{"command":"create_store","id":"s9","name":"Nine","location":"Hall"}"#;
    wait_until(Duration::from_secs(10), "cmd.stores has no responder while fenced", || {
        let client = client.clone();
        async move {
            matches!(client.request("cmd.stores", body.into()).await,
                     Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders)
        }
    })
    .await;

    // The other instance lets go: the leases are claimed back, the fences lift, the held-back
    // event is applied and commands are decided again.
    leases.delete("names").await.expect("deleted");
    leases.delete("stores").await.expect("deleted");
    wait_until(Duration::from_secs(20), "both fences lifted", || {
        let lifted = !fenced(&system, "stores") && !fenced(&system, "names");
        async move { lifted }
    })
    .await;
    wait_until(Duration::from_secs(20), "s2 applied once the fence lifted", || {
        let has = stored_names(&names).iter().any(|id| id == "s2");
        async move { has }
    })
    .await;
    stores.execute(create("s3"), Causality::default()).await.expect("decided again");
    wait_until(Duration::from_secs(10), "cmd.stores answered again", || {
        let client = client.clone();
        async move { client.request("cmd.stores", body.into()).await.is_ok() }
    })
    .await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_bucket_whose_leases_live_another_time_is_made_to_live_the_lease_ttl() {
    // A bucket made by an older Carrier let leases live 15 s: this one fences only after 20 s
    // without a renewal, which is safe only if the bucket's values live the lease's whole TTL.
    let env = TestEnv::start();
    let js = async_nats::jetstream::new(env.plain_client().await);
    // The bucket's stream made by hand: the client's `create_key_value` reads an account info
    // that 2.9's answer does not parse into.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_carrier_instances".into(),
        subjects: vec!["$KV.carrier_instances.>".into()],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(15),
        duplicate_window: Duration::from_secs(15),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("an old bucket");
    let system = env.system(&["stores"]).await;
    let mut stream = js.get_stream("KV_carrier_instances").await.expect("the bucket's stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_age, carrier_actors::LEASE_TTL, "leases live the TTL the fence assumes");
    assert!(carrier_actors::FENCE_AFTER < carrier_actors::LEASE_TTL);
    system.shutdown().await;
}

/// A context that follows itself (depot) goes on while fenced: its caches stay current, but a
/// reaction that emits waits (another instance may hold the context and emit it), and runs once
/// the lease is its own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_context_that_follows_itself_keeps_its_caches_and_holds_its_reactions() {
    use carrier_mall::baskets::BasketItem;
    use carrier_mall::ordering::{OrderCreated, OrderingEvent};
    let env = TestEnv::start();
    let system = env.system(&["stores", "depot"]).await;
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let depot = system.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    stores.execute(create("s1"), Causality::default()).await.expect("decided");
    let js = async_nats::jetstream::new(env.plain_client().await);
    let leases = js.get_key_value("carrier_instances").await.expect("the lease bucket");
    leases.put("depot", other_holder()).await.expect("written");
    wait_until(Duration::from_secs(20), "depot fenced", || {
        let f = fenced(&system, "depot");
        async move { f }
    })
    .await;

    // A store created meanwhile reaches depot's cache; an order does not become a shopping list.
    stores.execute(create("s2"), Causality::default()).await.expect("stores decides");
    let item = BasketItem {
        store_id: "s2".into(),
        store_name: "Store s2".into(),
        product_id: "p1".into(),
        product_name: "Tea".into(),
        price: 300,
        quantity: 1,
    };
    let order = OrderingEvent::OrderCreated(OrderCreated {
        id: "o1".into(),
        customer_id: "c1".into(),
        payment_id: "pay".into(),
        items: vec![item],
        total: 300,
    });
    let wire = carrier_messages::Decoded::new(order, 1, &Causality::default()).encode().expect("encodes");
    system.bus.publish_raw(&wire.subject, &wire.headers, wire.body.into()).await.expect("published");
    wait_until(Duration::from_secs(20), "s2 cached while fenced", || {
        let has = depot.db.stores().map(|s| s.iter().any(|(id, _, _)| id == "s2")).unwrap_or(false);
        async move { has }
    })
    .await;
    let observer = system.observer();
    let reader = observer.consumers().await.into_iter().find(|c| c.context == "depot" && c.source == "stores");
    assert!(reader.is_some_and(|c| !c.held_back), "a cache is not held back");
    // The order is delivered and held: tried again and again, applied never.
    let ordering = depot.consumer("ordering").expect("ordering consumer");
    wait_until(Duration::from_secs(20), "the order tried and held back three times", || {
        let held = ordering.held_for_holder.load(std::sync::atomic::Ordering::Relaxed);
        async move { held >= 3 }
    })
    .await;
    assert!(depot.db.shopping_list("o1").expect("read").is_none(), "no shopping list while fenced");
    // A held batch gives way to an operator: the consumer pauses (lets go) and resumes.
    observer.pause("depot", "ordering", true).await.expect("paused while a batch was held");
    observer.pause("depot", "ordering", false).await.expect("resumed");
    assert_eq!(depot.db.outbox_len().expect("outbox"), 0, "nothing emitted while fenced");
    assert_eq!(ordering.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 0, "held, not dead-lettered");
    assert_eq!(ordering.commit_failures.load(std::sync::atomic::Ordering::Relaxed), 0, "held, not failing");

    // The lease is its own again: the reaction runs, once.
    leases.delete("depot").await.expect("deleted");
    wait_until(Duration::from_secs(20), "the shopping list made once the fence lifted", || {
        let made = depot.db.shopping_list("o1").ok().flatten().is_some();
        async move { made }
    })
    .await;
    let list = depot.db.shopping_list("o1").expect("read").expect("made");
    assert_eq!((list.version, list.stops.len()), (1, 1));
    system.shutdown().await;
}
