//! The customers context: commands over request/reply, events on the CUSTOMERS stream.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::time::Duration;

use carrier_mall::customers::CustomersEvent;
use carrier_messages::CommandReply;
use carrier_messages::Decoded;
use carrier_tests::{wait_until, TestEnv};
use futures::StreamExt;

async fn command(bus: &carrier_actors::Bus, json: &str) -> CommandReply {
    let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let body = bus
        .request("cmd.customers", &headers, json.as_bytes().to_vec(), Duration::from_secs(5))
        .await
        .expect("answered");
    serde_json::from_slice(&body).expect("a command reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_commands_record_events_published_in_order_on_their_stream() {
    let env = TestEnv::start();
    let system = env.system(&["customers"]).await;
    let bus = system.bus.clone();
    let reply = command(&bus, r#"{"command":"register_customer","id":"c1","name":"Ada","sms_number":"+441234"}"#).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.event.as_ref().map(|e| e.aggregate_version), Some(1));
    assert!(command(&bus, r#"{"command":"change_sms_number","id":"c1","sms_number":"+449999"}"#).await.ok);
    assert!(command(&bus, r#"{"command":"disable_customer","id":"c1"}"#).await.ok);
    assert!(command(&bus, r#"{"command":"enable_customer","id":"c1"}"#).await.ok);
    let twice = command(&bus, r#"{"command":"enable_customer","id":"c1"}"#).await;
    assert_eq!(twice.error.map(|e| e.code), Some("rejected".to_string()));
    let bad = command(&bus, r#"{"command":"change_sms_number","id":"c1","sms_number":"call me"}"#).await;
    assert_eq!(bad.error.map(|e| e.code), Some("invalid".to_string()));
    // A correlation id no consumer would accept is refused up front, not recorded.
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Carrier-Correlation-Id".to_string(), "x".repeat(200)),
    ];
    let body = br#"{"command":"disable_customer","id":"c1"}"#.to_vec();
    let reply: CommandReply = serde_json::from_slice(
        &bus.request("cmd.customers", &headers, body, Duration::from_secs(5)).await.expect("answered"),
    )
    .expect("a reply");
    assert_eq!(reply.error.map(|e| e.code), Some("bad_request".to_string()));
    let unknown = command(&bus, r#"{"command":"change_sms_number","id":"nobody","sms_number":"+1234"}"#).await;
    assert_eq!(unknown.error.map(|e| e.code), Some("not_found".to_string()));

    let customers = system.handle::<carrier_mall::customers::CustomersHandle>().expect("customers");
    let db = customers.db.clone();
    wait_until(Duration::from_secs(30), "the outbox is published", || {
        let db = db.clone();
        async move { db.outbox_len().map(|n| n == 0).unwrap_or(false) }
    })
    .await;
    let stream = bus.jetstream().get_stream("CUSTOMERS").await.expect("stream");
    let reader =
        stream.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.expect("reader");
    let mut messages = reader.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let mut seen = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let headers = message.headers.clone().unwrap_or_default();
        let decoded = Decoded::<CustomersEvent>::decode(
            &message.subject,
            |n| headers.get(n).map(|v| v.as_str()),
            &message.payload,
        )
        .expect("a valid customers event");
        seen.push((message.subject.to_string(), decoded.envelope.aggregate_version));
    }
    assert_eq!(
        seen,
        vec![
            ("customers.customer.registered".to_string(), 1),
            ("customers.customer.sms_changed".to_string(), 2),
            ("customers.customer.disabled".to_string(), 3),
            ("customers.customer.enabled".to_string(), 4),
        ]
    );
    let row = customers.db.customer("c1").expect("read").expect("exists");
    assert_eq!((row.sms_number.as_str(), row.enabled, row.version), ("+449999", true, 4));
    system.shutdown().await;
}
