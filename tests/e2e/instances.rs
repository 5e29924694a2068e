//! Several instances of Carrier at once: a read model runs on every instance, each with durables
//! of its own, so each keeps a complete copy; one killed mid-stream and started again catches up
//! without applying anything twice. Contexts with effects stay on the one instance holding their
//! lease (`cli::a_second_instance_of_a_context_is_refused_instead_of_splitting_its_stream`).

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::time::Duration;

use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_mall::customers::CustomersCommand;
use carrier_mall::stores::StoresCommand;
use carrier_messages::Causality;
use carrier_tests::{wait_until, TestEnv};

const STORES: usize = 150;

type Rows = Vec<(String, String, u64)>;

fn search_stores(search: &carrier_mall::search::SearchHandle) -> Rows {
    let mut rows: Rows = search
        .db
        .stores()
        .expect("stores")
        .into_iter()
        .map(|(id, row, v)| (id, serde_json::to_string(&row).expect("row"), v))
        .collect();
    rows.sort();
    rows
}

fn owner_stores(stores: &carrier_mall::stores::StoresHandle) -> Vec<String> {
    let mut ids: Vec<String> = stores.db.stores().expect("stores").into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids
}

async fn second_instance(env: &TestEnv, data: &std::path::Path) -> CarrierSystem {
    let contexts = carrier_actors::BoundedContext::select(&carrier_mall::contexts(), &["search"]).expect("search");
    let mut config = SystemConfig::new(env.url(), data, contexts);
    config.ack_wait = Duration::from_secs(2);
    // Its durables go soon after it stops pulling (a retired instance leaves nothing behind).
    config.read_model_idle = Duration::from_secs(2);
    CarrierSystem::start(config).await.expect("a second instance of a read model starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_a_read_model_each_keep_every_event_and_one_killed_mid_stream_catches_up() {
    let env = TestEnv::start();
    let first = env.system(&["stores", "customers", "search"]).await;
    let second_data = tempfile::tempdir().expect("second data dir");
    let second = second_instance(&env, second_data.path()).await;
    let (a, b) = (first.observer().instance(), second.observer().instance());
    assert_ne!(a.durable_suffix, b.durable_suffix, "each instance names its own durables");
    assert_eq!(
        (a.read_models.clone(), b.read_models.clone()),
        (vec!["search".to_string()], vec!["search".to_string()])
    );
    assert_eq!(b.leases, Vec::<String>::new(), "a read model takes no lease");
    assert!(a.leases.contains(&"stores".to_string()), "{a:?}");

    let stores = first.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let customers = first.handle::<carrier_mall::customers::CustomersHandle>().expect("customers");
    let search_a = first.handle::<carrier_mall::search::SearchHandle>().expect("search on the first");
    let search_b = second.handle::<carrier_mall::search::SearchHandle>().expect("search on the second");
    let writer = {
        let (stores, customers) = (stores.clone(), customers.clone());
        tokio::spawn(async move {
            for i in 0..STORES {
                let store = StoresCommand::CreateStore {
                    id: format!("s{i}"),
                    name: format!("Store {i}"),
                    location: "Hall".into(),
                };
                stores.execute(store, Causality::default()).await.expect("store created");
                if i % 10 == 0 {
                    let customer = CustomersCommand::RegisterCustomer {
                        id: format!("c{i}"),
                        name: format!("Customer {i}"),
                        sms_number: "+15550100".into(),
                    };
                    customers.execute(customer, Causality::default()).await.expect("customer registered");
                }
                let rebrand = StoresCommand::RebrandStore { id: format!("s{}", i / 2), name: format!("Renamed {i}") };
                stores.execute(rebrand, Causality::default()).await.expect("rebranded");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Mid-stream: the second instance dies as SIGKILL would end it, and starts again later.
    wait_until(Duration::from_secs(30), "the second instance has part of the stream", || {
        let n = search_b.db.stores().map(|s| s.len()).unwrap_or(0);
        async move { n >= STORES / 4 }
    })
    .await;
    drop(search_b);
    second.kill().await;
    let lost_at = search_stores(&search_a).len();
    assert!(lost_at < STORES, "killed while events still flow");
    writer.await.expect("every command decided");
    let second = second_instance(&env, second_data.path()).await;
    let search_b = second.handle::<carrier_mall::search::SearchHandle>().expect("search on the second again");

    let expected = owner_stores(&stores);
    assert_eq!(expected.len(), STORES);
    wait_until(Duration::from_secs(60), "both instances' search caches equal the owner's stores", || {
        let (a, b) = (search_stores(&search_a), search_stores(&search_b));
        let expected = expected.clone();
        async move { a == b && a.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>() == expected }
    })
    .await;
    // Each store's version is its owner's: nothing applied twice or skipped on either instance.
    let owner_versions: Vec<(String, u64)> = {
        let mut v: Vec<(String, u64)> =
            stores.db.stores().expect("stores").into_iter().map(|(id, row)| (id, row.version)).collect();
        v.sort();
        v
    };
    let versions = |rows: Rows| rows.into_iter().map(|(id, _, v)| (id, v)).collect::<Vec<_>>();
    assert_eq!(versions(search_stores(&search_b)), owner_versions);
    let customers_b = search_b.db.customers().expect("customers").len();
    assert_eq!(customers_b, STORES / 10, "every customer on the second instance too");
    for system in [&first, &second] {
        let report = system.observer().consumers().await;
        let stores_consumer = report.iter().find(|c| c.context == "search" && c.source == "stores").expect("consumer");
        assert!(stores_consumer.durable.ends_with(&system.observer().instance().durable_suffix), "{stores_consumer:?}");
    }
    // Stopped for good, the second instance's own durables are deleted by the server after
    // their idle time; the first's, still pulling, stay.
    let gone = format!("search-stores-{}", second.observer().instance().durable_suffix);
    let kept = format!("search-stores-{}", first.observer().instance().durable_suffix);
    second.shutdown().await;
    wait_until(Duration::from_secs(30), "the stopped instance's durable is deleted", || {
        let (bus, gone) = (first.bus.clone(), gone.clone());
        async move { bus.consumer_info("STORES", &gone).await.is_err() }
    })
    .await;
    assert!(first.bus.consumer_info("STORES", &kept).await.is_ok(), "a running instance keeps its durables");
    first.shutdown().await;
}
