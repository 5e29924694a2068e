//! Versions and the fallback: out-of-order and duplicate deliveries, gaps repaired through the
//! owner, and cache misses answered by the owner, fast failure included while it is down.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use carrier_storage::ContextDb as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use carrier_actors::CarrierSystem;
use carrier_actors::LookupError;
use carrier_actors::{BreakerState, FallbackError};
use carrier_mall::stores::*;
use carrier_mall::verify::baskets_against_stores;
use carrier_messages::{Causality, Decoded};
use carrier_tests::{wait_until, TestEnv};

const LIMIT: Duration = Duration::from_secs(30);

async fn run(system: &CarrierSystem, command: StoresCommand) {
    system
        .handle::<carrier_mall::stores::StoresHandle>()
        .expect("stores")
        .execute(command, Causality::default())
        .await
        .expect("accepted");
}

async fn outbox_drained(system: &CarrierSystem) {
    let db = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db.clone();
    wait_until(LIMIT, "the outbox is published", || {
        let db = db.clone();
        async move { db.outbox_len().map(|n| n == 0).unwrap_or(false) }
    })
    .await;
}

async fn converge(owner: &carrier_mall::stores::StoresDb, cache: &carrier_mall::baskets::BasketsDb) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let problems = baskets_against_stores(owner, cache).expect("readable");
        if problems.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "caches still disagree:\n{}", problems.join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_started_after_the_stream_was_trimmed_repairs_its_gaps_through_the_owner() {
    let env = TestEnv::start();
    let owner = env.system(&["stores"]).await;
    run(&owner, StoresCommand::CreateStore { id: "s".into(), name: "Shop".into(), location: "Hall".into() }).await;
    let add = StoresCommand::AddProduct {
        id: "p".into(),
        store_id: "s".into(),
        name: "Kettle".into(),
        description: String::new(),
        sku: "K".into(),
        price: 1000,
    };
    run(&owner, add).await;
    for _ in 0..5 {
        run(&owner, StoresCommand::IncreaseProductPrice { id: "p".into(), delta: 10 }).await;
    }
    run(&owner, StoresCommand::RebrandStore { id: "s".into(), name: "Shop Two".into() }).await;
    outbox_drained(&owner).await;
    // The first three events (the store's creation, the product's, the first price rise) are gone.
    let stream = owner.bus.jetstream().get_stream("STORES").await.expect("stream");
    let purged = stream.purge().sequence(4).await.expect("purged");
    assert_eq!(purged.purged, 3);

    let mut config = env.config(&["baskets"]);
    config.gap_grace = Duration::from_millis(200);
    let cache = CarrierSystem::start(config).await.expect("starts");
    let baskets = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    converge(&owner.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db, &baskets.db).await;
    assert_eq!(baskets.db.product("p").expect("read").expect("cached").price, 1050);
    assert!(
        baskets.fallback("stores").expect("stores fallback").stats.ok.load(Ordering::Relaxed) >= 2,
        "the owner was asked for the store and the product"
    );
    assert!(baskets.db.gaps().expect("gaps").is_empty());
    cache.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicate_deliveries_end_at_the_owner_state_without_asking_it() {
    let env = TestEnv::start();
    let cache = env.system(&["baskets"]).await;
    let c = Causality::default();
    let added = Decoded::new(
        StoresEvent::ProductAdded(ProductAdded {
            id: "p".into(),
            store_id: "s".into(),
            name: "Kettle".into(),
            description: String::new(),
            sku: String::new(),
            price: 100,
        }),
        1,
        &c,
    );
    let raise = |delta: i64, v: u64| {
        Decoded::new(StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: "p".into(), delta }), v, &c)
    };
    let lower = |delta: i64, v: u64| {
        Decoded::new(StoresEvent::ProductPriceDecreased(ProductPriceDecreased { id: "p".into(), delta }), v, &c)
    };
    let (v2, v3, v4, v5) = (raise(10, 2), lower(3, 3), raise(100, 4), lower(1, 5));
    // Delivered: 1, 3, 2, 2 again (a re-publish), 5, 4, 3 again.
    for event in [&added, &v3, &v2, &v2, &v5, &v4, &v3] {
        let wire = event.encode().expect("encodes");
        let headers: Vec<(String, String)> = wire.headers.into_iter().filter(|(k, _)| k != "Nats-Msg-Id").collect();
        cache.bus.publish_raw(&wire.subject, &headers, wire.body.into()).await.expect("stored");
    }
    let baskets = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(LIMIT, "every event is committed", || {
        let b = baskets.clone();
        // Acknowledged means committed; counting deliveries alone would race the last commit.
        async move {
            b.consumer("stores").expect("stores consumer").acked_stream_seq.load(Ordering::Relaxed) == 7
                && b.db.gaps().map(|g| g.is_empty()).unwrap_or(false)
        }
    })
    .await;
    let product = baskets.db.product("p").expect("read").expect("cached");
    assert_eq!(product.price, 100 + 10 - 3 + 100 - 1, "each change once, in version order");
    let (_, _, version) = baskets.db.products().expect("read").into_iter().next().expect("one");
    assert_eq!(version, 5);
    assert_eq!(baskets.consumer("stores").expect("stores consumer").duplicates.load(Ordering::Relaxed), 2);
    assert_eq!(
        baskets.fallback("stores").expect("stores fallback").stats.ok.load(Ordering::Relaxed)
            + baskets.fallback("stores").expect("stores fallback").stats.failed.load(Ordering::Relaxed),
        0
    );
    cache.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_miss_asks_the_owner_and_a_down_owner_costs_one_fast_failure() {
    let env = TestEnv::start();
    let owner = env.system(&["stores"]).await;
    run(&owner, StoresCommand::CreateStore { id: "far".into(), name: "Far Away".into(), location: "Annex".into() })
        .await;
    outbox_drained(&owner).await;
    // The baskets cache never sees the event: the stream lost it.
    owner.bus.jetstream().get_stream("STORES").await.expect("stream").purge().await.expect("purged");

    let mut config = env.config(&["baskets"]);
    config.fallback.open_for = Duration::from_millis(500);
    config.fallback.timeout = Duration::from_millis(300);
    let cache = CarrierSystem::start(config).await.expect("starts");
    let baskets = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    assert_eq!(baskets.db.store("far").expect("read"), None, "not cached yet");
    let found = baskets.store("far").await.expect("answered by the owner").expect("exists");
    assert_eq!(found.name, "Far Away");
    assert_eq!(baskets.db.store("far").expect("read").map(|s| s.name), Some("Far Away".to_string()), "and cached");
    assert_eq!(baskets.store("nowhere").await.expect("answered"), None);
    assert_eq!(baskets.store("nowhere").await.expect("answered"), None);
    assert_eq!(
        baskets.fallback("stores").expect("stores fallback").stats.negative_hits.load(Ordering::Relaxed),
        1,
        "the second miss was remembered"
    );

    // The owner goes down: a few slow failures open the breaker, then failures are immediate.
    owner.shutdown().await;
    for _ in 0..3 {
        assert!(matches!(baskets.product("p-1").await, Err(LookupError::Fallback(FallbackError::Unavailable { .. }))));
    }
    assert_eq!(baskets.fallback("stores").expect("stores fallback").breaker_state(), BreakerState::Open);
    let started = Instant::now();
    assert!(matches!(baskets.product("p-1").await, Err(LookupError::Fallback(FallbackError::BreakerOpen { .. }))));
    assert!(started.elapsed() < Duration::from_millis(50), "an open breaker fails at once: {:?}", started.elapsed());
    // Cached data is still served while the owner is down.
    assert_eq!(baskets.store("far").await.expect("from the cache").map(|s| s.name), Some("Far Away".to_string()));

    // The owner comes back; after the breaker's pause a trial call closes it again.
    let owner = env.system(&["stores"]).await;
    let add = StoresCommand::AddProduct {
        id: "p-1".into(),
        store_id: "far".into(),
        name: "Telescope".into(),
        description: String::new(),
        sku: String::new(),
        price: 99_00,
    };
    run(&owner, add).await;
    let b = baskets.clone();
    wait_until(LIMIT, "the product is served again", || {
        let b = b.clone();
        async move { matches!(b.product("p-1").await, Ok(Some(p)) if p.price == 99_00) }
    })
    .await;
    // A lookup only the owner can answer: once its pause is over the breaker lets a trial through.
    let b = baskets.clone();
    wait_until(LIMIT, "the owner answers through the fallback again", || {
        let b = b.clone();
        async move { matches!(b.store(&format!("ghost-{}", uuid::Uuid::now_v7())).await, Ok(None)) }
    })
    .await;
    assert_eq!(baskets.fallback("stores").expect("stores fallback").breaker_state(), BreakerState::Closed);
    cache.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_product_takes_no_changes_and_its_id_is_not_reused() {
    let env = TestEnv::start();
    let cache = env.system(&["baskets"]).await;
    let c = Causality::default();
    let added = |id: &str, v: u64, price: i64| {
        let e = ProductAdded {
            id: id.into(),
            store_id: "s".into(),
            name: "Kettle".into(),
            description: String::new(),
            sku: String::new(),
            price,
        };
        Decoded::new(StoresEvent::ProductAdded(e), v, &c)
    };
    let removed = |id: &str| Decoded::new(StoresEvent::ProductRemoved(ProductRemoved { id: id.into() }), 2, &c);
    let raise =
        Decoded::new(StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: "p".into(), delta: 5 }), 3, &c);
    // A producer breaking the contract: a change to p after its removal; q's id added again.
    let events = [added("p", 1, 100), removed("p"), raise, added("q", 1, 100), removed("q"), added("q", 3, 200)];
    for event in &events {
        let wire = event.encode().expect("encodes");
        cache.bus.publish_raw(&wire.subject, &wire.headers, wire.body.into()).await.expect("stored");
    }
    let baskets = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(LIMIT, "every event is acknowledged", || {
        let b = baskets.clone();
        async move { b.consumer("stores").expect("stores consumer").acked_stream_seq.load(Ordering::Relaxed) == 6 }
    })
    .await;
    assert!(baskets.db.product("p").expect("read").is_none(), "removal is final");
    assert!(baskets.db.product("q").expect("read").is_none(), "a removed id is not reused");
    let consumer = baskets.consumer("stores").expect("stores consumer");
    assert_eq!(consumer.dead_lettered.load(Ordering::Relaxed), 2, "the change and the re-add are dead letters");
    let dlq = cache
        .bus
        .jetstream()
        .get_stream(carrier_actors::dead_letter_stream("baskets"))
        .await
        .expect("dead-letter stream");
    let reader = dlq.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("reader");
    use futures::StreamExt as _;
    let mut letters = reader.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let mut errors = Vec::new();
    while let Some(Ok(letter)) = letters.next().await {
        let h = letter.headers.as_ref().expect("headers");
        assert_eq!(h.get(carrier_actors::dead_letter_header::REASON).map(|v| v.as_str()), Some("rejected"));
        errors.push(h.get(carrier_actors::dead_letter_header::ERROR).map(|v| v.to_string()).unwrap_or_default());
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("a removed product takes no further changes"), "{errors:?}");
    assert!(errors[1].contains("is not reused"), "{errors:?}");
    cache.shutdown().await;
}
