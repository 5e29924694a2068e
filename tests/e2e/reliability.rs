//! Reliability: bad input, server restarts, and the guarantees that must survive them.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use carrier_storage::ContextDb as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carrier_actors::{dead_letter_header, dead_letter_stream};
use carrier_mall::stores::StoresCommand;
use carrier_mall::verify::baskets_against_stores;
use carrier_messages::header;
use carrier_messages::Causality;
use carrier_tests::{wait_until, TestEnv};
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(30);

async fn create_shop(stores: &carrier_mall::stores::StoresHandle) {
    let create = StoresCommand::CreateStore { id: "s".into(), name: "Shop".into(), location: "l".into() };
    stores.execute(create, Causality::default()).await.expect("accepted");
}

/// One malformed message: its subject, headers, body, and the reason it must be dead-lettered for.
struct Bad {
    subject: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    reason: &'static str,
}

fn headers(event_type: &str, id: &str, version: &str, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        (header::EVENT_ID, uuid::Uuid::now_v7().to_string()),
        (header::EVENT_TYPE, event_type.to_string()),
        (header::AGGREGATE_ID, id.to_string()),
        (header::AGGREGATE_VERSION, version.to_string()),
        (header::CONTENT_TYPE, content_type.to_string()),
    ]
}

fn malformed() -> Vec<Bad> {
    let cbor = "application/cbor";
    let json = "application/json";
    let created = "stores.store.created";
    let mut nested = vec![0x81u8; 5_000];
    nested.push(0x01);
    let mut missing_type = headers("stores.StoreCreated", "m1", "1", json);
    missing_type.retain(|(k, _)| *k != header::EVENT_TYPE);
    let mut missing_id = headers("stores.StoreCreated", "m2", "1", json);
    missing_id.retain(|(k, _)| *k != header::EVENT_ID);
    vec![
        // CBOR map {"id": "s-1", ...} cut short.
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", cbor),
            body: b"\xa3\x62id\x63s-".to_vec(),
            reason: "undecodable_body",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", cbor),
            body: nested,
            reason: "undecodable_body",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", cbor),
            body: vec![0xff; 64],
            reason: "undecodable_body",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", json),
            body: b"{\"id\": \"s-1\", \"name\": ".to_vec(),
            reason: "undecodable_body",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", json),
            body: b"[[[[[[[[[[[[[[[[[[[[[[[[[[".repeat(40),
            reason: "undecodable_body",
        },
        Bad {
            subject: "stores.store.exploded",
            headers: headers("stores.StoreExploded", "s-1", "1", json),
            body: b"{}".to_vec(),
            reason: "unknown_event_type",
        },
        Bad {
            subject: created,
            headers: {
                let mut h = headers("stores.StoreCreated", "s-1", "1", json);
                h.push((header::SCHEMA_VERSION, "7".into()));
                h
            },
            body: br#"{"id":"s-1","name":"n","location":"l"}"#.to_vec(),
            reason: "unsupported_schema_version",
        },
        Bad {
            subject: created,
            headers: missing_type,
            body: br#"{"id":"m1","name":"n","location":"l"}"#.to_vec(),
            reason: "missing_header",
        },
        Bad {
            subject: created,
            headers: missing_id,
            body: br#"{"id":"m2","name":"n","location":"l"}"#.to_vec(),
            reason: "missing_header",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "zero", json),
            body: br#"{"id":"s-1","name":"n","location":"l"}"#.to_vec(),
            reason: "bad_header",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", "text/plain"),
            body: b"hello".to_vec(),
            reason: "bad_header",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "s-1", "1", json),
            body: br#"{"id":"s-1","name":"   ","location":"l"}"#.to_vec(),
            reason: "invalid_payload",
        },
        Bad {
            subject: "stores.store.rebranded",
            headers: headers("stores.StoreCreated", "s-1", "1", json),
            body: br#"{"id":"s-1","name":"n","location":"l"}"#.to_vec(),
            reason: "subject_mismatch",
        },
        Bad {
            subject: created,
            headers: headers("stores.StoreCreated", "other", "1", json),
            body: br#"{"id":"s-1","name":"n","location":"l"}"#.to_vec(),
            reason: "aggregate_mismatch",
        },
        // No headers: Carrier's structured framing, so the body must be an event's CBOR map.
        Bad { subject: created, headers: vec![], body: b"no headers at all".to_vec(), reason: "undecodable_envelope" },
        Bad {
            subject: created,
            headers: vec![(header::CONTENT_TYPE, "application/cloudevents+json".into())],
            body: br#"{"specversion":"1.0","id":"ce-1","source":"/x","type":"stores.StoreCreated","data":{"id":"c1","name":"n","location":"l"}}"#.to_vec(),
            reason: "missing_attribute",
        },
        Bad {
            subject: created,
            headers: vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", "ce-2".into()),
                ("ce-source", "/x".into()),
                ("ce-type", "stores.StoreCreated".into()),
                ("ce-aggregateversion", "first".into()),
            ],
            body: br#"{"id":"c2","name":"n","location":"l"}"#.to_vec(),
            reason: "bad_attribute",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_dead_lettered_with_its_reason_and_writes_nothing() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    let client = env.plain_client().await;
    let cases = malformed();
    for bad in &cases {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in &bad.headers {
            h.insert(*k, v.as_str());
        }
        client.publish_with_headers(bad.subject, h, bad.body.clone().into()).await.expect("sent");
    }
    client.flush().await.expect("flushed");
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    stores
        .execute(
            StoresCommand::CreateStore { id: "good".into(), name: "Good".into(), location: "here".into() },
            Causality::default(),
        )
        .await
        .expect("accepted");

    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").clone();
    let expected = cases.len() as u64;
    wait_until(LIMIT, "every malformed message is dead-lettered and the good one applied", || {
        let b = baskets.clone();
        async move {
            b.consumer("stores").expect("stores consumer").dead_lettered.load(Ordering::Relaxed) == expected
                && b.db.store("good").ok().flatten().is_some()
        }
    })
    .await;
    assert_eq!(baskets.db.stores().expect("read").len(), 1, "only the good store is cached");
    assert_eq!(baskets.db.engine_stats().expect("stats").inbox, 1, "nothing else recorded");
    let tree = system.tree.snapshot();
    assert!(tree.values().all(|n| n.restarts == 0), "no actor crashed: {tree:?}");

    let dlq = system.bus.jetstream().get_stream(dead_letter_stream("baskets")).await.expect("dead-letter stream");
    let reader = dlq.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("reader");
    let mut letters = reader.fetch().max_messages(100).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let mut reasons = Vec::new();
    while let Some(Ok(letter)) = letters.next().await {
        let h = letter.headers.as_ref().expect("headers");
        reasons.push(h.get(dead_letter_header::REASON).map(|v| v.as_str().to_string()).unwrap_or_default());
    }
    let mut want: Vec<String> = cases.iter().map(|c| c.reason.to_string()).collect();
    want.sort();
    reasons.sort();
    assert_eq!(reasons, want, "each dead letter carries its own reason");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_relays_resume_by_themselves_when_nats_server_is_killed_and_restarted() {
    let mut env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    create_shop(&stores).await;
    for i in 0..10 {
        let add = StoresCommand::AddProduct {
            id: format!("p{i}"),
            store_id: "s".into(),
            name: format!("p{i}"),
            description: String::new(),
            sku: String::new(),
            price: 100,
        };
        stores.execute(add, Causality::default()).await.expect("accepted");
    }
    // Commands keep being accepted while the server is down: they wait in the outbox.
    env.nats.kill();
    for i in 0..10 {
        let raise = StoresCommand::IncreaseProductPrice { id: format!("p{i}"), delta: 5 };
        stores.execute(raise, Causality::default()).await.expect("accepted while NATS is down");
    }
    assert!(stores.db.outbox_len().expect("outbox") > 0, "events wait in the outbox");
    env.nats.restart().expect("nats-server restarts on the same port and store");
    for i in 0..10 {
        let raise = StoresCommand::IncreaseProductPrice { id: format!("p{i}"), delta: 1 };
        stores.execute(raise, Causality::default()).await.expect("accepted");
    }
    let (owner, cache) =
        (stores.db.clone(), system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let problems = baskets_against_stores(&owner, &cache).expect("readable");
        if problems.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no convergence after the restart:\n{}", problems.join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, product, _) in cache.products().expect("read") {
        assert_eq!(product.price, 106);
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_older_than_the_inbox_horizon_still_changes_nothing() {
    let env = TestEnv::start();
    let mut config = env.config(&["stores", "baskets"]);
    config.inbox_retention = carrier_actors::InboxRetention {
        horizon: Duration::ZERO,
        every: Duration::from_millis(100),
        idempotency_keys: carrier_storage::IDEMPOTENCY_RETENTION,
    };
    let system = carrier_actors::CarrierSystem::start(config).await.expect("starts");
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    create_shop(&stores).await;
    let add = StoresCommand::AddProduct {
        id: "p".into(),
        store_id: "s".into(),
        name: "p".into(),
        description: String::new(),
        sku: String::new(),
        price: 100,
    };
    stores.execute(add, Causality::default()).await.expect("accepted");
    let raise = stores
        .execute(StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 9 }, Causality::default())
        .await
        .expect("ok");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(LIMIT, "the events are applied and then pruned from the inbox", || {
        let b = baskets.clone();
        async move {
            b.db.product("p").ok().flatten().is_some_and(|p| p.price == 109)
                && b.db.engine_stats().map(|s| s.inbox == 0).unwrap_or(false)
        }
    })
    .await;

    // The old event comes back (a replay, or a producer retrying days later).
    let wire = raise.encode().expect("encodes");
    let headers: Vec<(String, String)> = wire.headers.into_iter().filter(|(k, _)| k != header::NATS_MSG_ID).collect();
    system.bus.publish_raw(&wire.subject, &headers, wire.body.into()).await.expect("stored again");
    wait_until(LIMIT, "the redelivery is skipped as stale", || {
        let b = baskets.clone();
        async move { b.consumer("stores").expect("stores consumer").stale.load(Ordering::Relaxed) >= 1 }
    })
    .await;
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 109, "the delta is not applied twice");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_that_keeps_crashing_is_given_up_while_the_others_keep_running() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    assert!(system.health().values().all(|h| *h == carrier_actors::Health::Healthy), "{:?}", system.health());
    // The cache crashes once, and its consumer can never start again.
    system.faults.cache_panics.store(1, Ordering::SeqCst);
    system.faults.consumer_start_failures.store(u32::MAX, Ordering::SeqCst);
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    create_shop(&stores).await;
    let tree = system.tree.clone();
    wait_until(Duration::from_secs(90), "the root gives the baskets context up", || {
        let tree = tree.clone();
        async move { tree.get("carrier/baskets").is_some_and(|n| n.state == carrier_actors::NodeState::Failed) }
    })
    .await;
    let health = system.health();
    assert!(matches!(health["baskets"], carrier_actors::Health::Failed(_)), "{health:?}");
    assert_eq!(health["stores"], carrier_actors::Health::Healthy);
    // The stores context is untouched and still takes commands.
    stores
        .execute(StoresCommand::RebrandStore { id: "s".into(), name: "Still Here".into() }, Causality::default())
        .await
        .expect("stores still works");
    assert_eq!(system.tree.get("carrier/stores/owner").map(|n| n.restarts), Some(0));
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_storage_makes_the_context_degraded_until_it_recovers_by_itself() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    system.faults.cache_commit_failures.store(u32::MAX, Ordering::SeqCst);
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    create_shop(&stores).await;
    let sys = &system;
    wait_until(LIMIT, "the baskets context reports degraded storage", || async move {
        matches!(sys.health()["baskets"], carrier_actors::Health::Degraded(ref r) if r.contains("commits failed"))
    })
    .await;
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.db.store("s").expect("read"), None, "nothing applied while storage fails");
    // The disk comes back.
    system.faults.cache_commit_failures.store(0, Ordering::SeqCst);
    wait_until(LIMIT, "the cache catches up and the context is healthy again", || async move {
        sys.handle::<carrier_mall::baskets::BasketsHandle>().is_some_and(|b| b.db.store("s").ok().flatten().is_some())
            && sys.health()["baskets"] == carrier_actors::Health::Healthy
    })
    .await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_crashes_the_cache_is_isolated_and_dead_lettered_and_the_rest_flows() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    *system.faults.cache_panic_on_id.lock().expect("lock") = Some("p3".to_string());
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    create_shop(&stores).await;
    for i in 1..=5 {
        let add = StoresCommand::AddProduct {
            id: format!("p{i}"),
            store_id: "s".into(),
            name: format!("product {i}"),
            description: String::new(),
            sku: String::new(),
            price: 100 * i,
        };
        stores.execute(add, Causality::default()).await.expect("accepted");
    }
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(LIMIT, "the poison event is dead-lettered and the others applied", || {
        let b = baskets.clone();
        async move {
            b.consumer("stores").expect("stores consumer").dead_lettered.load(Ordering::Relaxed) == 1
                && ["p1", "p2", "p4", "p5"].iter().all(|id| b.db.product(id).ok().flatten().is_some())
        }
    })
    .await;
    assert_eq!(baskets.db.product("p3").expect("read"), None);
    let tree = system.tree.snapshot();
    assert!(tree["carrier/baskets/cache"].restarts >= 2, "it crashed with the batch, then with the event alone");
    assert_ne!(tree["carrier/baskets"].state, carrier_actors::NodeState::Failed, "the context survived");
    assert_eq!(
        tree["carrier/baskets"].restarts, 0,
        "without even escalating: a cache and its consumer failing together is one incident"
    );
    // Events keep flowing behind it.
    stores
        .execute(StoresCommand::IncreaseProductPrice { id: "p5".into(), delta: 1 }, Causality::default())
        .await
        .expect("ok");
    wait_until(LIMIT, "later events still apply", || {
        let b = baskets.clone();
        async move { b.db.product("p5").ok().flatten().is_some_and(|p| p.price == 501) }
    })
    .await;
    let letters = system.bus.dead_letters("baskets", 1, 10).await.expect("read");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("Carrier-Dlq-Reason"), Some("apply_failed"));
    assert_eq!(letters[0].envelope().map(|e| e.aggregate_id).as_deref(), Some("p3"));
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_at_the_tail_is_not_dead_lettered_again_after_a_crash() {
    use carrier_storage::ContextDb as _;
    let env = TestEnv::start();
    let system = env.system(&["baskets"]).await;
    let client = env.plain_client().await;
    let mut h = async_nats::HeaderMap::new();
    h.insert(header::EVENT_ID, "0190a0b0-0000-7000-8000-0000000000c1");
    h.insert(header::EVENT_TYPE, "stores.StoreCreated");
    h.insert(header::AGGREGATE_ID, "tail");
    h.insert(header::AGGREGATE_VERSION, "1");
    h.insert(header::CONTENT_TYPE, "application/json");
    client.publish_with_headers("stores.store.created", h, "not json".into()).await.expect("sent");
    client.flush().await.expect("flushed");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    let durable = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id");
    wait_until(LIMIT, "the poison message is dead-lettered and checkpointed", || {
        let (b, durable) = (baskets.clone(), durable.clone());
        async move {
            b.consumer("stores").expect("stores consumer").dead_lettered.load(Ordering::Relaxed) == 1
                && b.db.checkpoint(&durable).map(|c| c == 1).unwrap_or(false)
        }
    })
    .await;
    drop(baskets);
    system.kill().await;

    let again = env.system(&["baskets"]).await;
    // Something after it, so that we know the restarted consumer has read past the poison.
    let created = carrier_messages::Decoded::new(
        carrier_mall::stores::StoresEvent::StoreCreated(carrier_mall::stores::StoreCreated {
            id: "after".into(),
            name: "After".into(),
            location: "l".into(),
        }),
        1,
        &Causality::default(),
    );
    again.bus.publish(&created.encode().expect("encodes")).await.expect("stored");
    let baskets = again.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(LIMIT, "the next event is applied", || {
        let b = baskets.clone();
        async move { b.db.store("after").ok().flatten().is_some() }
    })
    .await;
    assert_eq!(
        baskets.consumer("stores").expect("stores consumer").dead_lettered.load(Ordering::Relaxed),
        0,
        "not dead-lettered twice"
    );
    assert_eq!(again.bus.stream_message_count("DLQ_BASKETS").await.expect("info"), Some(1));
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_is_killed_mid_stream_no_message_stays_pending() {
    use carrier_mall::stores::{ProductAdded, StoresEvent};
    use carrier_messages::Decoded;
    let mut env = TestEnv::start();
    let system = env.system(&["baskets"]).await;
    let bus = system.bus.clone();
    let encoded: Vec<_> = (0..20_000u64)
        .map(|i| {
            let e = ProductAdded {
                id: format!("p{i}"),
                store_id: "s".into(),
                name: "n".into(),
                description: String::new(),
                sku: String::new(),
                price: 1,
            };
            Decoded::new(StoresEvent::ProductAdded(e), 1, &Causality::default()).encode().expect("encodes")
        })
        .collect();
    let publish = |from: usize, to: usize| {
        let (bus, batch) = (bus.clone(), encoded[from..to].to_vec());
        async move {
            for wire in batch {
                // Fire and forget: during the outage some fail; they are published again below.
                let _ = bus.publish_raw(&wire.subject, &wire.headers, wire.body.into()).await;
            }
        }
    };
    publish(0, 10_000).await;
    // Kill the server while the cache is still consuming what was just published.
    env.nats.kill();
    env.nats.restart().expect("restarts");
    publish(10_000, 20_000).await;
    let last = system.bus.last_sequence("STORES").await.expect("stream");
    let durable = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance");
    let cache = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = system.bus.consumer_info("STORES", &durable).await;
        let cached = cache.products().map(|p| p.len() as u64).unwrap_or(0);
        if let Ok(info) = &info {
            // Every stored event cached once, and nothing left pending on the server.
            if cached == last && info.ack_pending == 0 && info.pending == 0 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages stay pending after the restart (last {last}, cached {cached}): {:?}",
            info.map(|i| (i.ack_floor_stream_seq, i.pending, i.ack_pending, i.redelivered))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.shutdown().await;
}
