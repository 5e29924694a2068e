//! Outside producers, written from docs/wire-contract.md alone: each framing Carrier reads,
//! published with a plain NATS client, ends up in the cache; nothing is dead-lettered.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carrier_tests::{wait_until, TestEnv};
use ciborium::Value;

const CREATED: &str = "stores.store.created";

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writes");
    out
}

fn text(pairs: &[(&str, &str)]) -> Vec<(Value, Value)> {
    pairs.iter().map(|(k, v)| (Value::from(*k), Value::from(*v))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_a_producer_may_send_is_cached_and_a_cloudevent_resent_is_a_duplicate() {
    let env = TestEnv::start();
    let system = env.system(&["baskets"]).await;
    let js = async_nats::jetstream::new(env.plain_client().await);
    let publish = |subject: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in headers {
                h.insert(k, v.as_str());
            }
            js.publish_with_headers(subject, h, body.into()).await.expect("sent").await.expect("stored");
        }
    };

    // 1. Carrier's structured CBOR, built by hand as `cbor2.dumps(event)` would: the payload is
    //    embedded, only Nats-Msg-Id in a header.
    let id = uuid::Uuid::new_v4().to_string();
    let mut event = text(&[
        ("specversion", "1.0"),
        ("id", &id),
        ("source", "/pricing"),
        ("type", "stores.StoreCreated"),
        ("subject", "s-structured"),
        ("time", "2026-12-02T10:00:00Z"),
    ]);
    event.push(("aggregateversion".into(), 1.into()));
    event.push(("data".into(), Value::Map(text(&[("id", "s-structured"), ("name", "Structured"), ("location", "A")]))));
    publish(CREATED, vec![("Nats-Msg-Id", id)], cbor(&Value::Map(event))).await;

    // 2. A CloudEvents SDK's structured JSON: an id that is no UUID, no subject, the version as a
    //    string. Sent twice under different Nats-Msg-Ids, so only Carrier's inbox can drop it.
    let json = br#"{"specversion":"1.0","id":"feed-0001","source":"https://shop.example/feed","type":"stores.StoreCreated","aggregateversion":"1","datacontenttype":"application/json","data":{"id":"s-json","name":"CloudEvents JSON","location":"B"}}"#;
    for dedup in ["first", "second"] {
        let headers =
            vec![("Content-Type", "application/cloudevents+json".to_string()), ("Nats-Msg-Id", dedup.to_string())];
        publish(CREATED, headers, json.to_vec()).await;
    }

    // 3. CloudEvents binary mode: ce- headers, the JSON payload alone in the body.
    let binary = vec![
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", uuid::Uuid::new_v4().to_string()),
        ("ce-source", "/shell".to_string()),
        ("ce-type", "stores.StoreCreated".to_string()),
        ("ce-subject", "s-binary".to_string()),
        ("ce-aggregateversion", "1".to_string()),
        ("Content-Type", "application/json".to_string()),
    ];
    publish(CREATED, binary, br#"{"id":"s-binary","name":"CloudEvents binary","location":"C"}"#.to_vec()).await;

    // 4. Carrier's header framing, as producers written before 0.2 send it: still read.
    let old_id = uuid::Uuid::new_v4().to_string();
    let old = vec![
        ("Nats-Msg-Id", old_id.clone()),
        ("Carrier-Event-Id", old_id),
        ("Carrier-Event-Type", "stores.StoreCreated".to_string()),
        ("Carrier-Aggregate-Id", "s-headers".to_string()),
        ("Carrier-Aggregate-Version", "1".to_string()),
        ("Content-Type", "application/cbor".to_string()),
    ];
    let payload = Value::Map(text(&[("id", "s-headers"), ("name", "Old headers"), ("location", "D")]));
    publish(CREATED, old, cbor(&payload)).await;

    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").clone();
    let stats = baskets.consumer("stores").expect("stores consumer");
    wait_until(Duration::from_secs(30), "all five messages are settled", || {
        let stats = stats.clone();
        async move { stats.acked_stream_seq.load(Ordering::Relaxed) >= 5 }
    })
    .await;
    for (id, name) in [
        ("s-structured", "Structured"),
        ("s-json", "CloudEvents JSON"),
        ("s-binary", "CloudEvents binary"),
        ("s-headers", "Old headers"),
    ] {
        let store = baskets.db.store(id).expect("read").unwrap_or_else(|| panic!("{id} is not cached"));
        assert_eq!(store.name, name);
    }
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0, "nothing was refused");
    assert_eq!(stats.applied.load(Ordering::Relaxed), 4);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1, "the CloudEvent sent twice is applied once");
    system.shutdown().await;
}
