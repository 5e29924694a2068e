//! Offset management: pause, resume, seek (to a sequence, to a time) and skip a running
//! consumer, through the library's observer and through `carrier consumer` and the dashboard.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::process::Command;
use std::time::{Duration, SystemTime};

use carrier_actors::{ActionError, Observer};
use carrier_actors::{Reposition, RepositionError, SeekTo};
use carrier_mall::stores::StoresCommand;
use carrier_messages::Causality;
use carrier_tests::{carrier_bin, http_json, http_post, wait_until, CarrierProcess, TestEnv};
use serde_json::json;

const KEY: &str = "offsets-key-0123456789";

async fn create_store(stores: &carrier_mall::stores::StoresHandle, id: &str) {
    let create = StoresCommand::CreateStore { id: id.into(), name: format!("Store {id}"), location: "Hall".into() };
    stores.execute(create, Causality::default()).await.expect("created");
}

fn cached_ids(baskets: &carrier_mall::baskets::BasketsHandle) -> Vec<String> {
    let mut ids: Vec<String> = baskets.db.stores().expect("stores").into_iter().map(|(id, _, _)| id).collect();
    ids.sort();
    ids
}

async fn report(observer: &Observer) -> carrier_actors::ConsumerReport {
    // baskets' durable on STORES is this instance's own: found by who reads what.
    observer
        .consumers()
        .await
        .into_iter()
        .find(|c| c.context == "baskets" && c.source == "stores")
        .expect("baskets' consumer of STORES")
}

async fn wait_cached(baskets: &carrier_mall::baskets::BasketsHandle, ids: &[&str]) {
    let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    wait_until(Duration::from_secs(20), &format!("baskets caches exactly {ids:?}"), || {
        let got = cached_ids(baskets);
        let want = want.clone();
        async move { got == want }
    })
    .await;
}

