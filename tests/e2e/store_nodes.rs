//! Seed 003's store nodes over real HTTP and a real nats-server: `carrier central` and
//! `carrier store-node` as child processes; reads, proxied writes, idempotency per store,
//! read-your-writes, the central down and back, a trimmed stream, a restarted nats-server, a node
//! killed mid-sync, and bad input.

use std::time::{Duration, Instant};

use carrier_tests::{http, wait_until, CarrierProcess, HttpResponse, TestEnv};
use serde_json::Value;

use super::central::start_central;

const KEY: (&str, &str) = ("X-API-Key", "demo");

/// `carrier store-node --store-id <id>` against `env`'s server, without a dashboard.
fn start_node(env: &TestEnv, store: &str, data: &std::path::Path, faults: Option<&str>) -> (CarrierProcess, String) {
    start_node_with(env, store, data, faults, &["--no-dashboard"])
}

/// Like [`start_node`], with `extra` arguments.
fn start_node_with(
    env: &TestEnv,
    store: &str,
    data: &std::path::Path,
    faults: Option<&str>,
    extra: &[&str],
) -> (CarrierProcess, String) {
    let url = env.url();
    let data = data.to_string_lossy().to_string();
    let args = [
        "store-node",
        "--store-id",
        store,
        "--nats-url",
        &url,
        "--data-dir",
        &data,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-keys",
        "demo",
    ];
    let env_vars: Vec<(&str, &str)> = faults.map(|f| vec![("CARRIER_FAULTS", f)]).unwrap_or_default();
    let mut node = CarrierProcess::spawn_env(&[&args[..], extra].concat(), &env_vars);
    let base = node.url_after("http", Duration::from_secs(30));
    (node, base)
}

fn post(base: &str, path: &str, body: &str) -> HttpResponse {
    http("POST", &format!("{base}{path}"), &[KEY], Some(body))
}

fn get(base: &str, path: &str) -> HttpResponse {
    http("GET", &format!("{base}{path}"), &[KEY], None)
}

/// Every product a base URL lists, all pages, as (id, name, price, available, version).
fn products(base: &str, list: &str, page: usize) -> Vec<(String, String, f64, i64, u64)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let body = get(base, &format!("{list}?offset={offset}&limit={page}")).json();
        let items = body["products"].as_array().cloned().unwrap_or_default();
        for p in &items {
            out.push((
                p["productId"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
                p["price"].as_f64().unwrap_or_default(),
                p["available"].as_i64().unwrap_or_default(),
                p["version"].as_u64().unwrap_or_default(),
            ));
        }
        if !body["pagination"]["hasMore"].as_bool().unwrap_or(false) {
            return out;
        }
        offset += items.len();
    }
}

