//! The whole mall over NATS: commands from a plain client, the order flow across contexts, the
//! search read model's queries, and each context's own durable consumers.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::collections::BTreeSet;
use std::time::Duration;

use carrier_mall::ordering::OrderStatus;
use carrier_mall::search::SearchReply;
use carrier_messages::CommandReply;
use carrier_tests::{wait_until, TestEnv};
use futures::StreamExt;

async fn request(bus: &carrier_actors::Bus, subject: &str, json: &str) -> Vec<u8> {
    let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    bus.request(subject, &headers, json.as_bytes().to_vec(), Duration::from_secs(5)).await.expect("answered").to_vec()
}

async fn command(bus: &carrier_actors::Bus, context: &str, json: &str) -> CommandReply {
    let reply: CommandReply =
        serde_json::from_slice(&request(bus, &format!("cmd.{context}"), json).await).expect("a command reply");
    reply
}

async fn search(bus: &carrier_actors::Bus, json: &str) -> SearchReply {
    serde_json::from_slice(&request(bus, "query.search", json).await).expect("a search reply")
}

/// Creates two stores with a product each and registers a customer, all over request/reply.
async fn seed(bus: &carrier_actors::Bus) {
    for (context, json) in [
        ("stores", r#"{"command":"create_store","id":"s1","name":"Waldorf's Wares","location":"North wing"}"#),
        ("stores", r#"{"command":"create_store","id":"s2","name":"Tiny Treasures","location":"South wing"}"#),
        (
            "stores",
            r#"{"command":"add_product","id":"p1","store_id":"s1","name":"Kettle","description":"","sku":"K1","price":2999}"#,
        ),
        (
            "stores",
            r#"{"command":"add_product","id":"p2","store_id":"s2","name":"Music box","description":"","sku":"M1","price":4500}"#,
        ),
        ("customers", r#"{"command":"register_customer","id":"ada","name":"Ada","sms_number":"+15550100"}"#),
    ] {
        let reply = command(bus, context, json).await;
        assert!(reply.ok, "{context} refused {json}: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_checkout_to_completion_through_every_context_and_is_found_by_search() {
    let env = TestEnv::start();
    let system = env.system(&carrier_tests::ALL).await;
    let bus = system.bus.clone();
    seed(&bus).await;

    // The basket: a miss in the baskets caches falls back to the stores owner, so no waiting.
    for json in [
        r#"{"command":"start_basket","id":"b1","customer_id":"ada"}"#,
        r#"{"command":"add_item","id":"b1","product_id":"p1","quantity":3}"#,
        r#"{"command":"add_item","id":"b1","product_id":"p2","quantity":1}"#,
        r#"{"command":"remove_item","id":"b1","product_id":"p1","quantity":1}"#,
    ] {
        let reply = command(&bus, "baskets", json).await;
        assert!(reply.ok, "baskets refused {json}: {reply:?}");
    }
    let too_many =
        command(&bus, "baskets", r#"{"command":"remove_item","id":"b1","product_id":"p1","quantity":5}"#).await;
    assert_eq!(too_many.error.map(|e| e.code), Some("rejected".to_string()), "only what the basket holds");
    let unknown =
        command(&bus, "baskets", r#"{"command":"add_item","id":"b1","product_id":"nope","quantity":1}"#).await;
    assert_eq!(unknown.error.map(|e| e.code), Some("not_found".to_string()));
    let basket = system
        .handle::<carrier_mall::baskets::BasketsHandle>()
        .expect("baskets")
        .db
        .basket("b1")
        .expect("read")
        .expect("basket");
    assert_eq!(
        basket.items.iter().map(|i| (i.product_id.as_str(), i.quantity)).collect::<Vec<_>>(),
        [("p1", 2), ("p2", 1)]
    );
    assert_eq!(basket.items[0].store_name, "Waldorf's Wares", "names come from the caches");
    let checkout = command(&bus, "baskets", r#"{"command":"checkout_basket","id":"b1","payment_id":"pay-1"}"#).await;
    assert!(checkout.ok, "{checkout:?}");

    let depot = system.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    wait_until(Duration::from_secs(30), "the depot makes the shopping list", || {
        let depot = depot.clone();
        async move { depot.db.shopping_list("b1").ok().flatten().is_some() }
    })
    .await;
    let list = depot.db.shopping_list("b1").expect("read").expect("list");
    let stops: Vec<(&str, &str, usize)> =
        list.stops.iter().map(|s| (s.store_name.as_str(), s.store_location.as_str(), s.items.len())).collect();
    assert_eq!(stops, [("Waldorf's Wares", "North wing", 1), ("Tiny Treasures", "South wing", 1)]);
    let done = command(&bus, "depot", r#"{"command":"complete_shopping_list","id":"b1"}"#).await;
    assert!(done.ok, "{done:?}");
    let again = command(&bus, "depot", r#"{"command":"complete_shopping_list","id":"b1"}"#).await;
    assert_eq!(again.error.map(|e| e.code), Some("rejected".to_string()));

    let reply = loop_until_status(&bus, "b1", OrderStatus::Completed).await;
    let order = reply.order.expect("order");
    assert_eq!((order.customer_name.as_str(), order.total), ("Ada", 2 * 2999 + 4500));
    assert_eq!(order.store_ids, ["s1", "s2"]);
    assert_eq!(order.items.iter().map(|i| i.product_name.as_str()).collect::<Vec<_>>(), ["Kettle", "Music box"]);

    let ordering = system.handle::<carrier_mall::ordering::OrderingHandle>().expect("ordering");
    let row = ordering.db.order("b1").expect("read").expect("order");
    assert_eq!((row.status, row.version), (OrderStatus::Completed, 3));
    let payments = system.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
    assert_eq!(payments.db.invoices().expect("read").len(), 1);
    let notifications = system.handle::<carrier_mall::notifications::NotificationsHandle>().expect("notifications");
    let sent: Vec<String> = notifications.db.sent().expect("read").into_iter().map(|(_, n)| n.kind).collect();
    assert_eq!(
        sent.iter().collect::<BTreeSet<_>>(),
        ["order_created", "order_readied"].iter().map(|s| s.to_string()).collect::<Vec<_>>().iter().collect(),
        "one text per order event"
    );
    let cancel = command(&bus, "ordering", r#"{"command":"cancel_order","id":"b1"}"#).await;
    assert_eq!(cancel.error.map(|e| e.code), Some("rejected".to_string()), "a completed order stays completed");

    // A crash and restart redoes nothing: no second text, no second order event.
    drop((ordering, payments, notifications, depot));
    system.kill().await;
    let system = env.system(&carrier_tests::ALL).await;
    let bus = system.bus.clone();
    for json in [
        r#"{"command":"start_basket","id":"b2","customer_id":"ada"}"#,
        r#"{"command":"add_item","id":"b2","product_id":"p2","quantity":1}"#,
        r#"{"command":"checkout_basket","id":"b2","payment_id":"pay-2"}"#,
    ] {
        assert!(command(&bus, "baskets", json).await.ok, "{json}");
    }
    let notifications = system.handle::<carrier_mall::notifications::NotificationsHandle>().expect("notifications");
    wait_until(Duration::from_secs(20), "the restarted system texts about the next order", || {
        let n = notifications.clone();
        async move { n.db.sent().map(|s| s.iter().any(|(_, r)| r.order_id == "b2")).unwrap_or(false) }
    })
    .await;
    assert_eq!(notifications.db.sent().expect("read").len(), 3, "b1's two texts were not sent again");
    drop(notifications);
    assert_eq!(
        system
            .handle::<carrier_mall::ordering::OrderingHandle>()
            .expect("ordering")
            .db
            .order("b1")
            .expect("read")
            .expect("order")
            .version,
        3
    );
    system.shutdown().await;
}

async fn loop_until_status(bus: &carrier_actors::Bus, id: &str, status: OrderStatus) -> SearchReply {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = search(bus, &format!(r#"{{"query":"get_order","id":"{id}"}}"#)).await;
        assert!(reply.ok, "{reply:?}");
        if reply.order.as_ref().is_some_and(|o| o.status == status) {
            return reply;
        }
        assert!(std::time::Instant::now() < deadline, "order {id} never reached {status:?} in search: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_and_pages_and_a_disabled_customer_has_the_order_canceled() {
    let env = TestEnv::start();
    let system = env.system(&carrier_tests::ALL).await;
    let bus = system.bus.clone();
    seed(&bus).await;
    let reply = command(
        &bus,
        "customers",
        r#"{"command":"register_customer","id":"bob","name":"Bob","sms_number":"+15550111"}"#,
    )
    .await;
    assert!(reply.ok);
    // Three orders by Ada (kettles, music box, both), one by Bob.
    let orders = [
        ("o1", "ada", vec![("p1", 1)]),
        ("o2", "ada", vec![("p2", 2)]),
        ("o3", "ada", vec![("p1", 1), ("p2", 1)]),
        ("o4", "bob", vec![("p2", 1)]),
    ];
    for (id, customer, items) in &orders {
        assert!(
            command(
                &bus,
                "baskets",
                &format!(r#"{{"command":"start_basket","id":"{id}","customer_id":"{customer}"}}"#)
            )
            .await
            .ok
        );
        for (product, quantity) in items {
            let add = format!(r#"{{"command":"add_item","id":"{id}","product_id":"{product}","quantity":{quantity}}}"#);
            assert!(command(&bus, "baskets", &add).await.ok);
        }
        assert!(
            command(&bus, "baskets", &format!(r#"{{"command":"checkout_basket","id":"{id}","payment_id":"pay"}}"#))
                .await
                .ok
        );
    }
    for (id, _, _) in &orders {
        loop_until_status(&bus, id, OrderStatus::Pending).await;
    }
    let ids = |reply: &SearchReply| reply.orders.iter().map(|o| o.order_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&search(&bus, r#"{"query":"search_orders","customer_id":"ada"}"#).await), ["o1", "o2", "o3"]);
    assert_eq!(ids(&search(&bus, r#"{"query":"search_orders","store_id":"s1"}"#).await), ["o1", "o3"]);
    assert_eq!(ids(&search(&bus, r#"{"query":"search_orders","product_id":"p2","customer_id":"bob"}"#).await), ["o4"]);
    assert_eq!(ids(&search(&bus, r#"{"query":"search_orders","total_min":7000,"total_max":8000}"#).await), ["o3"]);
    assert_eq!(
        ids(&search(&bus, r#"{"query":"search_orders","created_before":"2000-01-01T00:00:00Z"}"#).await),
        Vec::<String>::new()
    );
    let first = search(&bus, r#"{"query":"search_orders","limit":2}"#).await;
    assert_eq!(
        (ids(&first), first.next_cursor.clone()),
        (vec!["o1".to_string(), "o2".to_string()], Some("o2".to_string()))
    );
    let second = search(&bus, r#"{"query":"search_orders","limit":2,"cursor":"o2"}"#).await;
    assert_eq!((ids(&second), second.next_cursor), (vec!["o3".to_string(), "o4".to_string()], None));
    let bad = search(&bus, r#"{"query":"search_orders","created_after":"yesterday"}"#).await;
    assert_eq!(bad.error.map(|e| e.code), Some("invalid".to_string()));

    // Bob is disabled; once payments knows, his checkout is declined and the order canceled.
    assert!(command(&bus, "customers", r#"{"command":"disable_customer","id":"bob"}"#).await.ok);
    let payments = system.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
    wait_until(Duration::from_secs(20), "payments learns bob is disabled", || {
        let p = payments.clone();
        async move { p.db.customer("bob").ok().flatten().is_some_and(|c| !c.enabled) }
    })
    .await;
    assert!(command(&bus, "baskets", r#"{"command":"start_basket","id":"o5","customer_id":"bob"}"#).await.ok);
    assert!(command(&bus, "baskets", r#"{"command":"add_item","id":"o5","product_id":"p1","quantity":1}"#).await.ok);
    assert!(command(&bus, "baskets", r#"{"command":"checkout_basket","id":"o5","payment_id":"pay"}"#).await.ok);
    loop_until_status(&bus, "o5", OrderStatus::Canceled).await;
    let status = search(&bus, r#"{"query":"search_orders","status":"canceled"}"#).await;
    assert_eq!(ids(&status), ["o5"]);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_context_reads_each_stream_with_its_own_durable_and_sees_every_event() {
    let env = TestEnv::start();
    let system = env.system(&carrier_tests::ALL).await;
    let bus = system.bus.clone();
    seed(&bus).await;
    for id in ["x1", "x2", "x3"] {
        assert!(
            command(&bus, "baskets", &format!(r#"{{"command":"start_basket","id":"{id}","customer_id":"ada"}}"#))
                .await
                .ok
        );
        assert!(
            command(
                &bus,
                "baskets",
                &format!(r#"{{"command":"add_item","id":"{id}","product_id":"p1","quantity":1}}"#)
            )
            .await
            .ok
        );
        assert!(
            command(&bus, "baskets", &format!(r#"{{"command":"checkout_basket","id":"{id}","payment_id":"pay"}}"#))
                .await
                .ok
        );
    }
    // Every reader of ORDERING must see all three OrderCreated: MallBots lost half of the order
    // events because two contexts shared one durable and split its messages.
    let readers = ["depot", "payments", "notifications", "search"];
    wait_until(Duration::from_secs(30), "every reader of ORDERING applied the three orders", || {
        let counts: Vec<u64> = readers
            .iter()
            .map(|c| {
                system
                    .consumers_of(c)
                    .iter()
                    .find(|(s, _)| *s == "ordering")
                    .map(|(_, s)| s.applied.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(0)
            })
            .collect();
        async move { counts.iter().all(|n| *n >= 3) }
    })
    .await;

    // The table the AsyncAPI document and the docs are written from matches what runs.
    for context in carrier_mall::contexts() {
        let mut running: Vec<&str> = system.consumers_of(context.name()).iter().map(|(s, _)| *s).collect();
        let mut declared: Vec<&str> = context.reads().iter().map(|s| s.context).collect();
        running.sort();
        declared.sort();
        assert_eq!(running, declared, "{context:?}");
    }

    let mut durables = Vec::new();
    for stream in ["STORES", "CUSTOMERS", "BASKETS", "ORDERING", "DEPOT", "PAYMENTS", "NOTIFICATIONS"] {
        let stream = bus.jetstream().get_stream(stream).await.expect("stream");
        let mut names = stream.consumer_names();
        while let Some(name) = names.next().await {
            durables.push(name.expect("a consumer name"));
        }
    }
    durables.sort();
    let unique: BTreeSet<&String> = durables.iter().collect();
    assert_eq!(unique.len(), durables.len(), "a durable name is shared: {durables:?}");
    // Every consuming context of the mall may stand by (it follows its own stream) or is a read
    // model: each instance reads every stream through durables of its own.
    let instance = carrier_actors::instance_id(&env.data_dir()).expect("instance id");
    let suffix = carrier_actors::durable_suffix(&instance);
    let mut expected: Vec<String> = [
        "baskets-stores",
        "depot-ordering",
        "depot-stores",
        "notifications-customers",
        "notifications-ordering",
        "ordering-baskets",
        "ordering-depot",
        "ordering-payments",
        "payments-customers",
        "payments-ordering",
        "search-customers",
        "search-ordering",
        "search-stores",
    ]
    .iter()
    .map(|s| format!("{s}-{suffix}"))
    .collect();
    expected.sort();
    assert_eq!(durables, expected);
    system.shutdown().await;
}

/// Any context's commands honour an `Idempotency-Key` header: a command sent again with its
/// key is answered with the first one's event (`replayed`) and decided once; the same key with
/// other parameters is refused; the reply carries the event's payload and a refusal's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_again_with_its_idempotency_key_is_decided_once() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    let bus = system.bus.clone();
    let send_to = |subject: &'static str, json: &'static str, key: &'static str| {
        let bus = bus.clone();
        async move {
            let headers = vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Idempotency-Key".to_string(), key.to_string()),
            ];
            let body = bus.request(subject, &headers, json.as_bytes().to_vec(), Duration::from_secs(5)).await;
            serde_json::from_slice::<CommandReply>(&body.expect("answered")).expect("a command reply")
        }
    };
    let send = |json: &'static str, key: &'static str| send_to("cmd.stores", json, key);
    let create = r#"{"command":"create_store","id":"s1","name":"Waldorf's Wares","location":"North wing"}"#;
    // The same command, its fields in another order: still the same command.
    let reordered = r#"{"location":"North wing","name":"Waldorf's Wares","id":"s1","command":"create_store"}"#;
    let first = send(create, "order-1").await;
    assert!(first.ok && !first.replayed, "{first:?}");
    let event = first.event.clone().expect("the recorded event");
    assert_eq!(event.data.as_ref().and_then(|d| d.get("name")).and_then(|n| n.as_str()), Some("Waldorf's Wares"));
    let again = send(reordered, "order-1").await;
    assert!(again.ok && again.replayed, "{again:?}");
    assert_eq!(again.event.map(|e| e.event_id), Some(event.event_id));
    // Without the key the same command is decided, and refused: the store exists.
    let plain = command(&bus, "stores", create).await;
    assert_eq!(plain.error.map(|e| e.code).as_deref(), Some("already_exists"));
    // The key with other parameters.
    let other = r#"{"command":"create_store","id":"s2","name":"Tiny Treasures","location":"South wing"}"#;
    let reused = send(other, "order-1").await;
    assert_eq!(reused.error.map(|e| e.code).as_deref(), Some("idempotency_key_reused"));
    let db = &system.handle::<carrier_mall::stores::StoresHandle>().expect("stores").db;
    assert!(db.store("s2").expect("read").is_none(), "a refused key decides nothing");
    // A bad key is a bad request.
    let bad = send(create, " ").await;
    assert_eq!(bad.error.map(|e| e.code).as_deref(), Some("bad_request"));
    // A context whose commands look things up before deciding (baskets) says so too.
    let start = r#"{"command":"start_basket","id":"b1","customer_id":"c1"}"#;
    let first = send_to("cmd.baskets", start, "basket-1").await;
    assert!(first.ok && !first.replayed, "{first:?}");
    let again = send_to("cmd.baskets", start, "basket-1").await;
    assert!(again.ok && again.replayed, "{again:?}");
    assert_eq!(again.event.map(|e| e.event_id), first.event.map(|e| e.event_id));
    system.shutdown().await;
}
