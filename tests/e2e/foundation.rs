//! The foundation: one event path from a stores command to the baskets caches.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use carrier_storage::ContextDb as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carrier_actors::CarrierSystem;
use carrier_actors::{dead_letter_header, dead_letter_stream};
use carrier_mall::stores::StoresCommand;
use carrier_mall::verify::baskets_against_stores;
use carrier_messages::header;
use carrier_messages::Causality;
use carrier_tests::{wait_until, TestEnv};
use futures::StreamExt;

const BOTH: [&str; 2] = ["stores", "baskets"];
const LIMIT: Duration = Duration::from_secs(30);

async fn run(
    system: &CarrierSystem,
    command: StoresCommand,
) -> carrier_messages::Decoded<carrier_mall::stores::StoresEvent> {
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores runs here");
    stores.execute(command, Causality::default()).await.expect("command accepted")
}

fn create_store(id: &str, name: &str) -> StoresCommand {
    StoresCommand::CreateStore { id: id.into(), name: name.into(), location: format!("{id} wing") }
}

fn add_product(id: &str, store: &str, price: i64) -> StoresCommand {
    StoresCommand::AddProduct {
        id: id.into(),
        store_id: store.into(),
        name: format!("product {id}"),
        description: "a thing".into(),
        sku: format!("SKU-{id}"),
        price,
    }
}