/// Waits until the node lists exactly what the central does.
async fn converged(central: &str, node: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (want, have) = (products(central, "/v1/inventory", 1000), products(node, "/v1/store/inventory", 200));
        if want == have {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not converge within {limit:?}: central {} products, node {}; first difference: {:?}",
            want.len(),
            have.len(),
            want.iter().zip(&have).find(|(a, b)| a != b).map(|(a, b)| (a.clone(), b.clone()))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `count` products through the central's commands over NATS, all in flight at once.
async fn create_products(env: &TestEnv, prefix: &str, count: usize) {
    let client = env.plain_client().await;
    let requests = (0..count).map(|i| {
        let client = client.clone();
        let body = format!(
            r#"{{"command":"create_product","product_id":"{prefix}-{i:05}","name":"Item {i}","price":{},"available":{}}}"#,
            100 + i,
            10 + i % 7
        );
        async move {
            let reply = client.request("cmd.central", body.into()).await.expect("the central answers");
            let reply: Value = serde_json::from_slice(&reply.payload).expect("a command reply");
            assert_eq!(reply["ok"], true, "{reply}");
        }
    });
    use futures::StreamExt;
    futures::stream::iter(requests).buffer_unordered(200).collect::<Vec<()>>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_store_nodes_serve_reads_and_proxy_writes_with_their_own_keys() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    for (id, qty) in [("PROD-001", 10), ("PROD-002", 3)] {
        let body = format!(r#"{{"productId":"{id}","name":"Wireless Headphones","price":99.99,"available":{qty}}}"#);
        assert_eq!(post(&central, "/v1/inventory", &body).status, 201);
    }
    let (_s1, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    let (_s2, s2) = start_node(&env, "store-s2", &dir.path().join("s2"), None);
    converged(&central, &s1, Duration::from_secs(20)).await;
    converged(&central, &s2, Duration::from_secs(20)).await;

    // A read says how fresh it is, and answers 304 to its own ETag.
    let read = get(&s1, "/v1/store/inventory/PROD-001");
    assert_eq!((read.status, read.header("etag")), (200, Some("\"1\"")));
    assert!(read.header("x-carrier-lag").is_some() && read.header("age").is_some(), "{:?}", read.headers);
    let cached = http("GET", &format!("{s1}/v1/store/inventory/PROD-001"), &[KEY, ("If-None-Match", "\"1\"")], None);
    assert_eq!(cached.status, 304);
    let list = get(&s1, "/v1/store/inventory").json();
    assert_eq!(list["cacheInfo"]["totalProducts"], 2);
    assert_eq!(
        (list["pagination"]["limit"].as_u64(), list["pagination"]["hasMore"].as_bool()),
        (Some(50), Some(false))
    );

    // A write through store s1: answered once s1 holds it (read your writes, no waiting here).
    let update =
        r#"{"storeId":"store-s1","productId":"PROD-001","delta":-2,"version":1,"idempotencyKey":"order-12345"}"#;
    let applied = post(&s1, "/v1/store/inventory/updates", update);
    assert_eq!(applied.status, 200, "{}", applied.body);
    let result = applied.json();
    assert_eq!(
        (result["applied"].as_bool(), result["newQuantity"].as_i64(), result["newVersion"].as_u64()),
        (Some(true), Some(8), Some(2))
    );
    assert!(result.get("note").is_none(), "the node held the version before answering: {result}");
    assert_eq!(get(&s1, "/v1/store/inventory/PROD-001").json()["available"], 8);
    // Store s2 reaches it too, and a read may wait for the version it knows of.
    let waited = get(&s2, "/v1/store/inventory/PROD-001?min_version=2");
    assert_eq!((waited.status, waited.json()["available"].as_i64()), (200, Some(8)));
    // The same request again through s1: the stored answer, nothing applied twice.
    let replay = post(&s1, "/v1/store/inventory/updates", update);
    assert_eq!((replay.status, replay.header("idempotent-replayed")), (200, Some("true")));
    assert_eq!(replay.json()["newVersion"], 2);
    // The same key through s2 is s2's own key ("store-s2-order-12345"): a new update.
    let other_store = post(
        &s2,
        "/v1/store/inventory/updates",
        r#"{"productId":"PROD-001","delta":-1,"version":2,"idempotencyKey":"order-12345"}"#,
    );
    assert_eq!((other_store.status, other_store.json()["newVersion"].as_u64()), (200, Some(3)));
    // The key again with other parameters, a stale version, too little stock, an unknown product.
    let reused = post(
        &s1,
        "/v1/store/inventory/updates",
        r#"{"productId":"PROD-001","delta":-5,"idempotencyKey":"order-12345"}"#,
    );
    assert_eq!((reused.status, reused.json()["errorType"].as_str()), (422, Some("idempotency_key_reused")));
    let conflict = post(&s1, "/v1/store/inventory/updates", r#"{"productId":"PROD-001","delta":-1,"version":1}"#);
    let c = conflict.json();
    assert_eq!(conflict.status, 409);
    assert_eq!(
        (c["errorType"].as_str(), c["newQuantity"].as_i64(), c["newVersion"].as_u64()),
        (Some("version_conflict"), Some(7), Some(3))
    );
    let if_match = http(
        "POST",
        &format!("{s1}/v1/store/inventory/updates"),
        &[KEY, ("If-Match", "\"1\"")],
        Some(r#"{"productId":"PROD-001","delta":-1}"#),
    );
    assert_eq!(if_match.status, 412);
    let short = post(&s1, "/v1/store/inventory/updates", r#"{"productId":"PROD-002","delta":-4}"#);
    assert_eq!((short.status, short.json()["errorType"].as_str()), (422, Some("insufficient_stock")));
    let missing = get(&s1, "/v1/store/inventory/PROD-999");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["details"]["suggestion"], "Product may not exist or cache may be out of sync");

    // A batch through s2: a result per item.
    let batch = post(
        &s2,
        "/v1/store/inventory/batch-updates",
        r#"{"storeId":"store-s2","updates":[
        {"productId":"PROD-001","delta":-1,"version":3,"idempotencyKey":"batch-item-1"},
        {"productId":"PROD-002","delta":-3,"version":2,"idempotencyKey":"batch-item-2"}]}"#,
    );
    let b = batch.json();
    assert_eq!(
        (b["storeId"].as_str(), b["successCount"].as_u64(), b["failureCount"].as_u64()),
        (Some("store-s2"), Some(1), Some(1))
    );
    assert_eq!(b["results"][1]["errorType"], "version_conflict");

    converged(&central, &s1, Duration::from_secs(20)).await;
    converged(&central, &s2, Duration::from_secs(20)).await;
    let status = get(&s1, "/v1/store/sync/status").json();
    assert_eq!(
        (status["eventSync"]["fallbackMode"].as_bool(), status["eventSync"]["consecutiveFailures"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(status["fullSync"]["lastReason"], "first start");
    assert_eq!(get(&s1, "/v1/store/cache/stats").json()["totalProducts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_central_down_reads_are_served_and_writes_answer_503_at_once() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (central_process, central) = start_central(&env, &dir.path().join("central"));
    assert_eq!(
        post(&central, "/v1/inventory", r#"{"productId":"P","name":"Kettle","price":29.99,"available":5}"#).status,
        201
    );
    let (_s1, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(20)).await;

    drop(central_process);
    let read = get(&s1, "/v1/store/inventory/P");
    assert_eq!((read.status, read.json()["available"].as_i64()), (200, Some(5)));
    for _ in 0..4 {
        let started = Instant::now();
        let refused = post(&s1, "/v1/store/inventory/updates", r#"{"productId":"P","delta":-1}"#);
        let took = started.elapsed();
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "central_unavailable");
        assert!(refused.header("retry-after").is_some());
        assert!(took < Duration::from_millis(100), "a write with the central down took {took:?}");
    }
    // Back, on the same data: writes go through again (once the breaker's pause is over).
    let (_central_again, central) = start_central(&env, &dir.path().join("central"));
    wait_until(Duration::from_secs(20), "a write goes through again", || {
        let s1 = s1.clone();
        async move {
            post(&s1, "/v1/store/inventory/updates", r#"{"productId":"P","delta":-1,"idempotencyKey":"back"}"#).status
                == 200
        }
    })
    .await;
    converged(&central, &s1, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_below_a_nodes_position_is_noticed_and_full_synced() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    create_products(&env, "T", 30).await;
    let (s1_process, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(20)).await;
    let before = get(&s1, "/v1/store/sync/status").json();
    let position = before["eventSync"]["lastEventOffset"].as_u64().expect("position");
    drop(s1_process);

    // While the node is down: changes, a deletion, then the stream keeps only its last 5.
    for i in 0..20 {
        let body = format!(r#"{{"productId":"T-{:05}","delta":-1}}"#, i);
        assert_eq!(post(&central, "/v1/inventory/updates", &body).status, 200);
    }
    assert_eq!(http("DELETE", &format!("{central}/v1/inventory/T-00029"), &[KEY], None).status, 200);
    let js = async_nats::jetstream::new(env.plain_client().await);
    let stream = js.get_stream("CENTRAL").await.expect("CENTRAL");
    stream.purge().keep(5).await.expect("purged");

    let (_s1_again, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(30)).await;
    let status = get(&s1, "/v1/store/sync/status").json();
    let lost = &status["eventSync"]["lastPositionLost"];
    assert_eq!(lost["requested"].as_u64(), Some(position + 1), "{status}");
    assert!(lost["firstRetained"].as_u64().expect("first retained") > position + 1, "{status}");
    assert!(status["eventSync"]["positionsLost"].as_u64() >= Some(1));
    assert!(status["fullSync"]["lastReason"].as_str().unwrap_or_default().starts_with("position lost"), "{status}");
    // After the sync the consumer starts at the snapshot's position, not replaying what the
    // snapshot already holds: it acknowledges up to the stream's end with nothing left to apply.
    assert_eq!(status["eventSync"]["lastEventOffset"], status["fullSync"]["lastThrough"], "{status}");
    drop(_s1_again);

    // The product deleted while the node was down came as a tombstone: its version is kept.
    let file = dir.path().join("s1").join("store.redb");
    let tables = carrier_storage::dump_tables(&file, 10_000).expect("store.redb reads");
    let versions = tables.iter().find(|t| t.table == "entity_versions").expect("entity_versions");
    let deleted = versions.entries.iter().find(|(k, _)| k.to_string().contains("T-00029")).map(|(_, v)| v.clone());
    assert_eq!(deleted, Some(Value::from(2)), "the tombstone's version: {:?}", versions.entries.last());
    let products = tables.iter().find(|t| t.table == "products").expect("products");
    assert_eq!(products.rows, 29, "the deleted product is gone");

    // The stream started over (deleted and made again): the node's checkpoint is past its end.
    drop(_central);
    js.delete_stream("CENTRAL").await.expect("deleted");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    assert_eq!(
        post(&central, "/v1/inventory", r#"{"productId":"NEW-1","name":"New","price":1,"available":1}"#).status,
        201
    );
    let (_s1_third, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(30)).await;
    let status = get(&s1, "/v1/store/sync/status").json();
    assert_eq!(status["eventSync"]["positionsLost"], 1, "counted again after the restart: {status}");
    assert_eq!(status["eventSync"]["lastEventOffset"], 1, "following the new stream from its start: {status}");
    // And events of the new stream flow to it.
    assert_eq!(post(&central, "/v1/inventory/updates", r#"{"productId":"NEW-1","delta":4}"#).status, 200);
    converged(&central, &s1, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_converges_after_nats_server_restarts_and_after_being_killed_mid_sync() {
    let mut env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    create_products(&env, "K", 3000).await;

    // Killed during its first full sync (its pages slowed down so that the kill lands in it).
    let (mut node, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), Some("resync_slow_pages=3"));
    wait_until(Duration::from_secs(20), "the first full sync is in progress", || {
        let s1 = s1.clone();
        async move { get(&s1, "/v1/store/sync/status").json()["inProgress"] == true }
    })
    .await;
    node.signal("KILL");
    node.wait_exit(Duration::from_secs(10)).expect("killed");
    let (_node, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(60)).await;

    // nats-server restarted under it: changes made after it is back still arrive.
    env.nats.restart().expect("nats-server restarts on the same port and store");
    wait_until(Duration::from_secs(30), "an update goes through after the restart", || {
        let central = central.clone();
        async move {
            post(&central, "/v1/inventory/updates", r#"{"productId":"K-00001","delta":5,"idempotencyKey":"after"}"#)
                .status
                == 200
        }
    })
    .await;
    converged(&central, &s1, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_to_a_store_node_get_a_4xx_naming_the_problem() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    assert_eq!(
        post(&central, "/v1/inventory", r#"{"productId":"P","name":"Kettle","price":29.99,"available":5}"#).status,
        201
    );
    let (_s1, s1) = start_node(&env, "store-s1", &dir.path().join("s1"), None);
    converged(&central, &s1, Duration::from_secs(20)).await;

    let missing_key = http("GET", &format!("{s1}/v1/store/inventory"), &[], None);
    assert_eq!((missing_key.status, missing_key.json()["error"]["code"].as_str()), (401, Some("missing_api_key")));
    let wrong_key = http("GET", &format!("{s1}/v1/store/inventory"), &[("X-API-Key", "nope")], None);
    assert_eq!(wrong_key.status, 401);
    assert_eq!(http("GET", &format!("{s1}/health"), &[], None).status, 200);
    for (query, field) in [("limit=10000", "limit"), ("limit=-1", "limit"), ("offset=x", "offset")] {
        let r = get(&s1, &format!("/v1/store/inventory?{query}"));
        assert_eq!((r.status, r.json()["error"]["details"]["field"].as_str()), (400, Some(field)), "{query}");
    }
    let bad_min = get(&s1, "/v1/store/inventory/P?min_version=abc");
    assert_eq!((bad_min.status, bad_min.json()["error"]["details"]["field"].as_str()), (400, Some("min_version")));
    let behind = get(&s1, "/v1/store/inventory/P?min_version=99");
    assert_eq!((behind.status, behind.json()["error"]["code"].as_str()), (503, Some("cache_behind")));
    for (body, status, named) in [
        (r#"{"productId":"P","delta":1"#, 400, "malformed_json"),
        (r#"{"productId":"P","delta":"x"}"#, 400, "delta"),
        (r#"{"productId":"P"}"#, 400, "delta"),
        (r#"{"productId":"P","delta":1,"extra":true}"#, 400, "extra"),
        (r#"{"storeId":"store-s9","productId":"P","delta":1}"#, 400, "storeId"),
    ] {
        let r = post(&s1, "/v1/store/inventory/updates", body);
        let error = &r.json()["error"];
        let got = error["details"]["field"].as_str().or(error["code"].as_str()).unwrap_or_default().to_string();
        assert_eq!((r.status, got.as_str()), (status, named), "{body}: {}", r.body);
    }
    let big = format!(r#"{{"productId":"P","delta":1,"pad":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let (status, body) =
        carrier_tests::http_post_oversized(&format!("{s1}/v1/store/inventory/updates"), &[KEY], big.as_bytes());
    assert_eq!(status, 413, "{body}");
    // Nothing reached the central.
    assert_eq!(get(&central, "/v1/inventory/P").json()["version"], 1);

    // Bad settings name themselves.
    let url = env.url();
    for (args, needle) in [
        (vec!["store-node", "--store-id", "bad id!", "--nats-url", &url, "--api-keys", "demo"], "--store-id"),
        (
            vec!["store-node", "--store-id", "s", "--nats-url", &url, "--api-keys", "demo", "--event-batch-limit", "5"],
            "--event-batch-limit",
        ),
        (vec!["store-node", "--nats-url", &url, "--api-keys", "demo"], "--store-id"),
    ] {
        let mut carrier = CarrierProcess::spawn(&args);
        assert_eq!(
            carrier.wait_exit(Duration::from_secs(20)).expect("exits"),
            Some(2),
            "{args:?}: {}",
            carrier.output()
        );
        assert!(carrier.output().contains(needle), "{args:?}: {}", carrier.output());
    }
}

#[test]
fn the_inventory_demo_exits_zero_when_both_nodes_equal_the_central() {
    let env = TestEnv::start();
    let out = std::process::Command::new(carrier_tests::carrier_bin())
        .args(["demo", "--story", "inventory", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("version_conflict (409)"), "{stdout}");
    assert!(stdout.contains("Idempotent-Replayed: true"), "{stdout}");
    assert!(stdout.contains("answers 503 central_unavailable"), "{stdout}");
    assert!(stdout.contains("--> Central.UpdateInventory"), "the flow log names the command: {stdout}");
    assert!(stdout.contains("OK: both store nodes' caches equal the central inventory."), "{stdout}");
}

/// `carrier bench --store-node --json` at a small scale: one object with the HTTP figures of the
/// node and of its static baseline, measured by wrk in the same run, and the full-sync times.
#[test]
fn the_store_node_bench_measures_reads_against_a_static_baseline() {
    let out = std::process::Command::new(carrier_tests::carrier_bin())
        .args([
            "bench",
            "--store-node",
            "--products",
            "2000",
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--connections",
            "8",
            "--json",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout:\n{stdout}");
    let f: Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(f["products"], 2000);
    for side in ["baseline", "node"] {
        assert!(f[side]["requests_per_s"].as_f64().is_some_and(|r| r > 0.0), "{f}");
        assert!(f[side]["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{f}");
    }
    assert_eq!(f["node"]["errors"], 0, "every read found its product: {f}");
    assert!(f["node_over_baseline"].as_f64().is_some_and(|r| r > 0.0), "{f}");
    assert!(f["first_sync_s"].as_f64().is_some_and(|s| s > 0.0) && f["forced_sync_s"].as_f64().is_some(), "{f}");
}

/// A store node's dashboard, in a real headless browser: its sync state, lag and fallback mode in
/// the store node's panel, and its full syncs (first start, then a forced one) in their table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_nodes_dashboard_shows_its_sync_state_lag_and_full_syncs() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, central) = start_central(&env, &dir.path().join("central"));
    create_products(&env, "D", 25).await;
    let (mut node, s1) =
        start_node_with(&env, "store-s1", &dir.path().join("s1"), None, &["--dashboard-addr", "127.0.0.1:0"]);
    let dashboard = node.url_after("url", Duration::from_secs(30));
    converged(&central, &s1, Duration::from_secs(20)).await;
    wait_until(Duration::from_secs(20), "the first full sync is done", || {
        let s1 = s1.clone();
        async move { get(&s1, "/v1/store/sync/status").json()["fullSync"]["completed"] == 1 }
    })
    .await;
    assert_eq!(post(&s1, "/v1/store/sync/force", "").status, 200);

    let browser = carrier_tests::browser::Browser::start();
    browser.goto(&format!("{dashboard}/"));
    browser.wait_for(
        Duration::from_secs(15),
        "the store node's panel and its full syncs",
        r#"const panel = document.querySelector('section.panel[data-title="Store node store-s1"]');
           const row = (k) => panel && panel.querySelector(`tr[data-key="${k}"] td`)?.textContent;
           const sync = document.querySelector('#full-syncs tr[data-context="store"]');
           return !!panel && row('sync state') === 'following events' && row('lag (events)') === '0'
               && row('fallback mode') === 'false' && row('applied through') === '25'
               && !!sync && sync.dataset.state === 'synced' && sync.textContent.includes('forced')
               && sync.children[7].textContent.trim() === '2 / 0';"#,
    );

    // The same for a terminal: `carrier status`.
    let out = std::process::Command::new(carrier_tests::carrier_bin())
        .args(["status", "--url", &dashboard])
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["Full syncs", "synced", "forced", "Store node store-s1", "fallback mode", "following events"] {
        assert!(text.contains(needle), "carrier status shows {needle:?}:\n{text}");
    }
}
