//! The `carrier` binary, driven as a user would drive it.

use crate::mall_env::MallEnv;
use carrier_mall::prelude::*;
use std::process::{Command, Stdio};
use std::time::Duration;

use carrier_tests::{carrier_bin, wait_until, TestEnv};

#[test]
fn the_demo_exits_zero_when_the_caches_agree_and_the_order_completes() {
    let env = TestEnv::start();
    let out = Command::new(carrier_bin())
        .args(["demo", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--> Stores.CreateStore"), "flow log shown:\n{stdout}");
    assert!(stdout.contains("--> Baskets.Store.On(stores.StoreCreated)"));
    assert!(stdout.contains("<-- Stores.IntegrationEvents.On(stores.ProductRemoved)"));
    assert!(stdout.contains("OK: every cache agrees with its owner, and the order went from checkout to completion."));
    assert!(stdout.contains("--> Depot.Store.On(stores.StoreCreated)"));
    // The order story's flow, across contexts.
    assert!(stdout.contains("--> Ordering.Basket.On(baskets.BasketCheckedOut)"), "{stdout}");
    assert!(stdout.contains("--> Depot.Order.On(ordering.OrderCreated)"));
    assert!(stdout.contains("<-- Ordering.IntegrationEvents.On(ordering.OrderCompleted)"));
    assert!(stdout.contains("Hi Ada, your order"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_a_published_event_stops_on_sigterm_and_inspect_shows_it() {
    let env = TestEnv::start();
    let mut service = Command::new(carrier_bin())
        .args(["run", "--contexts", "baskets", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carrier run starts");

    let published = Command::new(carrier_bin())
        .args(["publish", "stores.StoreCreated", r#"{"id":"cli-store","name":"From The CLI","location":"Gate 3"}"#])
        .args(["--aggregate-version", "1", "--nats-url", &env.url()])
        .output()
        .expect("carrier publish runs");
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    assert!(String::from_utf8_lossy(&published.stdout).contains("stream seq 1"));

    // Applied means acknowledged: the durable's ack floor reaches the event.
    let js = async_nats::jetstream::new(env.plain_client().await);
    let durable = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id");
    wait_until(Duration::from_secs(30), "baskets acknowledges the event", || {
        let (js, durable) = (js.clone(), durable.clone());
        async move {
            let Ok(stream) = js.get_stream("STORES").await else { return false };
            let Ok(mut consumer) = stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable).await
            else {
                return false;
            };
            consumer.info().await.map(|i| i.ack_floor.stream_sequence >= 1).unwrap_or(false)
        }
    })
    .await;

    let pid = service.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.try_wait().expect("waitable") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "carrier run did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "carrier run exited with {status}");

    let inspect = Command::new(carrier_bin())
        .args(["inspect", "baskets", "--data-dir"])
        .arg(env.data_dir())
        .output()
        .expect("inspect runs");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(text.contains("cli-store") && text.contains("From The CLI"), "inspect shows the cached store:\n{text}");
    assert!(text.contains(&durable) && text.contains("last committed stream seq 1"), "and the checkpoint:\n{text}");
}

#[test]
fn an_unreachable_server_is_one_clear_line_not_a_panic() {
    let out = Command::new(carrier_bin())
        .args(["run", "--nats-url", "nats://127.0.0.1:1", "--nats-wait", "0", "--data-dir"])
        .arg(tempfile::tempdir().expect("dir").path())
        .output()
        .expect("carrier runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

/// A process started before its server (or while it restarts) waits for it, says so once, and
/// runs when it comes; `command` takes a timeout with a unit.
#[test]
fn run_waits_for_a_server_that_is_not_there_yet() {
    let port = carrier_tests::browser::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let data = tempfile::tempdir().expect("dir");
    let dir = data.path().to_string_lossy().to_string();
    let mut carrier = carrier_tests::CarrierProcess::spawn(&[
        "run",
        "--contexts",
        "stores",
        "--nats-url",
        &url,
        "--nats-wait",
        "60s",
        "--no-dashboard",
        "--data-dir",
        &dir,
    ]);
    carrier.wait_for_output("NATS is not there yet", Duration::from_secs(30));
    let store = tempfile::tempdir().expect("dir");
    let _server = carrier_actors::LocalNatsServer::start_in(store.path(), Some(port)).expect("server starts");
    let out = carrier.wait_for_output("carrier is running", Duration::from_secs(60));
    assert_eq!(out.matches("NATS is not there yet").count(), 1, "said once:\n{out}");
    let create = r#"{"command":"create_store","id":"s-1","name":"Late","location":"Here"}"#;
    let reply = Command::new(carrier_bin())
        .args(["command", "stores", create, "--json", "--timeout", "8s", "--nats-url", &url])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&reply.stdout);
    assert!(reply.status.success(), "{}", String::from_utf8_lossy(&reply.stderr));
    assert_eq!(stdout.trim().lines().count(), 1, "--json is one line: {stdout}");
    let bad = Command::new(carrier_bin())
        .args(["command", "stores", create, "--timeout", "8 parsecs", "--nats-url", &url])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn a_payload_that_breaks_the_contract_names_the_field() {
    let out = Command::new(carrier_bin())
        .args(["publish", "stores.ProductPriceIncreased", r#"{"id":"p","delta":0}"#, "--aggregate-version", "2"])
        .output()
        .expect("carrier runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("field `delta` must be greater than zero"), "{stderr}");
}

fn carrier(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(carrier_bin()).args(args).args(["--nats-url", url]).output().expect("carrier runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    use carrier_messages::header;
    let env = TestEnv::start();
    let system = env.system(&["baskets"]).await;
    let client = env.plain_client().await;
    let js = async_nats::jetstream::new(client.clone());

    // A poison message: an event type nobody knows.
    let mut h = async_nats::HeaderMap::new();
    h.insert(header::EVENT_ID, "0190a0b0-0000-7000-8000-0000000000b1");
    h.insert(header::EVENT_TYPE, "stores.StoreArchived");
    h.insert(header::AGGREGATE_ID, "old");
    h.insert(header::AGGREGATE_VERSION, "2");
    h.insert(header::CONTENT_TYPE, "application/json");
    js.publish_with_headers("stores.store.archived", h, r#"{"id":"old"}"#.into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    // A good event that an older deployment dead-lettered, waiting to be replayed.
    let mut h = async_nats::HeaderMap::new();
    h.insert(header::EVENT_ID, "0190a0b0-0000-7000-8000-0000000000b2");
    h.insert(header::EVENT_TYPE, "stores.StoreCreated");
    h.insert(header::AGGREGATE_ID, "revived");
    h.insert(header::AGGREGATE_VERSION, "1");
    h.insert(header::CONTENT_TYPE, "application/json");
    h.insert("Carrier-Dlq-Original-Subject", "stores.store.created");
    h.insert("Carrier-Dlq-Reason", "unknown_event_type");
    let body = r#"{"id":"revived","name":"Back From The Dead","location":"crypt"}"#;
    js.publish_with_headers("dlq.baskets.stores.store.created", h, body.into())
        .await
        .expect("sent")
        .await
        .expect("stored");

    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().expect("baskets");
    wait_until(Duration::from_secs(30), "the poison message is dead-lettered", || {
        let b = baskets.clone();
        async move {
            b.consumer("stores").expect("stores consumer").dead_lettered.load(std::sync::atomic::Ordering::Relaxed) == 1
        }
    })
    .await;

    let url = env.url();
    let (ok, list, err) = carrier(&["dlq", "list", "baskets"], &url);
    assert!(ok, "{err}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "two dead letters:\n{list}");
    // Which of the two was stored first depends on timing: find each by what it is.
    let seq_of = |needle: &str| -> String {
        let line = lines.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} listed:\n{list}"));
        line.split_whitespace().next().expect("a sequence").to_string()
    };
    let (revived, poison) = (seq_of("revived@1"), seq_of("old@2"));
    assert!(lines.iter().all(|l| l.contains("unknown_event_type")), "{list}");
    assert!(lines.iter().any(|l| l.contains("stores.store.created") && l.contains("revived@1")), "{list}");
    assert!(lines.iter().any(|l| l.contains("stores.store.archived") && l.contains("old@2")), "{list}");

    let (ok, shown, err) = carrier(&["dlq", "show", "baskets", &poison], &url);
    assert!(ok, "{err}");
    assert!(shown.contains("Carrier-Dlq-Reason: unknown_event_type"), "{shown}");
    assert!(shown.contains("\"id\": \"old\""), "the body is shown as JSON:\n{shown}");

    let (ok, replayed, err) = carrier(&["dlq", "replay", "baskets", &revived], &url);
    assert!(ok, "{err}");
    assert!(replayed.contains(&format!("replayed dead letter {revived}")), "{replayed}");
    wait_until(Duration::from_secs(30), "the replayed event reaches the cache", || {
        let b = baskets.clone();
        async move { b.db.store("revived").ok().flatten().is_some_and(|s| s.name == "Back From The Dead") }
    })
    .await;

    let (ok, purged, err) = carrier(&["dlq", "purge", "baskets", "--all"], &url);
    assert!(ok, "{err}");
    assert!(purged.contains("purged 1 dead letters"), "{purged}");
    let (_, list, _) = carrier(&["dlq", "list", "baskets"], &url);
    assert!(list.contains("no dead letters"), "{list}");
    let (ok, _, err) = carrier(&["dlq", "show", "baskets", &poison], &url);
    assert!(!ok && err.contains(&format!("no dead letter {poison}")), "{err}");
    system.shutdown().await;
}

#[test]
fn run_with_local_nats_is_a_whole_setup_in_one_command_and_stops_cleanly_on_sigterm() {
    let data = tempfile::Builder::new().prefix("carrier-local-").tempdir().expect("temp dir");
    let dir = data.path().to_string_lossy().to_string();
    let mut carrier = carrier_tests::CarrierProcess::spawn(&[
        "run",
        "--local-nats",
        "--contexts",
        "stores",
        "--data-dir",
        &dir,
        "--dashboard-addr",
        "127.0.0.1:0",
    ]);
    let out = carrier.wait_for_output("carrier is running", Duration::from_secs(30));
    let start = out.find("nats://127.0.0.1:").expect("the local server's URL is printed");
    let url: String = out[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let create = r#"{"command":"create_store","id":"s-1","name":"Local","location":"Here"}"#;
    let reply =
        Command::new(carrier_bin()).args(["command", "stores", create, "--nats-url", &url]).output().expect("runs");
    assert!(reply.status.success(), "{}", String::from_utf8_lossy(&reply.stderr));
    assert!(data.path().join("nats").join("jetstream").is_dir(), "the server's store is under the data directory");
    let pid = carrier.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let out = carrier.wait_for_output("stopped", Duration::from_secs(15));
    assert!(!out.contains("shutdown took longer"), "{out}");
}

/// `carrier bench --json` runs every measurement at a small scale on its own server, checks the
/// cache's end state, and prints one JSON object with every figure.
#[test]
fn bench_json_is_one_object_with_every_figure() {
    let figures = bench_json(&[
        "--events",
        "2000",
        "--products",
        "100",
        "--rounds",
        "1",
        "--latency-events",
        "200",
        "--commands",
        "300",
        "--rate",
        "2000",
    ]);
    for key in
        ["bare_raw", "own_raw", "cache_path", "publish_bare", "publish_own", "relay", "lookups", "latency_p50_ms"]
    {
        let value = figures[key].as_f64().unwrap_or_else(|| panic!("{key} is a number: {figures}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    let (p50, p99, max) = (
        figures["latency_p50_ms"].as_f64().unwrap(),
        figures["latency_p99_ms"].as_f64().unwrap(),
        figures["latency_max_ms"].as_f64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "percentiles in order: {figures}");
    assert_eq!(figures["events"], 2000);
    assert_eq!(figures["products"], 100);
    assert_eq!(figures["rounds"], 1);
    assert!(figures["nats_server_version"].as_str().is_some_and(|v| !v.is_empty()));
}

/// `carrier bench --scale --json` runs `carrier run` as a child process through catch-up,
/// restarts after SIGTERM and SIGKILL and two rebuilds under a command probe, checks the end
/// state, and prints one JSON object with every figure.
#[test]
fn bench_scale_json_measures_a_real_carrier_run() {
    let f = bench_json(&["--scale", "--events", "3000", "--products", "2000"]);
    for key in [
        "small_catch_up",
        "catch_up",
        "ready_after_sigterm_ms",
        "ready_after_sigkill_ms",
        "rss_peak_mb",
        "rss_peak_mb_rebuilds",
        "file_mb_after_catch_up",
        "catch_up_per_small_catch_up",
    ] {
        let value = f[key].as_f64().unwrap_or_else(|| panic!("{key} is a number: {f}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    let rebuilds = f["rebuild_seconds"].as_array().expect("rebuild_seconds");
    assert_eq!(rebuilds.len(), 2, "{f}");
    assert!(rebuilds.iter().all(|s| s.as_f64().is_some_and(|s| s > 0.0)), "{f}");
    assert!(f["probe_commands_during_rebuild"].as_u64().is_some_and(|n| n > 0), "the probe ran: {f}");
    // The inbox's time index holds each inbox entry once, however many rebuilds ran.
    assert_eq!(f["inbox_rows"], 3000, "{f}");
    assert_eq!(f["inbox_indexed"], f["inbox_rows"], "{f}");
    assert_eq!(f["products"], 2000);
    // No line per event at the default level.
    assert!(f["log_lines_during_catch_up"].as_u64().is_some_and(|n| n < 50), "{f}");
}

/// Runs `carrier bench <args> --json`, which must succeed and print exactly one line on stdout:
/// that line, parsed.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(carrier_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout:\n{stdout}");
    serde_json::from_str(lines[0]).expect("stdout is JSON")
}

/// `carrier run` against `env`, ready, with its dashboard on a free port.
fn ready_service(env: &TestEnv, data: &std::path::Path) -> carrier_tests::CarrierProcess {
    carrier_tests::CarrierProcess::run_ready(&env.url(), data, "stores,baskets", &[]).0
}

#[test]
fn a_stop_is_bounded_when_the_server_is_gone_and_a_second_signal_ends_it_at_once() {
    let mut env = TestEnv::start();
    let data = env.data_dir();
    // The server dies first (as `timeout` signalling the whole process group does), then SIGTERM.
    let mut carrier = ready_service(&env, &data);
    env.nats.kill();
    let signalled = std::time::Instant::now();
    carrier.signal("TERM");
    let exited = carrier.wait_exit(Duration::from_secs(12)).expect("exits within the 10 s stop limit");
    assert!(exited.is_some(), "exits by itself, not killed");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(11), "stop took {took:?}");

    env.nats.restart().expect("server back");
    let mut carrier = ready_service(&env, &data);
    env.nats.kill();
    carrier.signal("TERM");
    // A second signal once the stop has begun, as an impatient operator sends it.
    carrier.wait_for_output("stopping:", Duration::from_secs(5));
    let second = std::time::Instant::now();
    carrier.signal("TERM");
    let code = carrier.wait_exit(Duration::from_secs(3)).expect("a second signal ends it at once");
    assert!(code.is_some(), "exits by itself");
    assert!(second.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_second_instance_of_a_context_is_refused_instead_of_splitting_its_stream() {
    // The central inventory (seed 003) has no standby: it runs on one instance at a time (the
    // mall's contexts with effects, which follow their own streams, would stand by instead).
    let ready_service = |env: &TestEnv, data: &std::path::Path| {
        carrier_tests::CarrierProcess::run_ready(&env.url(), data, "central", &[]).0
    };
    let env = TestEnv::start();
    let first_dir = env.data_dir();
    let mut first = ready_service(&env, &first_dir);
    let second_dir = tempfile::tempdir().expect("dir");
    let out = Command::new(carrier_bin())
        .args(["run", "--contexts", "central", "--nats-url", &env.url(), "--data-dir"])
        .arg(second_dir.path())
        .args(["--dashboard-addr", "127.0.0.1:0"])
        .output()
        .expect("carrier runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("central already runs in another Carrier instance"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "names the holder: {stderr}");
    // Once the first stops, its leases are given back and another instance starts at once.
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(12)).expect("stops");
    let mut second = ready_service(&env, second_dir.path());
    // The same instance (its data directory) takes its own lease back after a crash.
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(5)).expect("killed");
    let again = std::time::Instant::now();
    let _back = ready_service(&env, second_dir.path());
    assert!(again.elapsed() < Duration::from_secs(10), "restarted without waiting for the lease to expire");
}

/// The server of `run --local-nats` dies with it, the next start makes one server (never two on
/// one store), and `command` finds it through the data directory without being told its URL.
#[test]
fn a_local_server_dies_with_its_run_and_other_commands_find_it() {
    let data = tempfile::Builder::new().prefix("carrier-local-").tempdir().expect("temp dir");
    let dir = data.path().to_string_lossy().to_string();
    let store = data.path().join("nats").join("jetstream");
    let servers_on_store = || {
        std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).to_string())
            .filter(|c| c.contains("nats-server") && c.contains(store.to_string_lossy().as_ref()))
            .count()
    };
    let run = || {
        carrier_tests::CarrierProcess::spawn(&[
            "run",
            "--local-nats",
            "--contexts",
            "stores",
            "--data-dir",
            &dir,
            "--no-dashboard",
        ])
    };
    let mut first = run();
    first.wait_for_output("carrier is running", Duration::from_secs(30));
    assert_eq!(servers_on_store(), 1);
    let create = r#"{"command":"create_store","id":"s-1","name":"Found","location":"Here"}"#;
    let reply = Command::new(carrier_bin())
        .args(["command", "stores", create])
        .env("CARRIER_DATA_DIR", &dir)
        .env_remove("NATS_URL")
        .output()
        .expect("runs");
    assert!(reply.status.success(), "found through the data directory: {}", String::from_utf8_lossy(&reply.stderr));

    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while servers_on_store() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(servers_on_store(), 0, "the server died with its parent");

    let mut second = run();
    second.wait_for_output("carrier is running", Duration::from_secs(30));
    assert_eq!(servers_on_store(), 1, "one server on the store");
    second.signal("TERM");
    second.wait_for_output("stopped", Duration::from_secs(15));
}

/// `inspect` tells a file in use from one a killed process left, and repairs the latter.
#[test]
fn inspect_tells_in_use_from_needs_repair_and_repairs() {
    let env = TestEnv::start();
    let data = tempfile::tempdir().expect("dir");
    let dir = data.path().to_string_lossy().to_string();
    let url = env.url();
    let mut running = carrier_tests::CarrierProcess::spawn(&[
        "run",
        "--contexts",
        "stores",
        "--nats-url",
        &url,
        "--data-dir",
        &dir,
        "--no-dashboard",
    ]);
    running.wait_for_output("carrier is running", Duration::from_secs(30));
    let inspect = |extra: &[&str]| {
        Command::new(carrier_bin()).args(["inspect", "stores", "--data-dir", &dir]).args(extra).output().expect("runs")
    };
    let out = inspect(&[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in use"), "{}", String::from_utf8_lossy(&out.stderr));
    running.signal("KILL");
    let _ = running.wait_exit(Duration::from_secs(10));
    let out = inspect(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs repair") && stderr.contains("--repair"), "{stderr}");
    let out = inspect(&["--repair"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoints"), "{}", String::from_utf8_lossy(&out.stdout));
}
