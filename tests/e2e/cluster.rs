//! A three-node JetStream cluster on loopback: streams with three replicas, and the node leading
//! both the events' stream and the lease bucket SIGKILLed while events and commands flow.

use carrier_mall::prelude::*;
use std::time::Duration;

use carrier_actors::LocalNatsCluster;
use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_mall::stores::StoresCommand;
use carrier_messages::Causality;
use carrier_tests::wait_until;

const STORES: usize = 240;
const KILL_AT: usize = 80;

async fn stream_info(js: &async_nats::jetstream::Context, name: &str) -> Option<async_nats::jetstream::stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

/// The stream's info once the JetStream API answers for it: right after a node dies, the
/// cluster may be electing a meta leader too, and API requests go unanswered meanwhile.
async fn stream_info_eventually(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(info) = stream_info(js, name).await {
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "{name}'s info never answered within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks the stream's leader to step down until `node` leads it (the meta leader picks anew each
/// time).
async fn lead_from(client: &async_nats::Client, js: &async_nats::jetstream::Context, stream: &str, node: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let current = stream_info(js, stream).await.and_then(|i| i.cluster).and_then(|c| c.leader);
        if current.as_deref() == Some(node) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{node} never led {stream} (now {current:?})");
        if current.is_some() {
            // An empty body: the server refuses JSON's `null`.
            let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
            let answer = client.request(subject, bytes::Bytes::new()).await;
            tracing::info!(answer = ?answer.map(|m| m.payload), ?current, "asked {stream}'s leader to step down");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    carrier_tests::init_tracing();
    let mut cluster = LocalNatsCluster::start(3).expect("a three-node cluster starts");
    let addrs: Vec<async_nats::ServerAddr> =
        cluster.nodes.iter().map(|n| n.url().parse().expect("a server address")).collect();
    let client = async_nats::connect(addrs).await.expect("a client connects");
    let js = async_nats::jetstream::new(client.clone());
    // A replicated stream can be made once there is a meta leader and its peers (the account
    // info answer of 2.9 does not parse in current clients, so it cannot be the probe).
    wait_until(Duration::from_secs(30), "the cluster takes a replicated stream", || {
        let js = js.clone();
        async move {
            let probe = async_nats::jetstream::stream::Config {
                name: "PROBE".into(),
                subjects: vec!["probe.>".into()],
                num_replicas: 3,
                ..Default::default()
            };
            js.get_or_create_stream(probe).await.is_ok()
        }
    })
    .await;
    js.delete_stream("PROBE").await.expect("the probe stream goes");

    let data = tempfile::tempdir().expect("data dir");
    let contexts =
        carrier_actors::BoundedContext::select(&carrier_mall::contexts(), &["stores", "baskets"]).expect("contexts");
    let mut config = SystemConfig::new(cluster.urls(), data.path(), contexts);
    config.stream_replicas = Some(3);
    config.ack_wait = Duration::from_secs(2);
    let system = CarrierSystem::start(config).await.expect("carrier starts on the cluster");
    let info = stream_info(&js, "STORES").await.expect("STORES");
    assert_eq!(info.config.num_replicas, 3, "the stream has three replicas");
    let lease = stream_info(&js, "KV_carrier_instances").await.expect("the lease bucket");
    assert_eq!(lease.config.num_replicas, 3, "so has the lease bucket");

    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    let writer = {
        let stores = stores.clone();
        tokio::spawn(async move {
            for i in 0..STORES {
                let create = StoresCommand::CreateStore {
                    id: format!("s{i}"),
                    name: format!("Store {i}"),
                    location: "Hall".into(),
                };
                stores.execute(create, Causality::default()).await.expect("a command is decided whatever NATS does");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_until(Duration::from_secs(30), "some stores cached before the kill", || {
        let n = baskets.db.stores().map(|s| s.len()).unwrap_or(0);
        async move { n >= KILL_AT }
    })
    .await;
    let leader = stream_info(&js, "STORES").await.and_then(|i| i.cluster).and_then(|c| c.leader).expect("a leader");
    // The hardest node to lose leads both the events' stream and the lease bucket: the owner's
    // lease renewals and its outbox both wait for a new leader at once.
    lead_from(&client, &js, "KV_carrier_instances", &leader).await;
    cluster.node_named(&leader).expect("the leader's node").kill();
    tracing::warn!(%leader, "killed the STORES leader's node");

    writer.await.expect("every command decided");
    wait_until(Duration::from_secs(60), "baskets caches every store after the failover", || {
        let n = baskets.db.stores().map(|s| s.len()).unwrap_or(0);
        async move { n == STORES }
    })
    .await;
    let after = stream_info_eventually(&js, "STORES").await;
    let new_leader = after.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a new leader");
    assert_ne!(new_leader, leader, "another node leads the stream");
    assert_eq!(after.state.messages, STORES as u64, "each event stored once (the outbox's retries are de-duplicated)");
    for (id, _, version) in baskets.db.stores().expect("stores") {
        assert_eq!(version, 1, "{id} applied once");
    }
    let consumer = system
        .observer()
        .consumers()
        .await
        .into_iter()
        .find(|c| c.durable.starts_with("baskets-stores-"))
        .expect("baskets' durable on STORES");
    assert_eq!(consumer.counters.applied, STORES as u64, "nothing applied twice: {consumer:?}");

    // The node comes back, catches up, and the three replicas are current again.
    cluster.node_named(&leader).expect("node").restart().expect("the node restarts");
    wait_until(Duration::from_secs(60), "the restarted node's replica is current", || {
        let js = js.clone();
        let leader = leader.clone();
        async move {
            stream_info(&js, "STORES").await.and_then(|i| i.cluster).is_some_and(|c| {
                let peers = c.replicas.iter().map(|p| p.name.clone()).chain(c.leader.clone()).collect::<Vec<_>>();
                peers.contains(&leader) && c.replicas.iter().all(|p| p.current && !p.offline)
            })
        }
    })
    .await;
    let more = StoresCommand::CreateStore { id: "late".into(), name: "Late".into(), location: "Hall".into() };
    stores.execute(more, Causality::default()).await.expect("decided");
    wait_until(Duration::from_secs(20), "an event after the rejoin is cached", || {
        let n = baskets.db.stores().map(|s| s.len()).unwrap_or(0);
        async move { n == STORES + 1 }
    })
    .await;
    system.shutdown().await;
}
