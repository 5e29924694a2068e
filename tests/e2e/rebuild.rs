//! Rebuilding a context's caches from the owners' streams while the old caches keep serving.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carrier_actors::RebuildProgress;
use carrier_mall::stores::StoresCommand;
use carrier_messages::Causality;
use carrier_tests::{wait_until, TestEnv};

const STORES: usize = 300;

fn rows<T: serde::Serialize>(rows: Vec<(String, T, u64)>) -> Vec<(String, serde_json::Value, u64)> {
    rows.into_iter().map(|(id, row, v)| (id, serde_json::to_value(row).expect("row as JSON"), v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refills_the_caches_from_the_streams_while_they_keep_serving_and_events_keep_coming() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    for i in 0..STORES {
        let create =
            StoresCommand::CreateStore { id: format!("s{i}"), name: format!("Store {i}"), location: "Hall".into() };
        stores.execute(create, Causality::default()).await.expect("created");
        let product = StoresCommand::AddProduct {
            id: format!("p{i}"),
            store_id: format!("s{i}"),
            name: format!("Product {i}"),
            description: String::new(),
            sku: format!("SKU{i}"),
            price: 100 + i as i64,
        };
        stores.execute(product, Causality::default()).await.expect("added");
    }
    wait_until(Duration::from_secs(30), "baskets caches every store and product", || {
        let n =
            (baskets.db.stores().map(|s| s.len()).unwrap_or(0), baskets.db.products().map(|p| p.len()).unwrap_or(0));
        async move { n == (STORES, STORES) }
    })
    .await;
    let before = (rows(baskets.db.stores().expect("stores")), rows(baskets.db.products().expect("products")));

    // Readers keep reading, and the owner keeps changing stores, all through the rebuild.
    let done = Arc::new(AtomicBool::new(false));
    let (reads, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (baskets, done, reads, misses) = (baskets.clone(), done.clone(), reads.clone(), misses.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                match baskets.store(&format!("s{}", i % STORES)).await {
                    Ok(Some(_)) => reads.fetch_add(1, Ordering::Relaxed),
                    _ => misses.fetch_add(1, Ordering::Relaxed),
                };
                i += 7;
                tokio::task::yield_now().await;
            }
        })
    };
    let writer = {
        let (stores, done) = (stores.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && n < 200 {
                let rebrand = StoresCommand::RebrandStore { id: format!("s{}", n % 20), name: format!("Renamed {n}") };
                stores.execute(rebrand, Causality::default()).await.expect("rebranded");
                n += 1;
            }
            n
        })
    };

    let progress = Arc::new(Mutex::new(RebuildProgress::default()));
    baskets.rebuild_caches(&system.bus, progress.clone()).await.expect("the rebuild succeeds");
    done.store(true, Ordering::Relaxed);
    let rebrands = writer.await.expect("writer");
    reader.await.expect("reader");

    let p = progress.lock().expect("progress").clone();
    assert_eq!(p.state, "done");
    assert!(p.events >= (2 * STORES) as u64, "every event of the stream was replayed: {p:?}");
    let stores_table = p.tables.iter().find(|t| t.table == "stores_cache").expect("stores_cache swapped");
    assert_eq!((stores_table.before, stores_table.after), (STORES as u64, STORES as u64));
    assert!(reads.load(Ordering::Relaxed) > 0, "the cache was read during the rebuild");
    assert_eq!(misses.load(Ordering::Relaxed), 0, "no read failed or missed during the rebuild");
    assert!(!env.data_dir().join("baskets.rebuild.redb").exists(), "the fresh file is gone");

    // Once the live consumer has applied the last rebrand, the caches equal the owner's state,
    // and the products (untouched since) equal what they were before the rebuild.
    wait_until(Duration::from_secs(30), "the last rebrand reaches the rebuilt cache", || {
        let name = baskets
            .db
            .store(&format!("s{}", (rebrands - 1) % 20))
            .ok()
            .flatten()
            .map(|s| serde_json::to_value(s).expect("json"));
        async move { name.is_some_and(|v| v.to_string().contains(&format!("Renamed {}", rebrands - 1))) }
    })
    .await;
    assert_eq!(rows(baskets.db.products().expect("products")), before.1);
    let owner = stores.db.stores().expect("owner stores");
    let cached = baskets.db.stores().expect("cached stores");
    assert_eq!(cached.len(), owner.len());
    for ((id, row, _), (owner_id, owner_row)) in cached.iter().zip(&owner) {
        assert_eq!(id, owner_id);
        let (cached_json, owner_json) =
            (serde_json::to_value(row).expect("json"), serde_json::to_value(owner_row).expect("json"));
        assert_eq!(cached_json["name"], owner_json["name"], "{id}");
    }
    // A later event still applies once: the versions moved with the rows.
    stores
        .execute(StoresCommand::RebrandStore { id: "s299".into(), name: "After".into() }, Causality::default())
        .await
        .expect("ok");
    wait_until(Duration::from_secs(30), "a new event applies after the swap", || {
        let ok =
            baskets.db.store("s299").ok().flatten().map(|s| serde_json::to_value(s).expect("json")["name"] == "After");
        async move { ok == Some(true) }
    })
    .await;
    // Rebuilding again leaves the inbox's time index holding each inbox entry once (each rebuild
    // used to add a full copy of them).
    baskets
        .rebuild_caches(&system.bus, Arc::new(Mutex::new(RebuildProgress::default())))
        .await
        .expect("a second rebuild succeeds");
    let sizes = carrier_storage::ContextDb::table_sizes(&*baskets.db).expect("table sizes");
    let size = |name: &str| sizes.iter().find(|(t, _)| t == name).map(|(_, n)| *n);
    assert!(size("inbox").is_some_and(|n| n > 0), "{sizes:?}");
    assert_eq!(Some(baskets.db.inbox_indexed().expect("index")), size("inbox"), "{sizes:?}");
    let consumer = baskets.consumer("stores").expect("consumer");
    wait_until(Duration::from_secs(10), "every delivered event was applied or skipped", || {
        let c = consumer.clone();
        async move {
            c.delivered.load(Ordering::Relaxed)
                == c.applied.load(Ordering::Relaxed)
                    + c.duplicates.load(Ordering::Relaxed)
                    + c.stale.load(Ordering::Relaxed)
        }
    })
    .await;
    drop((stores, baskets));
    system.shutdown().await;
}