/// Waits until the baskets caches equal the stores owner's state.
async fn converge(owner: &CarrierSystem, cache: &CarrierSystem) {
    let stores_db = owner.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db.clone();
    let baskets_db = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.clone();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let problems = baskets_against_stores(&stores_db, &baskets_db).expect("both readable");
        if problems.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("caches still disagree after {LIMIT:?}:\n{}", problems.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stores_event_reaches_the_right_cache_effect() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s1", "Corner Shop")).await;
    run(&system, create_store("s2", "Big Box")).await;
    run(&system, StoresCommand::RebrandStore { id: "s1".into(), name: "Corner Market".into() }).await;
    run(&system, StoresCommand::EnableParticipation { id: "s2".into() }).await;
    run(&system, StoresCommand::DisableParticipation { id: "s2".into() }).await;
    run(&system, add_product("p1", "s1", 1000)).await;
    run(&system, add_product("p2", "s2", 250)).await;
    run(&system, StoresCommand::RebrandProduct { id: "p1".into(), name: "Kettle".into(), description: "boils".into() })
        .await;
    run(&system, StoresCommand::IncreaseProductPrice { id: "p1".into(), delta: 199 }).await;
    run(&system, StoresCommand::DecreaseProductPrice { id: "p1".into(), delta: 99 }).await;
    run(&system, StoresCommand::RemoveProduct { id: "p2".into() }).await;
    converge(&system, &system).await;

    let baskets = &system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db;
    assert_eq!(baskets.store("s1").expect("read").expect("cached").name, "Corner Market");
    let kettle = baskets.product("p1").expect("read").expect("cached");
    assert_eq!((kettle.name.as_str(), kettle.price, kettle.store_id.as_str()), ("Kettle", 1100, "s1"));
    assert_eq!(baskets.product("p2").expect("read"), None, "removed product left the cache");
    let stores = baskets.stores().expect("read");
    let s2_version = stores.iter().find(|(id, _, _)| id == "s2").map(|(_, _, v)| *v);
    assert_eq!(s2_version, Some(3), "participation events advance the store's version");
    let stats = baskets.engine_stats().expect("stats");
    assert_eq!(stats.inbox, 11, "one inbox record per event");
    assert_eq!(
        system.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db.outbox_len().expect("outbox"),
        0,
        "outbox drained"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_republished_after_the_duplicate_window_changes_nothing() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s", "Shop")).await;
    run(&system, add_product("p", "s", 500)).await;
    let raise = run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 25 }).await;
    converge(&system, &system).await;

    // Past JetStream's duplicate window the same event is stored again; only Carrier's inbox can
    // catch it. Publishing without Nats-Msg-Id makes JetStream store it as if the window had passed.
    let wire = raise.encode().expect("encodes");
    let headers: Vec<(String, String)> = wire.headers.into_iter().filter(|(k, _)| k != header::NATS_MSG_ID).collect();
    let receipt = system.bus.publish_raw(&wire.subject, &headers, wire.body.into()).await.expect("stored again");
    assert!(!receipt.duplicate, "JetStream stored the copy");

    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").clone();
    wait_until(LIMIT, "the copy is delivered and recognised", || {
        let stats = baskets.consumer("stores").expect("stores consumer").clone();
        async move {
            stats.duplicates.load(Ordering::Relaxed) >= 1
                && stats.acked_stream_seq.load(Ordering::Relaxed) >= receipt.stream_seq
        }
    })
    .await;
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 525, "delta applied exactly once");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_redelivers_a_committed_batch_without_doubling_it() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s", "Shop")).await;
    run(&system, add_product("p", "s", 500)).await;
    converge(&system, &system).await;

    // The next batch commits but its ack never reaches the server, which redelivers the batch
    // after the ack wait (2 s here) to the same, live consumer.
    env_faults(&system).consumer_lost_acks.store(1, Ordering::SeqCst);
    run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 40 }).await;
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").clone();
    wait_until(LIMIT, "the redelivered batch is recognised as a duplicate", || {
        let stats = baskets.consumer("stores").expect("stores consumer").clone();
        async move { stats.duplicates.load(Ordering::Relaxed) >= 1 }
    })
    .await;
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 540, "delta applied once");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_crashing_between_commit_and_ack_resumes_from_its_checkpoint() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s", "Shop")).await;
    run(&system, add_product("p", "s", 500)).await;
    converge(&system, &system).await;
    env_faults(&system).consumer_crash_after_commit.store(1, Ordering::SeqCst);
    run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 40 }).await;
    run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 2 }).await;
    let tree = system.tree.clone();
    wait_until(LIMIT, "the consumer is restarted", || {
        let tree = tree.clone();
        async move { tree.get("carrier/baskets/stores-consumer").is_some_and(|n| n.restarts >= 1) }
    })
    .await;
    converge(&system, &system).await;
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 542, "each delta exactly once");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_commit_is_retried_in_order_and_applied_once() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s", "Shop")).await;
    run(&system, add_product("p", "s", 500)).await;
    converge(&system, &system).await;
    env_faults(&system).cache_commit_failures.store(3, Ordering::SeqCst);
    for _ in 0..5 {
        run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 10 }).await;
    }
    converge(&system, &system).await;
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 550);
    assert_eq!(baskets.consumer("stores").expect("stores consumer").commit_failures.load(Ordering::Relaxed), 3);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_resumes_with_nothing_lost_or_doubled() {
    let env = TestEnv::start();
    let owner = env.system(&["stores"]).await;
    run(&owner, create_store("s", "Shop")).await;
    for i in 0..20 {
        run(&owner, add_product(&format!("p{i}"), "s", 1000)).await;
    }
    let mut cache = env.system(&["baskets"]).await;
    // Price changes keep coming while the baskets context is killed and started again, twice.
    for round in 0..3 {
        for i in 0..20 {
            let id = format!("p{i}");
            run(&owner, StoresCommand::IncreaseProductPrice { id: id.clone(), delta: 7 }).await;
            run(&owner, StoresCommand::DecreaseProductPrice { id, delta: 2 }).await;
        }
        if round < 2 {
            cache.kill().await;
            cache = env.system(&["baskets"]).await;
        }
    }
    converge(&owner, &cache).await;
    for (_, product, _) in
        cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.products().expect("read")
    {
        assert_eq!(product.price, 1000 + 3 * 5, "every delta exactly once");
    }
    cache.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_dead_lettered_and_does_not_block_the_events_behind_it() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    let client = env.plain_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(header::EVENT_ID, "0190a0b0-0000-7000-8000-0000000000aa");
    headers.insert(header::EVENT_TYPE, "stores.StoreCreated");
    headers.insert(header::AGGREGATE_ID, "bad");
    headers.insert(header::AGGREGATE_VERSION, "1");
    headers.insert(header::CONTENT_TYPE, "application/cbor");
    client
        .publish_with_headers("stores.store.created", headers, b"\xa3\x62id\x63ba".as_slice().into())
        .await
        .expect("sent");
    client.flush().await.expect("flushed");
    run(&system, create_store("s", "Behind The Poison")).await;
    converge(&system, &system).await;

    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.consumer("stores").expect("stores consumer").dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(baskets.db.store("bad").expect("read"), None, "nothing written for the poison message");
    let dlq =
        system.bus.jetstream().get_stream(dead_letter_stream("baskets")).await.expect("dead-letter stream exists");
    let consumer = dlq.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("reader");
    let mut messages =
        consumer.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let letter = messages.next().await.expect("one dead letter").expect("readable");
    let h = letter.headers.as_ref().expect("headers");
    assert_eq!(h.get(dead_letter_header::REASON).map(|v| v.as_str()), Some("undecodable_body"));
    assert_eq!(h.get(dead_letter_header::ORIGINAL_SUBJECT).map(|v| v.as_str()), Some("stores.store.created"));
    assert!(h.get(dead_letter_header::ERROR).is_some_and(|v| v.as_str().contains("StoreCreated")));
    assert_eq!(letter.subject.as_str(), "dlq.baskets.stores.store.created");
    assert_eq!(letter.payload.as_ref(), b"\xa3\x62id\x63ba", "original body kept");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_crash_between_publish_and_mark_causes_no_double_effect() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    env_faults(&system).relay_crash_after_publish.store(2, Ordering::SeqCst);
    run(&system, create_store("s", "Shop")).await;
    run(&system, add_product("p", "s", 100)).await;
    for _ in 0..10 {
        run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 1 }).await;
    }
    converge(&system, &system).await;
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 110);
    // The caches converge from the first publish; the relay is restarted and its outbox
    // drained a little later.
    let (tree, stores_db) =
        (system.tree.clone(), system.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db.clone());
    wait_until(LIMIT, "the relay was restarted twice and drained the outbox", || {
        let (tree, db) = (tree.clone(), stores_db.clone());
        async move {
            let restarts = tree.get("carrier/stores/outbox-relay").map(|n| n.restarts).unwrap_or(0);
            restarts == 2 && db.outbox_len().unwrap_or(1) == 0
        }
    })
    .await;
    assert_eq!(
        baskets.consumer("stores").expect("stores consumer").duplicates.load(Ordering::Relaxed),
        0,
        "JetStream absorbed the re-sends"
    );
    let stored = system.bus.stream_message_count("STORES").await.expect("info").expect("stream");
    assert_eq!(stored, 12, "JetStream dropped the republished duplicates");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_event_from_a_plain_nats_client_is_applied_like_a_cbor_one() {
    let env = TestEnv::start();
    let system = env.system(&["baskets"]).await;
    let client = env.plain_client().await;
    let js = async_nats::jetstream::new(client);
    let send = |id: &'static str,
                event_type: &'static str,
                version: &'static str,
                subject: &'static str,
                body: &'static str| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert(header::NATS_MSG_ID, id);
            h.insert(header::EVENT_TYPE, event_type);
            h.insert(header::AGGREGATE_ID, "json-store");
            h.insert(header::AGGREGATE_VERSION, version);
            h.insert(header::CONTENT_TYPE, "application/json");
            js.publish_with_headers(subject, h, body.into()).await.expect("sent").await.expect("stored");
        }
    };
    send(
        "0190a0b0-0000-7000-8000-000000000001",
        "stores.StoreCreated",
        "1",
        "stores.store.created",
        r#"{"id":"json-store","name":"From JSON","location":"north"}"#,
    )
    .await;
    send(
        "0190a0b0-0000-7000-8000-000000000002",
        "stores.StoreRebranded",
        "2",
        "stores.store.rebranded",
        r#"{"id":"json-store","name":"Renamed In JSON"}"#,
    )
    .await;
    let db = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.clone();
    wait_until(LIMIT, "the JSON events reach the cache", || {
        let db = db.clone();
        async move { db.store("json-store").ok().flatten().is_some_and(|s| s.name == "Renamed In JSON") }
    })
    .await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_cache_is_restarted_with_its_consumer_and_loses_nothing() {
    let env = TestEnv::start();
    let system = env.system(&BOTH).await;
    run(&system, create_store("s", "Shop")).await;
    converge(&system, &system).await;
    env_faults(&system).cache_panics.store(1, Ordering::SeqCst);
    run(&system, add_product("p", "s", 300)).await;
    run(&system, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 3 }).await;
    converge(&system, &system).await;
    assert_eq!(
        system
            .handle::<carrier_mall::baskets::BasketsHandle>()
            .expect("baskets")
            .db
            .product("p")
            .expect("read")
            .expect("cached")
            .price,
        303
    );
    let tree = system.tree.snapshot();
    assert!(tree["carrier/baskets/cache"].restarts >= 1);
    assert!(tree["carrier/baskets/stores-consumer"].restarts >= 1, "rest-for-one restarted the consumer too");
    assert_eq!(tree["carrier/stores/owner"].restarts, 0, "other contexts untouched");
    system.shutdown().await;
}

fn env_faults(system: &CarrierSystem) -> std::sync::Arc<carrier_actors::Faults> {
    system.faults.clone()
}
