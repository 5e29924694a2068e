//! Seed 004 on a real nats-server: the event store's optimistic concurrency between writers,
//! snapshots and upcasting, the event bus's `publish_sync`, `wait` and dead letters, Whisko's
//! HTTP API with read-your-writes, and `carrier whisko` killed 20 times mid-stream with every
//! projection and the mail list equal to a fold of the streams afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carrier_actors::Bus;
use carrier_actors::{EventBus, EventBusSettings, HandlerError};
use carrier_actors::{EventStore, EventStoreSettings};
use carrier_actors::{Position, SystemConfig};
use carrier_messages::Causality;
use carrier_messages::IdempotencyKey;
use carrier_messages::{domain_events, Decoded, Validate};
use carrier_storage::{CommandError, Rows};
use carrier_tests::{http, wait_until, CarrierProcess, TestEnv};
use carrier_whisko::events::UsersEvent;
use carrier_whisko::users::{User, UsersCommand};
use carrier_whisko::Whisko;
use serde_json::{json, Value};

async fn bus(env: &TestEnv, name: &str) -> Bus {
    Bus::connect(env.url(), name, Duration::from_secs(5)).await.expect("connects")
}

fn create(id: &str) -> UsersCommand {
    UsersCommand::CreateUser {
        id: id.into(),
        name: "Ana".into(),
        email: "ana@whisko.example".into(),
        phone: String::new(),
        address: String::new(),
    }
}

fn rename(id: &str, n: usize) -> UsersCommand {
    UsersCommand::UpdateProfile { id: id.into(), name: format!("Ana {n}"), address: format!("Street {n}") }
}

