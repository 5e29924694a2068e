//! Crash tests with real processes and real signals: `carrier run` is killed with SIGKILL at
//! random moments while events flow, and restarted each time.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use carrier_storage::ContextDb as _;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carrier_actors::Bus;
use carrier_mall::stores::StoresEvent;
use carrier_mall::workload::Workload;
use carrier_tests::{carrier_bin, wait_until, TestEnv};

/// Events in the crash run; `CARRIER_CRASH_EVENTS` raises it for soak runs.
fn events() -> u64 {
    std::env::var("CARRIER_CRASH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Kills in the crash run; `CARRIER_CRASH_KILLS` raises it for soak runs.
fn kills() -> usize {
    std::env::var("CARRIER_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

fn spawn_service(env: &TestEnv, incarnation: usize) -> Child {
    let log = File::create(env.data_dir().join(format!("run-{incarnation}.log"))).expect("log file");
    Command::new(carrier_bin())
        .args(["run", "--contexts", "baskets", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("carrier run starts")
}

/// (ack floor, pending) of the baskets durable, as the server sees it.
async fn progress(js: &async_nats::jetstream::Context, durable: &str) -> (u64, u64) {
    let Ok(stream) = js.get_stream("STORES").await else { return (0, u64::MAX) };
    let Ok(mut consumer) = stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable).await else {
        return (0, u64::MAX);
    };
    match consumer.info().await {
        Ok(info) => (info.ack_floor.stream_sequence, info.num_pending + info.num_ack_pending as u64),
        Err(_) => (0, u64::MAX),
    }
}

/// A small deterministic generator, so a failing run can be repeated with its seed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_at_random_moments_while_events_flow_loses_and_doubles_nothing() {
    let env = TestEnv::start();
    let (total, kill_count) = (events(), kills());
    let workload = Arc::new(Workload::prices(total, 500).expect("workload"));
    let bus = Bus::connect(&env.url(), "crash-producer", Duration::from_secs(5)).await.expect("connects");
    bus.ensure_event_stream::<StoresEvent>().await.expect("stream");

    // The producer publishes in chunks, spread over the whole run, and records the last sequence.
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let producer = {
        let (bus, workload, published, done) = (bus.clone(), workload.clone(), published.clone(), done.clone());
        tokio::spawn(async move {
            for chunk in workload.events.chunks(2_000) {
                let last = bus.publish_many(chunk, 1_024).await.expect("published");
                published.store(last, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done.store(1, Ordering::SeqCst);
        })
    };

    let js = async_nats::jetstream::new(env.plain_client().await);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
            | 1;
    let mut random = XorShift(seed);
    let mut recoveries = Vec::new();
    // Every incarnation is the same instance (one data directory), with the same durable.
    let durable = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id");
    for incarnation in 0..kill_count {
        let (floor_before, _) = progress(&js, &durable).await;
        let mut service = spawn_service(&env, incarnation);
        let started = Instant::now();
        let (p, d) = (published.clone(), done.clone());
        let (js2, durable2) = (js.clone(), durable.clone());
        // Each incarnation must make progress before it is killed, or the kill proves nothing.
        wait_until(Duration::from_secs(60), "the restarted service makes progress", move || {
            let (js, p, d, durable) = (js2.clone(), p.clone(), d.clone(), durable2.clone());
            async move {
                let (floor, pending) = progress(&js, &durable).await;
                floor > floor_before
                    || (d.load(Ordering::SeqCst) == 1 && pending == 0 && floor >= p.load(Ordering::SeqCst))
            }
        })
        .await;
        recoveries.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(random.below(300))).await;
        service.kill().expect("SIGKILL");
        service.wait().expect("reaped");
    }
    producer.await.expect("producer finished");
    let last = published.load(Ordering::SeqCst);

    // One last incarnation runs to the end and stops cleanly.
    let mut service = spawn_service(&env, kill_count);
    let js2 = js.clone();
    wait_until(Duration::from_secs(300), "the service consumes everything", move || {
        let (js, durable) = (js2.clone(), durable.clone());
        async move {
            let (floor, pending) = progress(&js, &durable).await;
            floor >= last && pending == 0
        }
    })
    .await;
    let pid = service.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    assert!(service.wait().expect("exits").success(), "clean exit after SIGTERM");

    let db = carrier_storage::FileWriter::<carrier_mall::baskets::Baskets>::open(env.data_dir().join("baskets.redb"))
        .expect("cache readable");
    let problems = workload.check(&db).expect("readable");
    let stats = db.engine_stats().expect("stats");
    let dead = bus.stream_message_count("DLQ_BASKETS").await.expect("info").unwrap_or(0);
    recoveries.sort();
    eprintln!(
        "crash run (seed {seed}): {} events, {kill_count} SIGKILLs, {} products wrong, {} inbox records, {dead} dead-lettered; \
         time to first progress after restart: min {:?}, median {:?}, max {:?}",
        workload.events.len(),
        problems.len(),
        stats.inbox,
        recoveries.first().copied().unwrap_or_default(),
        recoveries[recoveries.len() / 2],
        recoveries.last().copied().unwrap_or_default(),
    );
    assert!(problems.is_empty(), "lost or doubled effects:\n{}", problems.join("\n"));
    assert_eq!(stats.inbox, workload.events.len() as u64, "every event recorded exactly once");
    assert_eq!(stats.parked, 0, "nothing left waiting");
    assert_eq!(dead, 0, "nothing dead-lettered");

    // A replay of the whole stream into a fresh cache ends in exactly the same rows.
    let crashed = db.products().expect("read");
    drop(db);
    let replay_dir = tempfile::tempdir().expect("dir");
    let mut config = env.config(&["baskets"]);
    config.data_dir = replay_dir.path().to_path_buf();
    let replay = carrier_actors::CarrierSystem::start(config).await.expect("replay starts");
    let handle = replay.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(Duration::from_secs(300), "the replay reaches the end of the stream", || {
        let h = handle.clone();
        async move { h.consumer("stores").expect("stores consumer").acked_stream_seq.load(Ordering::Relaxed) >= last }
    })
    .await;
    assert_eq!(handle.db.products().expect("read"), crashed, "the crashed cache equals a replay of the stream");
    replay.shutdown().await;
}

/// Sends a stores command as any NATS client would, retrying while nobody answers yet.
async fn command(bus: &Bus, json: &str) -> carrier_messages::CommandReply {
    let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus.request("cmd.stores", &headers, json.as_bytes().to_vec(), Duration::from_secs(2)).await {
            Ok(body) => return serde_json::from_slice(&body).expect("a command reply"),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "stores not answering yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("stores never answered: {e}"),
        }
    }
}

fn spawn_owner(env: &TestEnv, faults: Option<&str>, incarnation: usize) -> Child {
    let log = File::create(env.data_dir().join(format!("stores-{incarnation}.log"))).expect("log file");
    let mut command = Command::new(carrier_bin());
    command
        .args(["run", "--contexts", "stores", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    if let Some(spec) = faults {
        command.env("CARRIER_FAULTS", spec);
    }
    command.spawn().expect("carrier run starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_between_outbox_publish_and_mark_causes_no_double_effect() {
    let env = TestEnv::start();
    let cache = env.system(&["baskets"]).await;
    let bus = cache.bus.clone();

    // This incarnation dies, as under SIGKILL, right after JetStream acknowledges its first publish.
    let mut owner = spawn_owner(&env, Some("relay_abort_after_publish=1"), 0);
    let reply = command(&bus, r#"{"command":"create_store","id":"s","name":"Shop","location":"Hall"}"#).await;
    assert!(reply.ok, "{reply:?}");
    let status = owner.wait().expect("reaped");
    assert!(!status.success(), "the owner process died mid-relay ({status})");

    // The next incarnation finds the row still in its outbox and publishes it again.
    let mut owner = spawn_owner(&env, None, 1);
    let add =
        r#"{"command":"add_product","id":"p","store_id":"s","name":"Kettle","description":"","sku":"K","price":100}"#;
    assert!(command(&bus, add).await.ok);
    for _ in 0..3 {
        assert!(command(&bus, r#"{"command":"increase_product_price","id":"p","delta":5}"#).await.ok);
    }
    let refused = command(&bus, r#"{"command":"rebrand_store","id":"nope","name":"X"}"#).await;
    assert_eq!(refused.error.map(|e| e.code), Some("not_found".to_string()));

    let db = cache.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets").db.clone();
    wait_until(Duration::from_secs(30), "the cache has every effect", || {
        let db = db.clone();
        async move {
            db.product("p").ok().flatten().is_some_and(|p| p.price == 115) && db.store("s").ok().flatten().is_some()
        }
    })
    .await;
    let stored = bus.stream_message_count("STORES").await.expect("info").expect("stream");
    assert_eq!(stored, 5, "the re-sent StoreCreated was dropped by JetStream as a duplicate");
    let stats = cache
        .handle::<carrier_mall::baskets::BasketsHandle>()
        .expect("baskets")
        .consumer("stores")
        .expect("stores consumer")
        .clone();
    let counted = stats.clone();
    // The counter moves just after the commit the cache already shows.
    wait_until(Duration::from_secs(10), "the consumer counts its batches", move || {
        let s = counted.clone();
        async move { s.applied.load(Ordering::Relaxed) >= 5 }
    })
    .await;
    assert_eq!(stats.applied.load(Ordering::Relaxed), 5, "each event applied once");

    let pid = owner.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    assert!(owner.wait().expect("exits").success());
    let owner_db =
        carrier_storage::FileWriter::<carrier_mall::stores::Stores>::open(env.data_dir().join("stores.redb"))
            .expect("owner readable");
    assert_eq!(owner_db.outbox_len().expect("outbox"), 0, "the outbox drained after the restart");
    let problems = carrier_mall::verify::baskets_against_stores(&owner_db, &db).expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    cache.shutdown().await;
}
