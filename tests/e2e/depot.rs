//! The depot context: its own caches of the same stores stream, through its own durable.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use carrier_mall::stores::StoresCommand;
use carrier_mall::verify::{baskets_against_stores, depot_against_stores};
use carrier_messages::Causality;
use carrier_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depot_and_baskets_each_get_every_stores_event_through_their_own_durable() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets", "depot"]).await;
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let c = Causality::default;
    stores
        .execute(
            StoresCommand::CreateStore { id: "s1".into(), name: "Waldorf's".into(), location: "North wing".into() },
            c(),
        )
        .await
        .expect("ok");
    stores
        .execute(
            StoresCommand::CreateStore { id: "s2".into(), name: "Tiny".into(), location: "South wing".into() },
            c(),
        )
        .await
        .expect("ok");
    for i in 0..20 {
        let add = StoresCommand::AddProduct {
            id: format!("p{i}"),
            store_id: if i % 2 == 0 { "s1".into() } else { "s2".into() },
            name: format!("product {i}"),
            description: String::new(),
            sku: String::new(),
            price: 100,
        };
        stores.execute(add, c()).await.expect("ok");
    }
    stores
        .execute(StoresCommand::RebrandStore { id: "s2".into(), name: "Treasure Trove".into() }, c())
        .await
        .expect("ok");
    stores
        .execute(
            StoresCommand::RebrandProduct { id: "p3".into(), name: "Music box".into(), description: "plays".into() },
            c(),
        )
        .await
        .expect("ok");
    stores.execute(StoresCommand::IncreaseProductPrice { id: "p4".into(), delta: 5 }, c()).await.expect("ok");
    stores.execute(StoresCommand::RemoveProduct { id: "p5".into() }, c()).await.expect("ok");
    let events = 26u64;

    let (owner, baskets, depot) = (
        stores.db.clone(),
        system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets"),
        system.handle::<carrier_mall::depot::DepotHandle>().expect("depot"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut problems = baskets_against_stores(&owner, &baskets.db).expect("readable");
        problems.extend(depot_against_stores(&owner, &depot.db).expect("readable"));
        if problems.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "caches disagree:\n{}", problems.join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s2 = depot.db.store("s2").expect("read").expect("cached");
    assert_eq!((s2.name.as_str(), s2.location.as_str()), ("Treasure Trove", "South wing"));

    // Two contexts sharing one durable would split the stream between them; each must see all.
    // (The counters move just after the commit the caches already show.)
    let (b, d) = (
        baskets.consumer("stores").expect("stores consumer").clone(),
        depot.consumer("stores").expect("stores consumer").clone(),
    );
    carrier_tests::wait_until(Duration::from_secs(10), "both consumers count every event", || {
        let (b, d) = (b.clone(), d.clone());
        async move { b.applied.load(Ordering::Relaxed) >= events && d.applied.load(Ordering::Relaxed) >= events }
    })
    .await;
    assert_eq!(baskets.consumer("stores").expect("stores consumer").applied.load(Ordering::Relaxed), events);
    assert_eq!(depot.consumer("stores").expect("stores consumer").applied.load(Ordering::Relaxed), events);
    let stream = system.bus.jetstream().get_stream("STORES").await.expect("stream");
    let mut names: Vec<String> = Vec::new();
    let mut listing = stream.consumer_names();
    use futures::StreamExt;
    while let Some(name) = listing.next().await {
        names.push(name.expect("a name"));
    }
    names.sort();
    assert_eq!(
        names,
        vec![
            carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id"),
            format!(
                "depot-stores-{}",
                carrier_actors::durable_suffix(&carrier_actors::instance_id(&env.data_dir()).expect("instance id"))
            )
        ],
        "one durable per consuming context (each this instance's own: both may stand by)"
    );
    // And the depot answers lookups from the owner when it misses.
    let found = depot.store("s1").await.expect("answered").expect("exists");
    assert_eq!(found.location, "North wing");
    system.shutdown().await;
}