/// Every event of `id` in the stream, in stream order: (sequence, version).
async fn history(bus: &Bus, id: &str) -> Vec<(u64, u64)> {
    let subject = EventStore::<User>::subject(id);
    let last = bus.last_on_subject("USERS", &subject).await.expect("reads");
    let mut out = Vec::new();
    bus.read_subject("USERS", &subject, 1, last, |m| {
        for e in Decoded::<UsersEvent>::decode_all(&m.subject, |n| m.header(n), &m.payload).expect("decodes") {
            out.push((m.stream_seq, e.envelope.aggregate_version));
        }
    })
    .await
    .expect("reads");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_on_one_aggregate_never_both_win_a_version() {
    let env = TestEnv::start();
    // Two writers with connections and in-memory caches of their own, as two processes have.
    let settings = EventStoreSettings { snapshot_every: 0, conflict_retries: 20, ..Default::default() };
    let a = EventStore::<User>::open(bus(&env, "writer-a").await, settings).await.expect("opens");
    let b = EventStore::<User>::open(bus(&env, "writer-b").await, settings).await.expect("opens");
    a.execute(create("u1"), Causality::default()).await.expect("created");
    b.load("u1").await.expect("b loads it");

    let mut tasks = Vec::new();
    for (writer, store) in [("a", a.clone()), ("b", b.clone())] {
        for n in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let decided =
                    store.execute(rename("u1", n), Causality::default()).await.expect("decided, after retries");
                (writer, decided.event.envelope.aggregate_version)
            }));
        }
    }
    let mut versions = BTreeSet::new();
    for task in tasks {
        let (_, version) = task.await.expect("joins");
        assert!(versions.insert(version), "version {version} was answered to two commands");
    }
    assert_eq!(versions, (2..=41).collect::<BTreeSet<u64>>());
    let conflicts = a.stats().conflicts.load(std::sync::atomic::Ordering::Relaxed)
        + b.stats().conflicts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(conflicts > 0, "the writers raced without one conflict: the test proved nothing");
    // The stream holds each version once, in order.
    let stored: Vec<u64> = history(&bus(&env, "reader").await, "u1").await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(stored, (1..=41).collect::<Vec<u64>>());

    // Without retries, a loser is told `conflict` and stores nothing.
    let strict = EventStoreSettings { conflict_retries: 0, ..settings };
    let c = EventStore::<User>::open(bus(&env, "writer-c").await, strict).await.expect("opens");
    c.load("u1").await.expect("loads");
    let stale = c.clone();
    c.execute(rename("u1", 100), Causality::default()).await.expect("c is current");
    a.execute(rename("u1", 101), Causality::default()).await.expect("a reloads and wins");
    let lost = stale.execute(rename("u1", 102), Causality::default()).await;
    match lost {
        Err(CommandError::Refused { code: "conflict", .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stored: Vec<u64> = history(&bus(&env, "reader").await, "u1").await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(stored, (1..=43).collect::<Vec<u64>>(), "the losing command stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_command_is_answered_with_what_it_stored_on_any_instance() {
    let env = TestEnv::start();
    let settings = EventStoreSettings { snapshot_every: 0, ..Default::default() };
    let a = EventStore::<User>::open(bus(&env, "a").await, settings).await.expect("opens");
    let b = EventStore::<User>::open(bus(&env, "b").await, settings).await.expect("opens");
    let command = create("u2");
    let key = || Causality {
        idempotency: Some(IdempotencyKey::for_command("k-1", &create("u2")).unwrap()),
        ..Default::default()
    };
    let first = a.execute(command.clone(), key()).await.expect("stored");
    assert!(!first.replayed);
    // Another instance, which never saw it: it loads the aggregate, finds the key in its history.
    let again = b.execute(command, key()).await.expect("answered");
    assert!(again.replayed);
    assert_eq!(again.event.envelope.event_id, first.event.envelope.event_id);
    assert_eq!(again.position, first.position);
    // The same key with other parameters is refused.
    let other = Causality {
        idempotency: Some(IdempotencyKey::for_command("k-1", &rename("u2", 1)).unwrap()),
        ..Default::default()
    };
    assert!(matches!(
        b.execute(rename("u2", 1), other).await,
        Err(CommandError::Refused { code: "idempotency_key_reused", .. })
    ));
    assert_eq!(history(&bus(&env, "reader").await, "u2").await.len(), 1, "nothing was stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_shorten_loads_and_one_that_no_longer_decodes_is_ignored() {
    let env = TestEnv::start();
    let settings = EventStoreSettings { snapshot_every: 100, ..Default::default() };
    let store = EventStore::<User>::open(bus(&env, "w").await, settings).await.expect("opens");
    store.execute(create("long"), Causality::default()).await.expect("created");
    for n in 0..249 {
        store.execute(rename("long", n), Causality::default()).await.expect("renamed");
    }
    // Snapshots are written in the background at versions 100 and 200.
    let reader = EventStore::<User>::open(bus(&env, "r").await, settings).await.expect("opens");
    wait_until(Duration::from_secs(10), "the snapshot at version 200 is written", || {
        let reader = reader.clone();
        async move { reader.load("long").await.map(|l| l.from_snapshot && l.replayed == 50).unwrap_or(false) }
    })
    .await;
    let loaded = reader.load("long").await.expect("loads");
    assert_eq!((loaded.version, loaded.state.name.as_str()), (250, "Ana 248"));
    let full = reader.load_with("long", false).await.expect("loads");
    assert_eq!((full.version, full.replayed, full.state), (250, 250, loaded.state.clone()));

    // A snapshot written by a build whose state no longer decodes: ignored, events replayed.
    reader.put_raw_snapshot("long", b"\xa1\x61x\x01".to_vec()).await.expect("written");
    let loaded = reader.load("long").await.expect("loads despite the snapshot");
    assert!(!loaded.from_snapshot);
    assert_eq!((loaded.version, loaded.replayed), (250, 250));
    assert!(reader.stats().snapshots_ignored.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_at_schema_version_1_is_read_as_version_2() {
    let env = TestEnv::start();
    let dir = env.data_dir();
    let whisko = Whisko::start(SystemConfig::new(env.url(), &dir, carrier_whisko::contexts())).await.expect("starts");
    // A UserCreated as version 1 wrote it: `full_name`, not `name`.
    let payload = carrier_messages::cbor::to_vec(&json!({
        "id": "old-1", "full_name": "Old Timer", "email": "old@whisko.example", "phone": "", "address": "Hanoi"
    }))
    .unwrap();
    let envelope = carrier_messages::Envelope {
        event_id: carrier_messages::EventId::new(),
        event_type: "users.UserCreated".into(),
        schema_version: 1,
        aggregate_id: "old-1".into(),
        aggregate_version: 1,
        occurred_at_unix_nanos: 1_700_000_000_000_000_000,
        correlation_id: "c".into(),
        causation_id: None,
        content_type: carrier_messages::ContentType::Cbor,
        traceparent: None,
    };
    let body = carrier_messages::encode_structured(&envelope, "/carrier/users", &payload);
    let headers = vec![("Nats-Msg-Id".to_string(), envelope.event_id.to_string())];
    whisko.system.bus.publish_raw("users.user.old-1", &headers, body.into()).await.expect("stored");

    let loaded = whisko.users.load("old-1").await.expect("the v1 event is upcast");
    assert_eq!((loaded.state.name.as_str(), loaded.version), ("Old Timer", 1));
    let renamed = whisko.users.execute(rename("old-1", 1), Causality::default()).await.expect("decided on it");
    assert_eq!(renamed.event.envelope.aggregate_version, 2);
    let position: Position = renamed.position.unwrap().parse().unwrap();
    whisko.user_views.wait_for_position(&position, Duration::from_secs(10)).await.expect("projected");
    let view =
        whisko.user_views.db.read(|txn| carrier_whisko::views::user(txn, "old-1")).unwrap().expect("in the view");
    assert_eq!((view.name.as_str(), view.address.as_str(), view.version), ("Ana 1", "Street 1", 2));
    assert!(whisko.settle(Duration::from_secs(10)).await);
    assert_eq!(carrier_whisko::verify::check(&whisko).await.unwrap(), Vec::<String>::new());

    // The projection rebuilt blue/green from the stream (v1 event and all) equals it again.
    for n in 0..20 {
        whisko.users.execute(create(&format!("more-{n}")), Causality::default()).await.expect("created");
    }
    let progress = Arc::new(std::sync::Mutex::new(carrier_actors::RebuildProgress::default()));
    whisko.user_views.rebuild_caches(&whisko.system.bus, progress.clone()).await.expect("rebuilt");
    let done = progress.lock().unwrap().clone();
    assert_eq!(done.state, "done", "{done:?}");
    assert!(done.events >= 22, "the rebuild replayed the stream: {done:?}");
    assert!(whisko.settle(Duration::from_secs(10)).await);
    assert_eq!(carrier_whisko::verify::check(&whisko).await.unwrap(), Vec::<String>::new());
    whisko.shutdown().await;
}

// ---- the event bus ----

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Entry {
    pub id: String,
    pub n: u64,
}
impl Validate for Entry {}
domain_events! {
    /// A ledger of numbered entries, per account.
    enum LedgerEvent, context "ledger", stream "LEDGER", subjects "ledger.>";
    Entry => "account", "ledger.account.*";
}

const SEEN: Rows<(String, u64)> = Rows::new("seen");

fn entry(account: &str, n: u64) -> Decoded<LedgerEvent> {
    Decoded::new(LedgerEvent::Entry(Entry { id: account.into(), n }), n, &Causality::default())
}

/// Appends (account, n) to `SEEN` at the next position: not idempotent by itself.
fn record(txn: &carrier_storage::WriteTransaction, event: &Decoded<LedgerEvent>) -> Result<(), HandlerError> {
    let LedgerEvent::Entry(e) = &event.event;
    let mut seen = SEEN.open(txn)?;
    let next = seen.len()? + 1;
    seen.put(&format!("{next:08}"), &(e.id.clone(), e.n))?;
    Ok(())
}

fn seen(bus: &EventBus) -> Vec<(String, u64)> {
    SEEN.all(&bus.file().read().unwrap()).unwrap().into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_sync_returns_after_the_handlers_and_wait_after_everything_before_it() {
    let env = TestEnv::start();
    let events =
        EventBus::open(bus(&env, "bus").await, &env.data_dir(), EventBusSettings::named("ledgerbus")).await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow_gate = gate.clone();
    events
        .subscribe::<LedgerEvent>("slow", move |event, txn| {
            // Held until the test lets it go: publish_sync must wait for it.
            let LedgerEvent::Entry(e) = &event.event;
            if e.id == "held" {
                let permit = tokio::runtime::Handle::current().block_on(slow_gate.acquire());
                permit.map(|p| p.forget()).map_err(|e| HandlerError::new(e.to_string()))?;
            }
            record(txn, event)
        })
        .unwrap();
    events.start().await.unwrap();

    let at = events.publish_sync(&entry("a", 1), Duration::from_secs(10)).await.expect("handled in time");
    assert_eq!(seen(&events), vec![("a".to_string(), 1)], "publish_sync returned before its handler had run");
    assert_eq!(at.stream, "LEDGER");

    // A handler that cannot finish: publish_sync gives up after its timeout, the event stays
    // published and is handled once the handler can go on.
    let timed_out = events.publish_sync(&entry("held", 1), Duration::from_millis(300)).await;
    assert!(timed_out.is_err(), "publish_sync returned while its handler was still held");
    let batch: Vec<_> = (1..=50).map(|n| entry(&format!("acct-{}", n % 5), n)).collect();
    let positions = events.publish_batch(&batch).await.unwrap();
    assert_eq!(positions.len(), 50);
    assert!(events.wait(Duration::from_millis(300)).await.is_err(), "wait returned with an event unhandled");
    gate.add_permits(1);
    events.wait(Duration::from_secs(20)).await.expect("everything handled");
    let all = seen(&events);
    assert_eq!(all.len(), 52, "each event handled once: {all:?}");
    // One account's events in the order they were published.
    let mut per_account: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (account, n) in &all {
        per_account.entry(account.clone()).or_default().push(*n);
    }
    for (account, ns) in per_account {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{account} out of order: {ns:?}");
    }
    assert!(events.stop().await, "stop drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_handler_is_dead_lettered_while_the_others_go_on_and_nothing_runs_twice() {
    let env = TestEnv::start();
    let nats = bus(&env, "bus").await;
    let mut settings = EventBusSettings::named("poisonbus");
    settings.max_attempts = 3;
    settings.backoff_min = Duration::from_millis(20);
    let events = EventBus::open(nats.clone(), &env.data_dir(), settings.clone()).await.unwrap();
    events
        .subscribe::<LedgerEvent>("picky", |event, txn| {
            let LedgerEvent::Entry(e) = &event.event;
            if e.n == 7 {
                return Err(HandlerError::new("seven is unlucky"));
            }
            record(txn, event)
        })
        .unwrap();
    events.start().await.unwrap();
    let batch: Vec<_> = (1..=30).map(|n| entry("acct", n)).collect();
    events.publish_batch(&batch).await.unwrap();
    events.wait(Duration::from_secs(30)).await.expect("everything handled or dead-lettered");
    let ns: Vec<u64> = seen(&events).into_iter().map(|(_, n)| n).collect();
    assert_eq!(ns, (1..=30).filter(|n| *n != 7).collect::<Vec<u64>>(), "the others went on, in order");
    let sub = &events.subscriptions()[0];
    assert_eq!(sub.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(sub.retries.load(std::sync::atomic::Ordering::Relaxed), 2);
    let letters = nats.dead_letters("poisonbus", 1, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("Carrier-Dlq-Reason"), Some("handler_failed"));
    assert!(letters[0].header("Carrier-Dlq-Error").unwrap_or_default().contains("seven is unlucky"));
    // The operator's tool finds an event bus's dead letters by the bus's name.
    let url = env.url();
    let mut listed = CarrierProcess::spawn(&["dlq", "list", "poisonbus", "--nats-url", &url]);
    assert_eq!(listed.wait_exit(Duration::from_secs(20)), Ok(Some(0)), "{}", listed.output());
    assert!(listed.output().contains("handler_failed"), "{}", listed.output());
    let mut unknown = CarrierProcess::spawn(&["dlq", "list", "nosuchbus", "--nats-url", &url]);
    assert_eq!(unknown.wait_exit(Duration::from_secs(20)), Ok(Some(1)));
    assert!(unknown.output().contains("DLQ_NOSUCHBUS"), "{}", unknown.output());
    assert!(events.stop().await);
    drop(events);

    // Started again on the same file: nothing is handled a second time.
    let again = EventBus::open(nats.clone(), &env.data_dir(), settings).await.unwrap();
    again.subscribe::<LedgerEvent>("picky", |event, txn| record(txn, event)).unwrap();
    again.start().await.unwrap();
    again.publish(&entry("acct", 31)).await.unwrap();
    again.wait(Duration::from_secs(20)).await.unwrap();
    let ns: Vec<u64> = seen(&again).into_iter().map(|(_, n)| n).collect();
    assert_eq!(ns.len(), 29 + 1, "only the new event ran: {ns:?}");
    assert_eq!(ns.last(), Some(&31));
    again.stop().await;
}

// ---- the HTTP API ----

fn start_whisko(env: &TestEnv, data: &std::path::Path) -> (CarrierProcess, String) {
    let (url, data) = (env.url(), data.to_string_lossy().to_string());
    let mut process = CarrierProcess::spawn(&[
        "whisko",
        "--nats-url",
        &url,
        "--data-dir",
        &data,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
    ]);
    let base = process.url_after("http", Duration::from_secs(30));
    (process, base)
}

fn call(method: &str, url: String, headers: &[(&str, &str)], body: Option<Value>) -> carrier_tests::HttpResponse {
    let body = body.map(|b| b.to_string());
    http(method, &url, headers, body.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_reads_its_writes_and_names_what_is_wrong() {
    let env = TestEnv::start();
    let data = env.data_dir().join("whisko");
    let (mut process, base) = start_whisko(&env, &data);
    let created = call(
        "POST",
        format!("{base}/users"),
        &[],
        Some(json!({"name": "Ana", "email": "ana@whisko.example", "phone": "+84 90 123 4567"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let body = created.json();
    let (id, position) = (body["id"].as_str().unwrap().to_string(), body["position"].as_str().unwrap().to_string());
    assert!(position.starts_with("USERS:"), "{position}");
    // A resend with the same idempotency key answers the first send: same user, nothing new.
    let keyed = |body: Value| call("POST", format!("{base}/users"), &[("Idempotency-Key", "signup-7")], Some(body));
    let first = keyed(json!({"name": "Bo", "email": "bo@whisko.example"}));
    let again = keyed(json!({"name": "Bo", "email": "bo@whisko.example"}));
    assert_eq!((first.status, again.status), (201, 201), "{} {}", first.body, again.body);
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!((first.json()["replayed"].as_bool(), again.json()["replayed"].as_bool()), (Some(false), Some(true)));
    assert_eq!(first.json()["position"], again.json()["position"]);
    let other = keyed(json!({"name": "Bob", "email": "bo@whisko.example"}));
    assert_eq!(
        (other.status, other.json()["error"]["code"].as_str()),
        (409, Some("idempotency_key_reused")),
        "{}",
        other.body
    );
    // Read your writes, by query parameter and by header, each at once after the command.
    let changed =
        call("PATCH", format!("{base}/users/{id}/contact"), &[], Some(json!({"email": "ana.b@whisko.example"})));
    assert_eq!(changed.status, 200, "{}", changed.body);
    let at = changed.json()["position"].as_str().unwrap().to_string();
    let read = call("GET", format!("{base}/users/{id}?minPosition={at}"), &[], None);
    assert_eq!((read.status, read.json()["email"].as_str()), (200, Some("ana.b@whisko.example")), "{}", read.body);
    assert_eq!(read.json()["version"], 2);
    let read = call("GET", format!("{base}/users/{id}"), &[("Carrier-Min-Position", &at)], None);
    assert_eq!(read.json()["email"], "ana.b@whisko.example");
    assert!(read.header("carrier-applied-position").is_some_and(|p| p.starts_with("USERS:")));
    // A position the projection cannot reach in time: 503 behind, after the bounded wait.
    let started = Instant::now();
    let far = call("GET", format!("{base}/users/{id}?minPosition=USERS:999999"), &[], None);
    assert_eq!((far.status, far.json()["error"]["code"].as_str()), (503, Some("behind")), "{}", far.body);
    assert!(started.elapsed() < Duration::from_secs(9));
    let bad = call("GET", format!("{base}/users/{id}?minPosition=nonsense"), &[], None);
    assert_eq!(
        (bad.status, bad.json()["error"]["details"]["field"].as_str()),
        (400, Some("minPosition")),
        "{}",
        bad.body
    );

    // Payments: one per order, legal transitions only.
    let pay = call(
        "POST",
        format!("{base}/payments"),
        &[("Carrier-Min-Position", &position)],
        Some(
            json!({"userId": id, "orderCode": 1001, "amount": 300, "items": [{"name": "Bath", "quantity": 3, "price": 100}]}),
        ),
    );
    assert_eq!(pay.status, 201, "{}", pay.body);
    let payment = pay.json()["id"].as_str().unwrap().to_string();
    let twice =
        call("POST", format!("{base}/payments"), &[], Some(json!({"userId": id, "orderCode": 1001, "amount": 300})));
    assert_eq!((twice.status, twice.json()["error"]["code"].as_str()), (409, Some("order_already_paid_for")));
    let sum = call(
        "POST",
        format!("{base}/payments"),
        &[],
        Some(
            json!({"userId": id, "orderCode": 1002, "amount": 5, "items": [{"name": "Bath", "quantity": 1, "price": 100}]}),
        ),
    );
    assert_eq!((sum.status, sum.json()["error"]["details"]["field"].as_str()), (422, Some("amount")), "{}", sum.body);
    let nobody = call(
        "POST",
        format!("{base}/payments"),
        &[],
        Some(json!({"userId": "nobody", "orderCode": 1003, "amount": 5})),
    );
    assert_eq!((nobody.status, nobody.json()["error"]["code"].as_str()), (422, Some("unknown_user")));
    let failed = call("POST", format!("{base}/payments/{payment}/status"), &[], Some(json!({"status": "failed"})));
    assert_eq!(failed.status, 200, "{}", failed.body);
    let illegal = call("POST", format!("{base}/payments/{payment}/status"), &[], Some(json!({"status": "refunded"})));
    assert_eq!((illegal.status, illegal.json()["error"]["code"].as_str()), (409, Some("illegal_transition")));
    assert_eq!(illegal.json()["error"]["details"]["allowed"], json!(["pending"]));
    let typo = call("POST", format!("{base}/payments/{payment}/status"), &[], Some(json!({"status": "payed"})));
    assert_eq!((typo.status, typo.json()["error"]["details"]["field"].as_str()), (400, Some("status")));
    let retried = call("POST", format!("{base}/payments/{payment}/status"), &[], Some(json!({"status": "pending"})));
    let at = retried.json()["position"].as_str().unwrap().to_string();
    assert!(at.starts_with("BILLING:"));
    let by_order = call("GET", format!("{base}/payments/by-order/1001?minPosition={at}"), &[], None);
    assert_eq!((by_order.json()["status"].as_str(), by_order.json()["version"].as_u64()), (Some("pending"), Some(3)));
    let listed = call("GET", format!("{base}/users/{id}/payments?minPosition={at}"), &[], None);
    assert_eq!(listed.json()["total"], 1);

    // Bad input names the field; unknown things are 404.
    let missing = call("POST", format!("{base}/users"), &[], Some(json!({"email": "x@whisko.example"})));
    assert_eq!((missing.status, missing.json()["error"]["details"]["field"].as_str()), (400, Some("name")));
    let email = call("POST", format!("{base}/users"), &[], Some(json!({"name": "X", "email": "nope"})));
    assert_eq!((email.status, email.json()["error"]["details"]["field"].as_str()), (422, Some("email")));
    let unknown = call("PATCH", format!("{base}/users/ghost/profile"), &[], Some(json!({"name": "G"})));
    assert_eq!(unknown.status, 404);
    let limit = call("GET", format!("{base}/users?limit=0"), &[], None);
    assert_eq!((limit.status, limit.json()["error"]["details"]["field"].as_str()), (400, Some("limit")));

    // Deleted: reads 404, commands 409.
    let deleted = call("DELETE", format!("{base}/users/{id}"), &[], None);
    let at = deleted.json()["position"].as_str().unwrap().to_string();
    let gone = call("GET", format!("{base}/users/{id}?minPosition={at}"), &[], None);
    assert_eq!((gone.status, gone.json()["error"]["code"].as_str()), (404, Some("user_deleted")));
    let refused = call("PATCH", format!("{base}/users/{id}/profile"), &[], Some(json!({"name": "Back"})));
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (409, Some("user_deleted")));

    // Over NATS too: commands on cmd.users, queries with min_position in the body.
    let client = env.plain_client().await;
    let reply = client
        .request(
            "cmd.users",
            r#"{"command":"create_user","id":"nats-1","name":"Nat","email":"nat@whisko.example"}"#.into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let at = reply["position"].as_str().expect("a position").to_string();
    let query = json!({"query": "get_user", "id": "nats-1", "min_position": at});
    let answer = client.request("query.user_views", query.to_string().into()).await.unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["found"]["name"], "Nat", "{answer}");
    let health = call("GET", format!("{base}/health"), &[], None);
    assert_eq!(health.json()["status"], "ok");
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(15)), Ok(Some(0)));
}

// ---- crashes ----

/// Kills in the crash run; `CARRIER_WHISKO_KILLS` raises it.
fn kills() -> usize {
    std::env::var("CARRIER_WHISKO_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_and_mails_equal_a_fold_of_the_streams_after_20_sigkills() {
    let env = TestEnv::start();
    let data = env.data_dir().join("whisko");
    let client = env.plain_client().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // A stream of commands over NATS, each resent with its idempotency key until it is answered
    // (the process is down half the time).
    let driver = {
        let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let user = format!("crash-{}", n % 40);
                let (subject, body) = match n % 10 {
                    0..=3 if n < 40 => (
                        "cmd.users",
                        json!({"command": "create_user", "id": format!("crash-{n}"), "name": format!("User {n}"), "email": format!("u{n}@whisko.example")}),
                    ),
                    0 | 1 => (
                        "cmd.users",
                        json!({"command": "update_contact", "id": user, "email": format!("c{n}@whisko.example")}),
                    ),
                    2 | 3 | 4 => {
                        ("cmd.users", json!({"command": "update_profile", "id": user, "name": format!("Name {n}")}))
                    }
                    5 => {
                        let order = 10_000 + n;
                        (
                            "cmd.billing",
                            json!({"command": "create_payment", "id": carrier_whisko::billing::payment_id(order as i64), "user_id": user, "order_code": order, "amount": 100}),
                        )
                    }
                    6 => (
                        "cmd.billing",
                        json!({"command": "change_status", "id": carrier_whisko::billing::payment_id(10_000 + n as i64 - 1), "status": "paid"}),
                    ),
                    7 => (
                        "cmd.billing",
                        json!({"command": "change_status", "id": carrier_whisko::billing::payment_id(10_000 + n as i64 - 2), "status": "refunded"}),
                    ),
                    _ => (
                        "cmd.users",
                        json!({"command": "update_profile", "id": user, "address": format!("Street {n}"), "name": "Someone"}),
                    ),
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Idempotency-Key", format!("cmd-{n}").as_str());
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let request = client.request_with_headers(subject, headers.clone(), body.to_string().into());
                    match tokio::time::timeout(Duration::from_secs(3), request).await {
                        Ok(Ok(reply)) => {
                            let reply: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                            let code = reply["error"]["code"].as_str().unwrap_or("");
                            // Refusals are answers too (a user not created yet, a payment in
                            // the wrong status); only unavailability is worth a resend.
                            if code != "unavailable" {
                                break;
                            }
                        }
                        _ => {}
                    }
                    assert!(Instant::now() < deadline, "command {n} was never answered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for kill in 0..kills() {
        let (mut process, _) = start_whisko(&env, &data);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(300 + rng % 700)).await;
        process.signal("KILL");
        let _ = process.wait_exit(Duration::from_secs(10));
        assert!(sent.load(std::sync::atomic::Ordering::Relaxed) > 0 || kill < 3, "no command got through");
    }
    // Last incarnation: let the driver finish a few more, then stop it and let everything settle.
    let (mut process, _) = start_whisko(&env, &data);
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_until(Duration::from_secs(60), "commands go through again", || {
        let sent = sent.clone();
        async move { sent.load(std::sync::atomic::Ordering::Relaxed) > before + 20 }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    driver.await.expect("the driver ends");
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(15)), Ok(Some(0)));

    // The files the killed process left, opened again here: caught up, then compared with a
    // fold of the streams.
    let whisko = Whisko::start(SystemConfig::new(env.url(), &data, carrier_whisko::contexts())).await.expect("starts");
    assert!(whisko.settle(Duration::from_secs(60)).await, "the projections and the bus caught up");
    let problems = carrier_whisko::verify::check(&whisko).await.expect("the streams fold");
    assert_eq!(problems, Vec::<String>::new());
    let users = whisko.user_views.db.read(|txn| carrier_whisko::views::USERS.len(txn)).unwrap();
    let mails = whisko.bus.file().read().and_then(|t| carrier_whisko::mail::mails(&t)).unwrap();
    assert!(
        users >= 10 && !mails.is_empty(),
        "the run did too little to prove anything: {users} users, {} mails",
        mails.len()
    );
    eprintln!(
        "{} commands through {} SIGKILLs: {users} live users, {} mails",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        kills(),
        mails.len()
    );
    whisko.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_whisko_processes_share_the_commands_and_the_bus_fails_over_to_the_standby() {
    let env = TestEnv::start();
    let (dir_a, dir_b) = (env.data_dir().join("a"), env.data_dir().join("b"));
    let (mut a, _) = start_whisko(&env, &dir_a);
    let (mut b, _) = start_whisko(&env, &dir_b);
    let client = env.plain_client().await;
    // Ten users, then 300 updates racing on them: the queue group spreads them over both
    // processes, whose in-memory aggregates go stale under each other.
    // A command that lost every retry is answered `conflict` having stored nothing (the
    // documented outcome under this much contention): a client sends it again, a few times.
    let send = |body: Value| {
        let client = client.clone();
        async move {
            let mut tries = 0;
            loop {
                let reply = client.request("cmd.users", body.to_string().into()).await.expect("answered");
                let reply = serde_json::from_slice::<Value>(&reply.payload).expect("a reply");
                tries += 1;
                if reply["error"]["code"] != "conflict" || tries == 5 {
                    return reply;
                }
            }
        }
    };
    for n in 0..10 {
        let reply = send(
            json!({"command": "create_user", "id": format!("twin-{n}"), "name": "Twin", "email": "t@whisko.example"}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let updates = (0..300).map(|n| {
        send(json!({"command": "update_profile", "id": format!("twin-{}", n % 10), "name": format!("Twin {n}")}))
    });
    let replies = futures::future::join_all(updates).await;
    let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for reply in &replies {
        assert_eq!(reply["ok"], true, "{reply}");
        let event = &reply["event"];
        let fresh = versions
            .entry(event["aggregate_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(event["aggregate_version"].as_u64().unwrap());
        assert!(fresh, "a version was answered twice: {reply}");
    }
    for (id, vs) in &versions {
        assert_eq!(vs, &(2..=31).collect::<BTreeSet<u64>>(), "{id}");
    }
    // The bus's handlers run on one of the two (the lease holder, a). Once it has acknowledged
    // everything, kill it: b stands by, takes the lease over when it expires and writes the
    // next users' welcomes, from where a's acknowledgements end.
    let probe = bus(&env, "probe").await;
    let end = probe.last_sequence("USERS").await.unwrap();
    wait_until(Duration::from_secs(30), "the welcome handler acknowledged every user", || {
        let probe = probe.clone();
        async move {
            probe.consumer_info("USERS", "whisko-welcome").await.map(|i| i.ack_floor_stream_seq >= end).unwrap_or(false)
        }
    })
    .await;
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(10));
    for n in 10..15 {
        let reply = send(
            json!({"command": "create_user", "id": format!("twin-{n}"), "name": "Twin", "email": "t@whisko.example"}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let end = probe.last_sequence("USERS").await.unwrap();
    wait_until(Duration::from_secs(75), "the standby took the bus over and welcomed the new users", || {
        let probe = probe.clone();
        async move {
            probe.consumer_info("USERS", "whisko-welcome").await.map(|i| i.ack_floor_stream_seq >= end).unwrap_or(false)
        }
    })
    .await;
    let last = format!("USERS:{end}");
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(15)), Ok(Some(0)));
    // Each instance's projection, opened again here, equals the fold; the bus's handlers ran on
    // one instance at a time, so the two mail lists together hold each mail once.
    let mut mails = Vec::new();
    for dir in [dir_a, dir_b] {
        let whisko =
            Whisko::start(SystemConfig::new(env.url(), &dir, carrier_whisko::contexts())).await.expect("starts");
        whisko.user_views.wait_for_position(&last.parse().unwrap(), Duration::from_secs(30)).await.expect("caught up");
        assert!(whisko.settle(Duration::from_secs(30)).await);
        assert_eq!(
            carrier_whisko::verify::check_projections(&whisko).await.unwrap(),
            Vec::<String>::new(),
            "{}",
            dir.display()
        );
        mails.extend(whisko.bus.file().read().and_then(|t| carrier_whisko::mail::mails(&t)).unwrap());
        whisko.shutdown().await;
    }
    let probe = bus(&env, "probe").await;
    assert_eq!(carrier_whisko::verify::check_mails(&probe, &mails).await.unwrap(), Vec::<String>::new());
    assert_eq!(mails.len(), 15, "one welcome per user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_status_shows_the_event_bus_the_event_stores_and_the_bus_dead_letters() {
    let env = TestEnv::start();
    let (url, data) = (env.url(), env.data_dir().join("w").to_string_lossy().to_string());
    let mut process = CarrierProcess::spawn(&[
        "whisko",
        "--nats-url",
        &url,
        "--data-dir",
        &data,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-addr",
        "127.0.0.1:0",
    ]);
    let base = process.url_after("http", Duration::from_secs(30));
    let dashboard = process.url_after("url", Duration::from_secs(30));
    let created =
        call("POST", format!("{base}/users"), &[], Some(json!({"name": "Ana", "email": "ana@whisko.example"})));
    assert_eq!(created.status, 201, "{}", created.body);
    let mut shown = String::new();
    wait_until(Duration::from_secs(20), "carrier status shows the welcome handled", || {
        let mut status = CarrierProcess::spawn(&["status", "--url", &dashboard]);
        let _ = status.wait_exit(Duration::from_secs(20));
        shown = status.output();
        let done = shown.contains("whisko-welcome") && shown.contains("handled 1 ");
        async move { done }
    })
    .await;
    for needle in
        ["Event bus", "lease bus.whisko", "active", "Event stores", "committed 1,", "user_views", "payment_views"]
    {
        assert!(shown.contains(needle), "no {needle:?} in:\n{shown}");
    }
    // The bus's dead-letter stream is listed with the contexts'.
    assert!(shown.lines().any(|l| l.trim_start().starts_with("whisko ")), "no whisko dead-letter row in:\n{shown}");
    // And Prometheus has the event store's and the bus's counters.
    let metrics = call("GET", format!("{dashboard}/metrics"), &[], None).body;
    for needle in [
        r#"carrier_event_store_commands_total{context="users",outcome="committed"} 1"#,
        r#"carrier_event_bus_events_total{bus="whisko",subscription="welcome",outcome="handled"} 1"#,
        r#"carrier_event_bus_handled_through_sequence{bus="whisko",subscription="welcome"} 1"#,
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(15)), Ok(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_everything_but_health_needs_one() {
    let env = TestEnv::start();
    let (url, data) = (env.url(), env.data_dir().join("w").to_string_lossy().to_string());
    let mut process = CarrierProcess::spawn_env(
        &["whisko", "--nats-url", &url, "--data-dir", &data, "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
        &[("API_KEYS", "k-one,k-two")],
    );
    let base = process.url_after("http", Duration::from_secs(30));
    let body = Some(json!({"name": "Ana", "email": "ana@whisko.example"}));
    let refused = call("POST", format!("{base}/users"), &[], body.clone());
    assert_eq!(refused.status, 401, "{}", refused.body);
    let wrong = call("POST", format!("{base}/users"), &[("X-API-Key", "k-three")], body.clone());
    assert_eq!(wrong.status, 401);
    let created = call("POST", format!("{base}/users"), &[("X-API-Key", "k-two")], body);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(call("GET", format!("{base}/health"), &[], None).status, 200);
    assert!(!process.output().contains("k-one"), "a key was logged:\n{}", process.output());
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(15)), Ok(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_killed_and_restarted_under_load_loses_no_command_and_runs_no_handler_twice() {
    let mut env = TestEnv::start();
    let data = env.data_dir().join("w");
    let whisko = Whisko::start(SystemConfig::new(env.url(), &data, carrier_whisko::contexts())).await.expect("starts");
    let store = whisko.users.clone();
    let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let progress = done.clone();
    // Commands with idempotency keys, each resent until answered, while the server goes away.
    let driver = tokio::spawn(async move {
        for n in 0..150u32 {
            progress.store(n, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let command =
                if n % 3 == 0 { create(&format!("r-{n}")) } else { rename(&format!("r-{}", n - n % 3), n as usize) };
            let key = IdempotencyKey::for_command(format!("restart-{n}"), &command).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let causality = Causality { idempotency: Some(key.clone()), ..Default::default() };
                match tokio::time::timeout(Duration::from_secs(5), store.execute(command.clone(), causality)).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(CommandError::Unavailable(_))) | Err(_) => {}
                    Ok(Err(other)) => panic!("command {n} refused: {other}"),
                }
                assert!(Instant::now() < deadline, "command {n} never went through");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    wait_until(Duration::from_secs(30), "50 commands went through", || {
        let done = done.clone();
        async move { done.load(std::sync::atomic::Ordering::Relaxed) >= 50 }
    })
    .await;
    env.nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(done.load(std::sync::atomic::Ordering::Relaxed) < 150, "the server was killed after the last command");
    env.nats.restart().expect("the server comes back on its store");
    driver.await.expect("every command went through");
    assert!(whisko.settle(Duration::from_secs(60)).await, "the projections and the bus caught up");
    assert_eq!(carrier_whisko::verify::check(&whisko).await.unwrap(), Vec::<String>::new());
    // Each command stored once: 50 users, each at version 3.
    let users = whisko.user_views.db.read(|txn| carrier_whisko::views::USERS.all(txn)).unwrap();
    assert_eq!(users.len(), 50);
    assert!(
        users.iter().all(|(_, u)| u.version == 3),
        "{:?}",
        users.iter().map(|(_, u)| u.version).collect::<Vec<_>>()
    );
    whisko.shutdown().await;
}
