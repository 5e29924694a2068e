//! Hot standby of an owner: a second instance of `stores` starts while the first holds the
//! context's lease, follows `STORES` into its own rows, and takes over when the first is
//! SIGKILLed mid-stream; the first, started again, stands by behind it.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carrier_actors::Bus;
use carrier_actors::{CarrierSystem, Health};
use carrier_mall::stores::StoresHandle;
use carrier_tests::browser::Browser;
use carrier_tests::{carrier_bin, http_get, wait_until, CarrierProcess, TestEnv};

const STORES: usize = 200;
const FOLLOWED_BEFORE_KILL: usize = 100;
const KILL_AFTER: usize = 130;

/// A `carrier run` killed when dropped: one left behind by a failed test would go on
/// reconnecting to its port, and join whichever test's server gets that port next.
struct Owner(Child);

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_owner(env: &TestEnv, data: &std::path::Path) -> Owner {
    spawn_first(env, data, "stores")
}

/// `carrier run --contexts <contexts>` on `data`, its log (both streams, at info) in the test's
/// data directory as `first.log`.
fn spawn_first(env: &TestEnv, data: &std::path::Path, contexts: &str) -> Owner {
    let log = File::create(env.data_dir().join("first.log")).expect("log file");
    let child = Command::new(carrier_bin())
        .args(["run", "--contexts", contexts, "--nats-url", &env.url(), "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("carrier run starts");
    Owner(child)
}

/// Waits until the holder of baskets answers with its event's position: it has learnt that
/// another instance stands by (it asks every 2 s), and answers once published.
async fn wait_for_answers_with_positions(bus: &Bus) {
    let probes = AtomicUsize::new(0);
    wait_until(Duration::from_secs(10), "the first answers baskets' commands with a position", || {
        let (bus, n) = (bus.clone(), probes.fetch_add(1, Ordering::SeqCst));
        async move {
            let json = format!(r#"{{"command":"start_basket","id":"probe{n}","customer_id":"c0"}}"#);
            let reply = send(&bus, "baskets", &json, &[]).await;
            reply["position"].as_str().is_some_and(|p| p.starts_with("BASKETS:"))
        }
    })
    .await;
}

/// Creates store `s{i}` as any NATS client would: retried while nobody answers (during the
/// takeover), and done when the store exists (a resend after a reply was lost in the kill).
async fn create_store(bus: &Bus, i: usize) {
    let json = format!(r#"{{"command":"create_store","id":"s{i}","name":"Store {i}","location":"Hall"}}"#);
    send(bus, "stores", &json, &["already_exists"]).await;
}

fn standing_by(system: &CarrierSystem) -> bool {
    matches!(system.health().get("stores"), Some(Health::Degraded(reason)) if reason.contains("standing by"))
}

fn rows(stores: &StoresHandle) -> Vec<(String, String, u64)> {
    let mut rows: Vec<_> =
        stores.db.stores().expect("stores").into_iter().map(|(id, row)| (id, row.name, row.version)).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_stands_by_and_takes_over_with_the_state_when_the_first_is_killed() {
    let env = TestEnv::start();
    let bus = Bus::connect(&env.url(), "standby-test", Duration::from_secs(5)).await.expect("connects");
    let first_data = tempfile::tempdir().expect("first data dir");
    // The first runs alone at first: it answers at the commit.
    let mut first = spawn_owner(&env, first_data.path());
    create_store(&bus, 0).await;

    // The second instance starts instead of refusing, and stands by.
    let second = env.system(&["stores"]).await;
    assert!(standing_by(&second), "{:?}", second.health());
    let report = second.observer().instance();
    assert_eq!((report.standing_by.clone(), report.leases.clone()), (vec!["stores".to_string()], vec![]), "{report:?}");
    // The first learns that someone stands by (it asks every 2 s) and from then on answers a
    // command once its event is published: its reply carries the event's stream position.
    let probes = Arc::new(AtomicUsize::new(0));
    wait_until(Duration::from_secs(10), "the first answers with a position", || {
        let bus = bus.clone();
        let n = probes.fetch_add(1, Ordering::SeqCst);
        async move {
            let json = format!(r#"{{"command":"create_store","id":"probe{n}","name":"Probe","location":"Hall"}}"#);
            let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            let body = bus.request("cmd.stores", &headers, json.as_bytes().to_vec(), Duration::from_secs(2)).await;
            body.ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["position"].as_str().is_some_and(|p| p.starts_with("STORES:")))
        }
    })
    .await;
    let stores = second.handle::<StoresHandle>().expect("stores on the second");
    for i in 1..FOLLOWED_BEFORE_KILL {
        create_store(&bus, i).await;
    }
    wait_until(Duration::from_secs(20), "the standby follows what the first decides", || {
        let n = rows(&stores).iter().filter(|(id, _, _)| id.starts_with('s')).count();
        async move { n == FOLLOWED_BEFORE_KILL }
    })
    .await;
    assert!(standing_by(&second), "still standing by while the first lives");

    // Commands keep coming; the first is SIGKILLed in the middle of them.
    let answered = Arc::new(AtomicUsize::new(FOLLOWED_BEFORE_KILL));
    let writer = {
        let (bus, answered) = (bus.clone(), answered.clone());
        tokio::spawn(async move {
            for i in FOLLOWED_BEFORE_KILL..STORES {
                create_store(&bus, i).await;
                answered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(Duration::from_secs(30), "commands answered before the kill", || {
        let n = answered.load(Ordering::SeqCst);
        async move { n >= KILL_AFTER }
    })
    .await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    let killed = Instant::now();
    writer.await.expect("every command decided by one instance or the other");
    let took_over = killed.elapsed();
    assert!(!standing_by(&second), "the second took over: {:?}", second.health());
    let report = second.observer().instance();
    assert_eq!((report.standing_by.clone(), report.leases.clone()), (vec![], vec!["stores".to_string()]));

    // Every store answered is on the second (while it stood by, the first answered a command
    // only once its event was published), once, at version 1; each event on the stream once.
    // (Alone now, the second answers at the commit: its last events may still be on their way.)
    wait_until(Duration::from_secs(10), "the second's outbox is empty", || {
        let empty = stores.db.outbox_len().expect("outbox") == 0;
        async move { empty }
    })
    .await;
    let all = rows(&stores);
    assert_eq!(all.iter().filter(|(id, _, _)| id.starts_with('s')).count(), STORES, "no answered store lost");
    assert!(all.iter().all(|(_, _, v)| *v == 1), "each decided once");
    let published = bus.stream_message_count("STORES").await.expect("STORES").unwrap_or(0);
    assert_eq!(published, all.len() as u64, "each store's event published once, and followed");

    // The new holder decides on the state it followed: versions go on from the published ones.
    let rebrand = carrier_mall::stores::StoresCommand::RebrandStore { id: "s0".into(), name: "Renamed".into() };
    let decided = stores.execute(rebrand, Default::default()).await.expect("the new holder decides");
    assert_eq!(decided.envelope.aggregate_version, 2);

    // The first, started again, stands by behind the second and follows it from the stream.
    let mut config = env.config(&["stores"]);
    config.data_dir = first_data.path().to_path_buf();
    let again = CarrierSystem::start(config).await.expect("the first starts again");
    assert!(standing_by(&again), "{:?}", again.health());
    let followed = again.handle::<StoresHandle>().expect("stores on the first");
    let expected = rows(&stores);
    wait_until(Duration::from_secs(20), "the restarted first has the second's rows", || {
        let same = rows(&followed) == expected;
        async move { same }
    })
    .await;
    // A store the first decided and was killed before publishing (and so never answered: the
    // client sent it again, and the second decided it) is dead-lettered by the restarted first
    // (reason `deposed`), not published late.
    let letters = bus.dead_letters("stores", 1, 10_000).await.unwrap_or_default();
    let deposed: Vec<String> = letters
        .iter()
        .filter(|l| l.headers.iter().any(|(k, v)| k == "Carrier-Dlq-Reason" && v == "deposed"))
        .filter_map(|l| {
            let decoded = carrier_messages::Decoded::<carrier_mall::stores::StoresEvent>::decode(
                l.headers.iter().find(|(k, _)| k == "Carrier-Dlq-Original-Subject").map(|(_, v)| v.as_str())?,
                |h| l.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)).map(|(_, v)| v.as_str()),
                &l.body,
            );
            decoded.ok().map(|d| d.envelope.aggregate_id)
        })
        .collect();
    assert_eq!(deposed.len(), letters.len(), "every dead letter is a deposed decision that decodes");
    for id in &deposed {
        assert!(expected.iter().any(|(s, _, _)| s == id), "{id} was decided again on the second");
    }
    assert_eq!(bus.stream_message_count("STORES").await.expect("STORES").unwrap_or(0), all.len() as u64 + 1);
    let deposed = deposed.len();
    eprintln!(
        "standby: {STORES} stores, takeover {took_over:?} after the SIGKILL, {deposed} unpublished decisions dead-lettered"
    );
    again.shutdown().await;
    second.shutdown().await;
}

#[test]
fn an_instance_standing_by_says_so_on_its_dashboard_and_is_not_ready() {
    let env = TestEnv::start();
    let (_first, _) = CarrierProcess::run_ready(&env.url(), &env.data_dir(), "stores", &[]);
    let other = tempfile::tempdir().expect("second data dir");
    let data = other.path().to_string_lossy().to_string();
    let mut second = CarrierProcess::spawn(&[
        "run",
        "--contexts",
        "stores",
        "--nats-url",
        &env.url(),
        "--data-dir",
        &data,
        "--dashboard-addr",
        "127.0.0.1:0",
    ]);
    let dashboard = second.dashboard_url(Duration::from_secs(30));
    // Not ready for commands (a load balancer sends them to the holder), saying why.
    let (status, body) = http_get(&format!("{dashboard}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("standing by"), "{body}");
    let browser = Browser::start();
    browser.goto(&format!("{dashboard}/"));
    browser.wait_for(
        Duration::from_secs(15),
        "the header and the leases table showing the standby and the holder",
        r#"return document.querySelector('#instance').textContent.includes('standing by: stores')
            && !!document.querySelector('#leases [data-standby="stores"]')
            && !!document.querySelector('#leases tr[data-context="stores"][data-mine="false"]');"#,
    );
}

/// Sends `json` to `cmd.<context>` as any NATS client would: retried while nobody answers or the
/// context is fenced (during a takeover); the reply once it is decided, or refused with one of
/// `done` (a resend after a reply lost in the kill).
async fn send(bus: &Bus, context: &str, json: &str, done: &[&str]) -> serde_json::Value {
    let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match bus.request(&format!("cmd.{context}"), &headers, json.as_bytes().to_vec(), Duration::from_secs(2)).await {
            Ok(body) => {
                let reply: serde_json::Value = serde_json::from_slice(&body).expect("a command reply");
                match reply.pointer("/error/code").and_then(|c| c.as_str()) {
                    None => return reply,
                    Some(code) if done.contains(&code) => return reply,
                    Some("unavailable") => {}
                    Some(other) => panic!("{json} refused ({other}): {reply}"),
                }
            }
            Err(e) => assert!(Instant::now() < deadline, "{json}: {context} never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn baskets_rows(baskets: &carrier_mall::baskets::BasketsHandle) -> Vec<(String, String, u64)> {
    let mut rows: Vec<_> = baskets
        .db
        .baskets()
        .expect("baskets")
        .into_iter()
        .map(|(id, row)| (id, format!("{:?} {:?}", row.status, row.items), row.version))
        .collect();
    rows.sort();
    rows
}

/// (id, name, price, version) of every product a baskets cache holds.
fn cached_products(baskets: &carrier_mall::baskets::BasketsHandle) -> Vec<(String, String, i64, u64)> {
    let mut rows: Vec<_> =
        baskets.db.products().expect("products").into_iter().map(|(id, p, v)| (id, p.name, p.price, v)).collect();
    rows.sort();
    rows
}

/// (id, name, price, version) of the owner's products.
fn owned_products(stores: &StoresHandle) -> Vec<(String, String, i64, u64)> {
    let mut rows: Vec<_> =
        stores.db.products().expect("products").into_iter().map(|(id, p)| (id, p.name, p.price, p.version)).collect();
    rows.sort();
    rows
}

/// baskets, an owner that also caches another context's stream: the instance standing by keeps
/// its caches of `STORES` through a durable of its own while it follows `BASKETS`, takes both
/// contexts over when the first is SIGKILLed mid-stream, and decides on what it followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baskets_standby_keeps_its_own_caches_and_takes_the_baskets_over() {
    use carrier_mall::baskets::BasketsHandle;
    const BASKETS: usize = 60;
    const KILL_AFTER: usize = 35;
    let env = TestEnv::start();
    let bus = Bus::connect(&env.url(), "standby-test", Duration::from_secs(5)).await.expect("connects");
    let first_data = tempfile::tempdir().expect("first data dir");
    let mut first = spawn_first(&env, first_data.path(), "stores,baskets");
    send(
        &bus,
        "stores",
        r#"{"command":"create_store","id":"s1","name":"Shop","location":"Hall"}"#,
        &["already_exists"],
    )
    .await;
    for p in 1..=4 {
        let json = format!(
            r#"{{"command":"add_product","id":"p{p}","store_id":"s1","name":"Product {p}","description":"","sku":"P{p}","price":{}}}"#,
            100 * p
        );
        send(&bus, "stores", &json, &["already_exists"]).await;
    }

    let second = env.system(&["stores", "baskets"]).await;
    let standing_by = |context: &str| matches!(second.health().get(context), Some(Health::Degraded(reason)) if reason.contains("standing by"));
    assert!(standing_by("stores") && standing_by("baskets"), "{:?}", second.health());
    let (stores, baskets) = (
        second.handle::<StoresHandle>().expect("stores on the second"),
        second.handle::<BasketsHandle>().expect("baskets on the second"),
    );
    // Its caches fill while it stands by, from a durable of its own.
    wait_until(Duration::from_secs(20), "the standby caches the products", || {
        let n = cached_products(&baskets).len();
        async move { n == 4 }
    })
    .await;
    let own = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id");
    let consumers = second.observer().consumers().await;
    let reader = consumers.iter().find(|c| c.context == "baskets" && c.source == "stores").expect("its consumer");
    assert_eq!(reader.durable, own);
    assert!(!reader.held_back, "a standby's caches are not held back: {reader:?}");

    // Baskets with lines, decided by the first once it knows someone stands by (a reply with a
    // position), followed by the second.
    wait_for_answers_with_positions(&bus).await;
    for i in 0..BASKETS / 2 {
        send(&bus, "baskets", &format!(r#"{{"command":"start_basket","id":"b{i}","customer_id":"c{i}"}}"#), &[]).await;
        let p = 1 + i % 4;
        let add = format!(r#"{{"command":"add_item","id":"b{i}","product_id":"p{p}","quantity":{}}}"#, 1 + i % 3);
        send(&bus, "baskets", &add, &[]).await;
    }
    // A price changes: the caches of both instances follow it.
    send(&bus, "stores", r#"{"command":"increase_product_price","id":"p2","delta":5}"#, &[]).await;

    // More baskets start; the first is SIGKILLed among them.
    let answered = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (bus, answered) = (bus.clone(), answered.clone());
        tokio::spawn(async move {
            for i in BASKETS / 2..BASKETS {
                let json = format!(r#"{{"command":"start_basket","id":"b{i}","customer_id":"c{i}"}}"#);
                send(&bus, "baskets", &json, &["already_exists"]).await;
                answered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(Duration::from_secs(30), "baskets started before the kill", || {
        let n = answered.load(Ordering::SeqCst);
        async move { n >= KILL_AFTER - BASKETS / 2 }
    })
    .await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    let killed = Instant::now();
    writer.await.expect("every basket started by one instance or the other");
    let took_over = killed.elapsed();
    // Each context claims its lease on its own (every 2 s): stores may follow baskets a moment later.
    wait_until(Duration::from_secs(20), "the second holds stores and baskets", || {
        let holds = !standing_by("baskets") && !standing_by("stores");
        async move { holds }
    })
    .await;

    // Every basket answered is on the second, once, with its lines; each event on BASKETS once.
    wait_until(Duration::from_secs(10), "the second's outboxes are empty", || {
        let empty = baskets.db.outbox_len().expect("outbox") == 0 && stores.db.outbox_len().expect("outbox") == 0;
        async move { empty }
    })
    .await;
    let rows = baskets_rows(&baskets);
    let started: Vec<&(String, String, u64)> = rows.iter().filter(|(id, _, _)| id.starts_with('b')).collect();
    assert_eq!(started.len(), BASKETS, "no answered basket lost");
    for (id, lines, version) in &started {
        let i: usize = id[1..].parse().expect("b<i>");
        let expected = if i < BASKETS / 2 { 2 } else { 1 };
        assert_eq!(*version, expected, "{id} decided once per command: {lines}");
        if i < BASKETS / 2 {
            let p = 1 + i % 4;
            assert!(
                lines.contains(&format!("product_id: \"p{p}\"")) && lines.contains(&format!("quantity: {}", 1 + i % 3)),
                "{id}'s line followed: {lines}"
            );
        }
    }
    let events: u64 = rows.iter().map(|(_, _, v)| v).sum();
    assert_eq!(bus.stream_message_count("BASKETS").await.expect("BASKETS").unwrap_or(0), events, "each event once");
    // The caches equal the owner (whose rows the second followed too), the price change included.
    assert_eq!(cached_products(&baskets), owned_products(&stores));
    assert!(cached_products(&baskets).iter().any(|(id, _, price, v)| id == "p2" && *price == 205 && *v == 2));

    // The new holder decides on what it followed: b0's next line is its version 3, priced from
    // its own cache.
    let add = r#"{"command":"add_item","id":"b0","product_id":"p2","quantity":1}"#;
    let reply = send(&bus, "baskets", add, &[]).await;
    assert_eq!(reply["event"]["aggregate_version"], serde_json::json!(3), "{reply}");
    let b0 = baskets.db.basket("b0").expect("read").expect("b0");
    assert_eq!(b0.items.iter().find(|l| l.product_id == "p2").map(|l| l.price), Some(205));

    // The first, started again, stands by behind the second: the same baskets, its own caches.
    let mut config = env.config(&["stores", "baskets"]);
    config.data_dir = first_data.path().to_path_buf();
    let again = CarrierSystem::start(config).await.expect("the first starts again");
    let followed = again.handle::<BasketsHandle>().expect("baskets on the first");
    let expected = baskets_rows(&baskets);
    wait_until(Duration::from_secs(30), "the restarted first has the second's baskets and caches", || {
        let same = baskets_rows(&followed) == expected && cached_products(&followed) == owned_products(&stores);
        async move { same }
    })
    .await;
    eprintln!("baskets standby: {BASKETS} baskets, takeover {took_over:?} after the SIGKILL");
    again.shutdown().await;
    second.shutdown().await;
}

/// The rows of every context that a standby takes over, as text: what two instances must agree on.
fn state_of(system: &CarrierSystem) -> Vec<String> {
    let mut out = Vec::new();
    let stores = system.handle::<StoresHandle>().expect("stores");
    out.extend(stores.db.stores().expect("stores").into_iter().map(|r| format!("store {r:?}")));
    out.extend(stores.db.products().expect("products").into_iter().map(|r| format!("product {r:?}")));
    let customers = system.handle::<carrier_mall::customers::CustomersHandle>().expect("customers");
    out.extend(customers.db.customers().expect("customers").into_iter().map(|r| format!("customer {r:?}")));
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    out.extend(baskets.db.baskets().expect("baskets").into_iter().map(|r| format!("basket {r:?}")));
    let ordering = system.handle::<carrier_mall::ordering::OrderingHandle>().expect("ordering");
    out.extend(ordering.db.orders().expect("orders").into_iter().map(|r| format!("order {r:?}")));
    let depot = system.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    out.extend(depot.db.shopping_lists().expect("lists").into_iter().map(|r| format!("list {r:?}")));
    let payments = system.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
    out.extend(payments.db.invoices().expect("invoices").into_iter().map(|r| format!("invoice {r:?}")));
    let notifications = system.handle::<carrier_mall::notifications::NotificationsHandle>().expect("notifications");
    out.extend(notifications.db.sent().expect("sent").into_iter().map(|r| format!("text {r:?}")));
    out.sort();
    out
}

/// Every difference between an instance's caches and the owners' rows it holds.
fn cache_problems(system: &CarrierSystem) -> Vec<String> {
    let stores = system.handle::<StoresHandle>().expect("stores");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    let depot = system.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    let mut problems = carrier_mall::verify::baskets_against_stores(&stores.db, &baskets.db).expect("compared");
    problems.extend(carrier_mall::verify::depot_against_stores(&stores.db, &depot.db).expect("compared"));
    let customers = system.handle::<carrier_mall::customers::CustomersHandle>().expect("customers");
    let owned: Vec<(String, bool, String, u64)> = customers
        .db
        .customers()
        .expect("customers")
        .into_iter()
        .map(|(id, c)| (id, c.enabled, c.sms_number, c.version))
        .collect();
    let payments = system.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
    let paying: Vec<(String, bool, u64)> =
        payments.db.customers().expect("cache").into_iter().map(|(id, c, v)| (id, c.enabled, v)).collect();
    if paying != owned.iter().map(|(id, e, _, v)| (id.clone(), *e, *v)).collect::<Vec<_>>() {
        problems.push(format!("payments' customers {paying:?} differ from the owner's {owned:?}"));
    }
    let notifications = system.handle::<carrier_mall::notifications::NotificationsHandle>().expect("notifications");
    let texting: Vec<(String, String, u64)> =
        notifications.db.customers().expect("cache").into_iter().map(|(id, c, v)| (id, c.sms_number, v)).collect();
    if texting != owned.iter().map(|(id, _, s, v)| (id.clone(), s.clone(), *v)).collect::<Vec<_>>() {
        problems.push(format!("notifications' customers {texting:?} differ from the owner's {owned:?}"));
    }
    problems
}

/// The issue's test: two instances of every context, the first SIGKILLed in the middle of a
/// stream of checkouts and completed shopping lists. The second takes every context over with
/// what was published; nothing is lost or applied twice, each text is sent once, every cache
/// equals its owner; the first, started again later, stands by with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_every_context_lose_nothing_and_send_each_text_once_when_one_is_killed() {
    use carrier_mall::ordering::OrderStatus;
    use carrier_mall::ordering::OrderingHandle;
    const ORDERS: usize = 40;
    const KILL_AFTER: usize = 16;
    const DISABLED: [usize; 2] = [2, 5];
    let env = TestEnv::start();
    let bus = Bus::connect(&env.url(), "standby-test", Duration::from_secs(5)).await.expect("connects");
    let first_data = tempfile::tempdir().expect("first data dir");
    let mut first = spawn_first(&env, first_data.path(), &carrier_tests::ALL.join(","));
    let seed = [
        ("stores", r#"{"command":"create_store","id":"s1","name":"Shop","location":"Hall"}"#.to_string()),
        ("stores", r#"{"command":"create_store","id":"s2","name":"Kiosk","location":"Gate"}"#.to_string()),
        (
            "stores",
            r#"{"command":"add_product","id":"p1","store_id":"s1","name":"Tea","description":"","sku":"T","price":300}"#
                .to_string(),
        ),
        (
            "stores",
            r#"{"command":"add_product","id":"p2","store_id":"s2","name":"Jam","description":"","sku":"J","price":450}"#
                .to_string(),
        ),
    ];
    for (context, json) in &seed {
        send(&bus, context, json, &["already_exists"]).await;
    }
    for c in 0..6 {
        let json = format!(r#"{{"command":"register_customer","id":"c{c}","name":"C{c}","sms_number":"+1555010{c}"}}"#);
        send(&bus, "customers", &json, &["already_exists"]).await;
    }
    for c in DISABLED {
        send(&bus, "customers", &format!(r#"{{"command":"disable_customer","id":"c{c}"}}"#), &[]).await;
    }

    // The second instance: every context stands by (search, a read model, runs on both).
    let second = env.system(&carrier_tests::ALL).await;
    let standing: Vec<String> = second.observer().instance().standing_by.clone();
    assert_eq!(standing.len(), 7, "every context with effects stands by: {standing:?}");
    // The first learns that someone stands by (it asks every 2 s): its answers then wait for
    // publication and carry the event's position.
    wait_for_answers_with_positions(&bus).await;

    // The baskets, filled before anything is killed (a resent add_item would add twice).
    for i in 0..ORDERS {
        let (c, p) = (i % 6, 1 + i % 2);
        send(&bus, "baskets", &format!(r#"{{"command":"start_basket","id":"o{i}","customer_id":"c{c}"}}"#), &[]).await;
        let add = format!(r#"{{"command":"add_item","id":"o{i}","product_id":"p{p}","quantity":2}}"#);
        send(&bus, "baskets", &add, &[]).await;
    }

    // Checkouts and the bots' completed lists flow; the first is killed among them. A resend
    // after a reply lost in the kill is refused as already done (`rejected`).
    let checked_out = Arc::new(AtomicUsize::new(0));
    let checkouts = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let shopper = {
        let (bus, checked_out, checkouts) = (bus.clone(), checked_out.clone(), checkouts.clone());
        tokio::spawn(async move {
            for i in 0..ORDERS {
                let json = format!(r#"{{"command":"checkout_basket","id":"o{i}","payment_id":"pay-{i}"}}"#);
                let reply = send(&bus, "baskets", &json, &["rejected"]).await;
                checkouts.lock().expect("checkouts").push(format!("o{i}: {reply}"));
                checked_out.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let bots = {
        let (bus, answers) = (bus.clone(), answers.clone());
        tokio::spawn(async move {
            for i in (0..ORDERS).filter(|i| !DISABLED.contains(&(i % 6))) {
                // A list exists once depot reacted to the order (on whichever instance holds it).
                let json = format!(r#"{{"command":"complete_shopping_list","id":"o{i}"}}"#);
                let deadline = Instant::now() + Duration::from_secs(150);
                loop {
                    let reply = send(&bus, "depot", &json, &["not_found", "rejected"]).await;
                    match reply.pointer("/error/code").and_then(|c| c.as_str()) {
                        Some("not_found") => {
                            if Instant::now() > deadline {
                                return Err(format!("o{i}'s list never appeared"));
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => {
                            answers.lock().expect("answers").push(format!("o{i}: {reply}"));
                            break;
                        }
                    }
                }
            }
            Ok(())
        })
    };
    wait_until(Duration::from_secs(60), "checkouts before the kill", || {
        let n = checked_out.load(Ordering::SeqCst);
        async move { n >= KILL_AFTER }
    })
    .await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    let killed = Instant::now();
    shopper.await.expect("every basket checked out by one instance or the other");
    let bots = bots.await.expect("the bots ran");

    // Every order settles on the second: completed, or canceled for the disabled customers.
    let ordering = second.handle::<OrderingHandle>().expect("ordering");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let orders = ordering.db.orders().unwrap_or_default();
        let unsettled: Vec<String> = orders
            .iter()
            .filter(|(id, o)| {
                let i: usize = id[1..].parse().unwrap_or(0);
                let want = if DISABLED.contains(&(i % 6)) { OrderStatus::Canceled } else { OrderStatus::Completed };
                o.status != want
            })
            .map(|(id, o)| format!("{id}: {:?} v{}", o.status, o.version))
            .collect();
        if orders.len() == ORDERS && unsettled.is_empty() {
            break;
        }
        if Instant::now() > deadline || bots.is_err() {
            // What a failure needs to be understood: who answered what, and the first's warnings.
            let depot = second.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
            let payments = second.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
            let consumers = second.observer().consumers().await;
            let log = std::fs::read_to_string(env.data_dir().join("first.log")).unwrap_or_default();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
            eprintln!("bots: {bots:?}\nthe first's warnings:\n{}", warnings.join("\n"));
            eprintln!("the bots' answers: {:#?}", answers.lock().expect("answers"));
            eprintln!("the checkouts' answers: {:#?}", checkouts.lock().expect("checkouts"));
            panic!(
                "orders not settled: {} of {ORDERS} exist, unsettled {unsettled:?}\nlists {:?}\ninvoices {:?}\nconsumers {:#?}\nhealth {:?}",
                orders.len(),
                depot.db.shopping_lists().expect("lists").iter().map(|(id, l)| format!("{id}:{:?}", l.status)).collect::<Vec<_>>(),
                payments.db.invoices().expect("invoices").iter().map(|(id, i)| format!("{id}:{:?}", i.status)).collect::<Vec<_>>(),
                consumers.iter().map(|c| format!("{} {} pending {} ackp {} held {} dl {} applied {}", c.context, c.source, c.pending, c.ack_pending, c.counters.held_for_holder, c.counters.dead_lettered, c.counters.applied)).collect::<Vec<_>>(),
                second.health(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = killed.elapsed();
    assert!(second.observer().instance().standing_by.is_empty(), "the second holds everything");
    let notifications = second.handle::<carrier_mall::notifications::NotificationsHandle>().expect("notifications");
    let outboxes_empty = || {
        let s = &second;
        let handles_empty = [
            s.handle::<StoresHandle>().expect("h").db.outbox_len().expect("o"),
            s.handle::<carrier_mall::baskets::BasketsHandle>().expect("h").db.outbox_len().expect("o"),
            ordering.db.outbox_len().expect("o"),
            s.handle::<carrier_mall::depot::DepotHandle>().expect("h").db.outbox_len().expect("o"),
            s.handle::<carrier_mall::payments::PaymentsHandle>().expect("h").db.outbox_len().expect("o"),
            notifications.db.outbox_len().expect("o"),
        ];
        handles_empty.iter().all(|n| *n == 0)
    };
    wait_until(Duration::from_secs(30), "texts sent and every outbox published", || {
        let done = notifications.db.sent().map(|s| s.len() == 2 * ORDERS).unwrap_or(false) && outboxes_empty();
        async move { done }
    })
    .await;

    // Each text exactly once: two per order (created, then readied or canceled), on the stream
    // once each, with nothing else.
    let sent = notifications.db.sent().expect("sent");
    let mut kinds: Vec<(String, String)> = sent.iter().map(|(_, t)| (t.order_id.clone(), t.kind.clone())).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 2 * ORDERS, "one text per order event: {kinds:?}");
    assert_eq!(bus.stream_message_count("NOTIFICATIONS").await.expect("stream").unwrap_or(0), 2 * ORDERS as u64);
    // Each event of every context once: a stream holds as many events as its entities' versions add up to.
    let versions = |rows: Vec<u64>| rows.into_iter().sum::<u64>();
    let payments = second.handle::<carrier_mall::payments::PaymentsHandle>().expect("payments");
    let depot = second.handle::<carrier_mall::depot::DepotHandle>().expect("depot");
    let baskets = second.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    for (stream, total) in [
        ("ORDERING", versions(ordering.db.orders().expect("o").into_iter().map(|(_, o)| o.version).collect())),
        ("DEPOT", versions(depot.db.shopping_lists().expect("l").into_iter().map(|(_, l)| l.version).collect())),
        ("PAYMENTS", versions(payments.db.invoices().expect("i").into_iter().map(|(_, i)| i.version).collect())),
        ("BASKETS", versions(baskets.db.baskets().expect("b").into_iter().map(|(_, b)| b.version).collect())),
    ] {
        assert_eq!(bus.stream_message_count(stream).await.expect("stream").unwrap_or(0), total, "{stream}");
    }
    let problems = cache_problems(&second);
    assert!(problems.is_empty(), "the second's caches differ from the owners: {problems:?}");

    // The first, started again, stands by behind the second and ends with the same state.
    let mut config = env.config(&carrier_tests::ALL);
    config.data_dir = first_data.path().to_path_buf();
    let again = CarrierSystem::start(config).await.expect("the first starts again");
    assert_eq!(again.observer().instance().standing_by.len(), 7);
    let expected = state_of(&second);
    wait_until(Duration::from_secs(60), "the restarted first has the second's state and caches", || {
        let same = state_of(&again) == expected && cache_problems(&again).is_empty();
        async move { same }
    })
    .await;
    eprintln!("every context: {ORDERS} orders, all settled {took_over:?} after the SIGKILL");
    again.shutdown().await;
    second.shutdown().await;
}