/// The pending count the server reports for the durable reaches `n`.
async fn wait_pending(observer: &Observer, n: u64) {
    wait_until(Duration::from_secs(20), &format!("{n} events pending for baskets' consumer of STORES"), || {
        let observer = observer.clone();
        async move { report(&observer).await.pending == n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_events_back_skip_dead_letters_them_and_seek_moves_either_way() {
    let env = TestEnv::start();
    let system = env.system(&["stores", "baskets"]).await;
    let observer = system.observer();
    let stores = system.handle::<carrier_mall::stores::StoresHandle>().expect("stores");
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    create_store(&stores, "s1").await;
    create_store(&stores, "s2").await;
    wait_cached(&baskets, &["s1", "s2"]).await;

    // Pause: nothing is pulled, the server counts the lag, the report says paused.
    assert!(!observer.pause("baskets", "stores", true).await.expect("pause"));
    create_store(&stores, "s3").await;
    create_store(&stores, "s4").await;
    create_store(&stores, "s5").await;
    wait_pending(&observer, 3).await;
    let paused = report(&observer).await;
    assert!(paused.paused, "{paused:?}");
    assert_eq!(paused.ack_pending, 0, "a paused consumer holds no deliveries: {paused:?}");
    assert_eq!(cached_ids(&baskets), ["s1", "s2"], "nothing applied while paused");

    // Skip two (s3, s4) while paused: dead-lettered as `skipped`, then only s5 arrives.
    let skipped =
        observer.reposition("baskets", "stores", Reposition::Skip { count: 2 }).await.expect("the skip is done");
    assert_eq!(skipped.skipped.len(), 2, "{skipped:?}");
    assert!(skipped.skipped.iter().all(|e| e.subject == "stores.store.created"), "{skipped:?}");
    assert_eq!(skipped.to, skipped.skipped[1].stream_seq + 1);
    let letters = system.bus.dead_letters("baskets", 1, 10).await.expect("dead letters");
    let reasons: Vec<Option<&str>> = letters.iter().map(|l| l.header("Carrier-Dlq-Reason")).collect();
    assert_eq!(reasons, [Some("skipped"), Some("skipped")], "{letters:?}");
    let originals: Vec<u64> = skipped.skipped.iter().map(|e| e.stream_seq).collect();
    let recorded: Vec<u64> =
        letters.iter().filter_map(|l| l.header("Carrier-Dlq-Original-Sequence").and_then(|s| s.parse().ok())).collect();
    assert_eq!(recorded, originals, "each dead letter names the skipped sequence");
    assert!(report(&observer).await.paused, "a skip leaves a paused consumer paused");
    assert!(observer.pause("baskets", "stores", false).await.expect("resume"), "it was paused");
    wait_cached(&baskets, &["s1", "s2", "s5"]).await;

    // The skipped events come back through the dead letters, as for any dead letter.
    assert_eq!(observer.replay_dead_letters("baskets").await.expect("replayed"), 2);
    wait_cached(&baskets, &["s1", "s2", "s3", "s4", "s5"]).await;

    // Nothing left to skip is a clear refusal, and changes nothing.
    let nothing = observer.reposition("baskets", "stores", Reposition::Skip { count: 1 }).await;
    assert!(matches!(nothing, Err(ActionError::Reposition(RepositionError::NothingToSkip { .. }))), "{nothing:?}");

    // Seek backwards to the start: everything comes again and is dropped as duplicate.
    let before = report(&observer).await.counters.duplicates;
    let (_, last) = system.bus.stream_bounds("STORES").await.expect("bounds");
    let back = observer.reposition("baskets", "stores", Reposition::Seek(SeekTo::Sequence(1))).await.expect("seek");
    assert_eq!((back.to, back.from), (1, last + 1), "{back:?}");
    wait_until(Duration::from_secs(20), "the replayed events dropped as duplicates", || {
        let observer = observer.clone();
        async move { report(&observer).await.counters.duplicates >= before + last }
    })
    .await;
    assert_eq!(cached_ids(&baskets), ["s1", "s2", "s3", "s4", "s5"], "a seek back applies nothing twice");

    // Seek forwards by time, while paused: s6 is passed over, s7 (stored after the time) comes.
    observer.pause("baskets", "stores", true).await.expect("pause");
    create_store(&stores, "s6").await;
    wait_pending(&observer, 1).await;
    let between = SystemTime::now();
    create_store(&stores, "s7").await;
    wait_pending(&observer, 2).await;
    let (_, last) = system.bus.stream_bounds("STORES").await.expect("bounds");
    let forward =
        observer.reposition("baskets", "stores", Reposition::Seek(SeekTo::Time(between))).await.expect("seek by time");
    assert_eq!(forward.to, last, "the first event stored after the time is s7's: {forward:?}");
    // A restart of the consumer keeps the new position (the durable is not reused from before).
    observer.restart("carrier/baskets/stores-consumer", true).expect("restart");
    observer.pause("baskets", "stores", false).await.expect("resume");
    wait_cached(&baskets, &["s1", "s2", "s3", "s4", "s5", "s7"]).await;

    // A time after everything seeks to the end; a sequence past it or 0 is refused by name.
    let end = observer
        .reposition("baskets", "stores", Reposition::Seek(SeekTo::Time(SystemTime::now() + Duration::from_secs(60))))
        .await
        .expect("seek to the end");
    assert_eq!(end.to, last + 1);
    let past = observer.reposition("baskets", "stores", Reposition::Seek(SeekTo::Sequence(last + 5))).await;
    assert!(matches!(past, Err(ActionError::Reposition(RepositionError::BeyondEnd { .. }))), "{past:?}");
    let zero = observer.reposition("baskets", "stores", Reposition::Seek(SeekTo::Sequence(0))).await;
    assert!(matches!(zero, Err(ActionError::Reposition(RepositionError::ZeroSequence))), "{zero:?}");
    let unknown = observer.reposition("baskets", "depot", Reposition::Skip { count: 1 }).await;
    assert!(matches!(unknown, Err(ActionError::NoSuchSource { .. })), "{unknown:?}");
    assert!(unknown.unwrap_err().to_string().contains("it reads: "), "names what it reads");
    create_store(&stores, "s8").await;
    wait_cached(&baskets, &["s1", "s2", "s3", "s4", "s5", "s7", "s8"]).await;
    system.shutdown().await;
}

fn consumer(args: &[&str], dashboard: &str) -> (bool, String, String) {
    let out = Command::new(carrier_bin())
        .arg("consumer")
        .args(args)
        .args(["--url", dashboard, "--api-key", KEY])
        .env_remove("CARRIER_CONFIG")
        .output()
        .expect("carrier consumer runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn carrier_consumer_and_the_api_pause_seek_and_skip_and_refuse_bad_requests_by_name() {
    let env = TestEnv::start();
    let (carrier, dashboard) = CarrierProcess::run_ready(
        &env.url(),
        &env.data_dir(),
        "stores,baskets",
        &["--dashboard-actions", "--api-key", KEY],
    );
    // The API answers from the snapshot taken each second: wait for it to show the change.
    let wait_paused = |dashboard: &str, want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let consumers = http_json(&format!("{dashboard}/api/consumers"));
            let row = consumers
                .as_array()
                .expect("consumers")
                .iter()
                .find(|c| c["context"] == "baskets" && c["source"] == "stores")
                .cloned();
            if row.as_ref().is_some_and(|r| r["paused"] == json!(want)) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "paused never became {want}: {row:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (ok, stdout, stderr) = consumer(&["pause", "baskets", "stores"], &dashboard);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("baskets paused its consumer of stores"), "{stdout}");
    wait_paused(&dashboard, true);
    let status = Command::new(carrier_bin()).args(["status", "--url", &dashboard]).output().expect("status");
    assert!(String::from_utf8_lossy(&status.stdout).contains("PAUSED"), "{}", String::from_utf8_lossy(&status.stdout));

    // Events published meanwhile wait; a skip dead-letters the first, a seek moves past none.
    for (i, id) in ["c1", "c2"].iter().enumerate() {
        let out = Command::new(carrier_bin())
            .args(["publish", "stores.StoreCreated"])
            .arg(format!(r#"{{"id":"{id}","name":"Store {id}","location":"Hall"}}"#))
            .args(["--aggregate-version", "1", "--nats-url", &env.url()])
            .output()
            .expect("publish");
        assert!(out.status.success(), "publish {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (ok, stdout, stderr) = consumer(&["skip", "baskets", "stores", "--count", "1"], &dashboard);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("skipped 1 events") && stdout.contains("stores.store.created"), "{stdout}");
    let (ok, stdout, stderr) = consumer(&["seek", "baskets", "stores", "--ago", "1h", "--json"], &dashboard);
    assert!(ok, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(answer["to"], 1, "an hour ago is before the first event: {answer}");
    let (ok, _, stderr) = consumer(&["resume", "baskets", "stores"], &dashboard);
    assert!(ok, "{stderr}");
    wait_paused(&dashboard, false);

    // Refusals: each names what is wrong.
    let (ok, _, stderr) = consumer(&["seek", "baskets", "stores", "--sequence", "999"], &dashboard);
    assert!(!ok && stderr.contains("(400)") && stderr.contains("beyond the end of STORES"), "{stderr}");
    let (ok, _, stderr) = consumer(&["pause", "baskets", "payments"], &dashboard);
    assert!(!ok && stderr.contains("(404)") && stderr.contains("it reads: "), "{stderr}");
    let (ok, _, stderr) = consumer(&["pause", "stores", "stores"], &dashboard);
    assert!(!ok && stderr.contains("(404)"), "an owner consuming nothing: {stderr}");
    let (ok, _, stderr) = consumer(&["seek", "baskets", "stores"], &dashboard);
    assert!(!ok && stderr.contains("--sequence") && stderr.contains("--time"), "clap asks for a target: {stderr}");
    let (ok, _, stderr) = consumer(&["seek", "baskets", "stores", "--ago", "5 weeks"], &dashboard);
    assert!(!ok && stderr.contains("--ago"), "{stderr}");
    let seek = format!("{dashboard}/api/consumers/baskets/stores/seek");
    let skip = format!("{dashboard}/api/consumers/baskets/stores/skip");
    for (url, body, needle) in [
        (&seek, json!({"sequence": "x"}), "`sequence`"),
        (&seek, json!({"sequence": 1, "time": "2026-01-01T00:00:00Z"}), "exactly one"),
        (&seek, json!({"time": "yesterday"}), "`time`"),
        (&seek, json!({"bogus": 1}), "unknown field `bogus`"),
        (&skip, json!({"count": 0}), "`count`"),
        (&skip, json!({"count": 5000}), "`count`"),
    ] {
        let (status, text) = http_post(url, Some(KEY), &body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {needle} missing from {text}");
    }
    let (status, _) = http_post(&skip, Some("offsets-key-wrong-0123456"), &json!({}));
    assert_eq!(status, 401);
    drop(carrier);
}
