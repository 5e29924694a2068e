//! Fencing: a context whose lease this instance no longer holds stops its effects (consumers
//! hold back, commands are refused) until the lease is its own again.

use std::time::Duration;

use carrier_actors::Health;
use carrier_messages::codec::Causality;
use carrier_messages::stores::StoresCommand;
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

fn fenced(system: &carrier_actors::CarrierSystem, context: &str) -> bool {
    matches!(system.health().get(context), Some(Health::Degraded(reason)) if reason.contains("fenced"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_whose_lease_another_instance_holds_is_fenced_until_the_lease_is_its_own_again() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "depot"]).await;
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let depot = system.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    stores.execute(create("s1"), Causality::default()).await.expect("decided");
    let js = async_nats::jetstream::new(env.plain_client().await);
    let leases = js.get_key_value("carrier_instances").await.expect("the lease bucket");

    // Another instance holds depot's lease (as after this one was cut off past its expiry):
    // depot's consumer holds back (depot reacts to orders with effects; a context that follows
    // itself, like baskets, would keep its caches going), so an event published meanwhile is not applied here.
    leases.put("depot", other_holder()).await.expect("written");
    let observer = system.observer();
    wait_until(Duration::from_secs(20), "depot fenced and its consumer holding back", || {
        let (f, observer) = (fenced(&system, "depot"), observer.clone());
        async move { f && observer.consumers().await.iter().any(|c| c.durable == "depot-stores" && c.held_back) }
    })
    .await;
    assert!(!fenced(&system, "stores"), "only the context whose lease went");
    let leases_seen = observer.all_leases().await;
    let depot_lease = leases_seen.iter().find(|l| l.context == "depot").expect("depot's lease listed");
    assert!(!depot_lease.mine && depot_lease.holder.host == "other-host", "{leases_seen:?}");
    assert!(leases_seen.iter().any(|l| l.context == "stores" && l.mine), "{leases_seen:?}");
    stores.execute(create("s2"), Causality::default()).await.expect("stores still decides");
    wait_until(Duration::from_secs(20), "s2 waits, pending, for depot", || {
        let observer = observer.clone();
        async move {
            let report = observer.consumers().await;
            let c = report.iter().find(|c| c.durable == "depot-stores").expect("depot-stores");
            c.pending == 1 && c.ack_pending == 0
        }
    })
    .await;
    assert!(depot.db.stores().expect("stores").iter().all(|(id, _, _)| id != "s2"), "nothing applied while fenced");
    // Its position is not this instance's to move while fenced.
    let moved = observer.reposition("depot", "stores", carrier_actors::offsets::Reposition::Skip { count: 1 }).await;
    assert!(
        matches!(
            moved,
            Err(carrier_actors::observe::ActionError::Reposition(carrier_actors::offsets::RepositionError::Fenced(_)))
        ),
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
    leases.delete("depot").await.expect("deleted");
    leases.delete("stores").await.expect("deleted");
    wait_until(Duration::from_secs(20), "both fences lifted", || {
        let lifted = !fenced(&system, "stores") && !fenced(&system, "depot");
        async move { lifted }
    })
    .await;
    wait_until(Duration::from_secs(20), "s2 applied once the fence lifted", || {
        let has = depot.db.stores().map(|s| s.iter().any(|(id, _, _)| id == "s2")).unwrap_or(false);
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
    assert_eq!(info.config.max_age, carrier_actors::instance::LEASE_TTL, "leases live the TTL the fence assumes");
    assert!(carrier_actors::instance::FENCE_AFTER < carrier_actors::instance::LEASE_TTL);
    system.shutdown().await;
}
