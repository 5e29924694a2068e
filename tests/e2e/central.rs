//! Seed 003's central inventory over real HTTP: `carrier central` as a child process on a real
//! nats-server, every endpoint, the idempotency keys, and the bad input the issue lists.

use std::time::Duration;

use carrier_tests::{http, CarrierProcess, HttpResponse, TestEnv};

const KEY: (&str, &str) = ("X-API-Key", "demo");

/// `carrier central` against `env`'s server, its HTTP API on a free loopback port.
pub(crate) fn start_central(env: &TestEnv, data: &std::path::Path) -> (CarrierProcess, String) {
    let url = env.url();
    let data = data.to_string_lossy().to_string();
    let args = ["central", "--nats-url", &url, "--data-dir", &data, "--host", "127.0.0.1", "--port", "0"];
    let mut central = CarrierProcess::spawn(&[&args[..], &["--api-keys", "demo,other", "--no-dashboard"]].concat());
    let base = central.url_after("http", Duration::from_secs(30));
    (central, base)
}

fn post(base: &str, path: &str, body: &str) -> HttpResponse {
    http("POST", &format!("{base}{path}"), &[KEY], Some(body))
}

fn error_code(response: &HttpResponse) -> String {
    response.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

fn error_field(response: &HttpResponse) -> String {
    response.json()["error"]["details"]["field"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_central_inventory_answers_seed_003s_api_with_its_rules() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, base) = start_central(&env, dir.path());

    // /health needs no key; everything else does, answered with a JSON error.
    assert_eq!(http("GET", &format!("{base}/health"), &[], None).status, 200);
    let missing = http("GET", &format!("{base}/v1/inventory"), &[], None);
    assert_eq!((missing.status, error_code(&missing).as_str()), (401, "missing_api_key"));
    let wrong = http("GET", &format!("{base}/v1/inventory"), &[("X-API-Key", "dem")], None);
    assert_eq!((wrong.status, error_code(&wrong).as_str()), (401, "invalid_api_key"));

    // Create, then read it back with its version as ETag.
    let created = post(
        &base,
        "/v1/inventory",
        r#"{"productId":"PROD-001","name":"Wireless Headphones","price":99.99,"available":10}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["price"], 99.99);
    assert_eq!(created.json()["version"], 1);
    let again = post(
        &base,
        "/v1/inventory",
        r#"{"productId":"PROD-001","name":"Wireless Headphones","price":99.99,"available":10}"#,
    );
    assert_eq!((again.status, error_code(&again).as_str()), (409, "product_exists"));
    let read = http("GET", &format!("{base}/v1/inventory/PROD-001"), &[KEY], None);
    assert_eq!((read.status, read.header("etag")), (200, Some("\"1\"")));
    assert_eq!(read.json()["available"], 10);
    let second = post(&base, "/v1/inventory", r#"{"productId":"PROD-002","name":"Cable","price":5,"available":3}"#);
    assert_eq!(second.status, 201, "{}", second.body);

    // An update, answered in the seed's shape; sent again with its key, the same answer, replayed.
    let update = r#"{"storeId":"store-s1","productId":"PROD-001","delta":-2,"version":1,"idempotencyKey":"store-s1-order-12345"}"#;
    let applied = post(&base, "/v1/inventory/updates", update);
    assert_eq!(applied.status, 200, "{}", applied.body);
    let result = applied.json();
    assert_eq!(
        (result["applied"].as_bool(), result["newQuantity"].as_i64(), result["newVersion"].as_u64()),
        (Some(true), Some(8), Some(2))
    );
    assert!(result["lastUpdated"].is_string());
    let replay = post(&base, "/v1/inventory/updates", update);
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), result, "a replay answers the stored response");
    // The same key with other parameters.
    let reused = post(
        &base,
        "/v1/inventory/updates",
        r#"{"productId":"PROD-001","delta":-3,"version":2,"idempotencyKey":"store-s1-order-12345"}"#,
    );
    assert_eq!((reused.status, reused.json()["errorType"].as_str()), (422, Some("idempotency_key_reused")));
    // A stale version: 409 with the current quantity and version, nothing changed.
    let conflict = post(&base, "/v1/inventory/updates", r#"{"productId":"PROD-001","delta":-1,"version":1}"#);
    assert_eq!(conflict.status, 409);
    let c = conflict.json();
    assert_eq!(
        (c["applied"].as_bool(), c["errorType"].as_str(), c["newQuantity"].as_i64(), c["newVersion"].as_u64()),
        (Some(false), Some("version_conflict"), Some(8), Some(2))
    );
    assert_eq!(c["errorMessage"], "version conflict: expected 2, got 1");
    // Stock never below zero.
    let short = post(&base, "/v1/inventory/updates", r#"{"productId":"PROD-001","delta":-9}"#);
    assert_eq!((short.status, short.json()["errorType"].as_str()), (422, Some("insufficient_stock")));
    let unknown = post(&base, "/v1/inventory/updates", r#"{"productId":"PROD-999","delta":1}"#);
    assert_eq!((unknown.status, unknown.json()["errorType"].as_str()), (404, Some("product_not_found")));

    // A batch: a result per item, in order; a refused item leaves the others.
    let batch = post(
        &base,
        "/v1/inventory/batch-updates",
        r#"{"storeId":"store-s1","updates":[
            {"productId":"PROD-001","delta":-1,"version":2,"idempotencyKey":"batch-item-1"},
            {"productId":"PROD-002","delta":-3,"version":2,"idempotencyKey":"batch-item-2"},
            {"productId":"PROD-001","delta":5,"version":3}]}"#,
    );
    assert_eq!(batch.status, 200, "{}", batch.body);
    let b = batch.json();
    assert_eq!(
        (b["totalCount"].as_u64(), b["successCount"].as_u64(), b["failureCount"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(b["results"][0]["newQuantity"], 7);
    assert_eq!(b["results"][1]["errorType"], "version_conflict");
    assert_eq!((b["results"][2]["newQuantity"].as_i64(), b["results"][2]["newVersion"].as_u64()), (Some(12), Some(4)));

    // Modify with If-Match: a stale one fails its precondition; a current one applies.
    let stale = http(
        "PATCH",
        &format!("{base}/v1/inventory/PROD-001"),
        &[KEY, ("If-Match", "\"1\"")],
        Some(r#"{"price":89.5}"#),
    );
    assert_eq!((stale.status, error_code(&stale).as_str()), (412, "version_conflict"));
    let modified = http(
        "PATCH",
        &format!("{base}/v1/inventory/PROD-001"),
        &[KEY, ("If-Match", "\"4\"")],
        Some(r#"{"price":89.5}"#),
    );
    assert_eq!(
        (modified.status, modified.json()["price"].as_f64(), modified.json()["version"].as_u64()),
        (200, Some(89.5), Some(5))
    );

    // Listing with paging, and its limits.
    let page = http("GET", &format!("{base}/v1/inventory?offset=1&limit=1"), &[KEY], None).json();
    assert_eq!(page["products"][0]["productId"], "PROD-002");
    assert_eq!((page["pagination"]["total"].as_u64(), page["pagination"]["hasMore"].as_bool()), (Some(2), Some(false)));
    for (query, field) in
        [("limit=10000", "limit"), ("limit=-5", "limit"), ("offset=-1", "offset"), ("limit=abc", "limit")]
    {
        let refused = http("GET", &format!("{base}/v1/inventory?{query}"), &[KEY], None);
        assert_eq!((refused.status, error_field(&refused)), (400, field.to_string()), "{query}: {}", refused.body);
    }

    // Delete, then create again: versions go on, so every cache applies it as the next version.
    let deleted = http("DELETE", &format!("{base}/v1/inventory/PROD-002"), &[KEY], None);
    assert_eq!((deleted.status, deleted.json()["version"].as_u64()), (200, Some(2)));
    let gone = http("GET", &format!("{base}/v1/inventory/PROD-002"), &[KEY], None);
    assert_eq!((gone.status, error_code(&gone).as_str()), (404, "product_not_found"));
    let back = post(&base, "/v1/inventory", r#"{"productId":"PROD-002","name":"Cable","price":5,"available":3}"#);
    assert_eq!((back.status, back.json()["version"].as_u64()), (201, Some(3)));
    // A replayed create answers what the first send made, whatever happened since.
    let keyed = r#"{"productId":"PROD-003","name":"Lamp","price":12.5,"available":2,"idempotencyKey":"create-3"}"#;
    assert_eq!(post(&base, "/v1/inventory", keyed).status, 201);
    assert_eq!(post(&base, "/v1/inventory/updates", r#"{"productId":"PROD-003","delta":1}"#).status, 200);
    let replayed = post(&base, "/v1/inventory", keyed);
    assert_eq!((replayed.status, replayed.header("idempotent-replayed")), (201, Some("true")));
    assert_eq!((replayed.json()["available"].as_i64(), replayed.json()["version"].as_u64()), (Some(2), Some(1)));
    // Paging by id: every product once, however rows come and go between pages.
    let first = http("GET", &format!("{base}/v1/inventory?limit=2&after="), &[KEY], None).json();
    let next = first["pagination"]["next"].as_str().expect("a next id").to_string();
    let rest = http("GET", &format!("{base}/v1/inventory?limit=2&after={next}"), &[KEY], None).json();
    let ids: Vec<&str> = first["products"]
        .as_array()
        .into_iter()
        .chain(rest["products"].as_array())
        .flatten()
        .filter_map(|p| p["productId"].as_str())
        .collect();
    assert_eq!(ids, ["PROD-001", "PROD-002", "PROD-003"]);
    // A batch takes keys per item, not one header for all.
    let header = http(
        "POST",
        &format!("{base}/v1/inventory/batch-updates"),
        &[KEY, ("Idempotency-Key", "b")],
        Some(r#"{"updates":[{"productId":"PROD-001","delta":1}]}"#),
    );
    assert_eq!((header.status, error_field(&header).as_str()), (400, "Idempotency-Key"));

    // Every applied command is one event on the stream CENTRAL; refusals and replays none.
    let client = env.plain_client().await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("CENTRAL").await.expect("the stream CENTRAL");
    let info = stream.info().await.expect("stream info");
    // 2 creates + 1 update + 2 batch items + 1 modify + 1 delete + 1 create again + 1 create + 1 update.
    assert_eq!(info.state.messages, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_naming_the_field_and_change_nothing() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, base) = start_central(&env, dir.path());
    let created = post(&base, "/v1/inventory", r#"{"productId":"P","name":"Kettle","price":29.99,"available":4}"#);
    assert_eq!(created.status, 201);

    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/inventory/updates", r#"{"productId":"P","delta":1"#, 400, "malformed_json"),
        ("/v1/inventory/updates", r#"not json"#, 400, "malformed_json"),
        ("/v1/inventory/updates", r#"{"productId":"P","delta":"one"}"#, 400, "delta"),
        ("/v1/inventory/updates", r#"{"productId":"P"}"#, 400, "delta"),
        ("/v1/inventory/updates", r#"{"productId":"P","delta":1,"colour":"red"}"#, 400, "colour"),
        ("/v1/inventory/updates", r#"{"productId":"P","delta":1,"version":-1}"#, 400, "version"),
        ("/v1/inventory/updates", r#"{"productId":"P","delta":0}"#, 400, "invalid"),
        ("/v1/inventory/P", r#"{}"#, 405, "method_not_allowed"),
        ("/v1/inventory", r#"{"productId":"Q","name":"X","price":1.005,"available":1}"#, 400, "price"),
        ("/v1/inventory", r#"{"productId":"Q","name":"  ","price":1,"available":1}"#, 400, "name"),
        ("/v1/inventory", r#"{"productId":"Q","name":"X","price":1,"available":-1}"#, 400, "available"),
        ("/v1/inventory/batch-updates", r#"{"updates":[]}"#, 400, "updates"),
        ("/v1/inventory/batch-updates", r#"{"updates":[{"productId":"P","delta":"x"}]}"#, 400, "updates[0].delta"),
    ];
    for (path, body, status, what) in cases {
        let response = post(&base, path, body);
        let named = match response.json()["error"]["details"]["field"].as_str() {
            Some(field) => field.to_string(),
            None => response.json()["error"]["code"]
                .as_str()
                .or(response.json()["errorType"].as_str())
                .unwrap_or_default()
                .to_string(),
        };
        assert_eq!((response.status, named.as_str()), (*status, *what), "{path} {body}: {}", response.body);
    }
    // A 2 MB body is refused before it is read.
    let big = format!(r#"{{"productId":"P","delta":1,"pad":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let (status, body) =
        carrier_tests::http_post_oversized(&format!("{base}/v1/inventory/updates"), &[KEY], big.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    // A bad If-Match names the header.
    let bad = http("PATCH", &format!("{base}/v1/inventory/P"), &[KEY, ("If-Match", "seven")], Some(r#"{"name":"K"}"#));
    assert_eq!((bad.status, error_field(&bad).as_str()), (400, "If-Match"));
    // Nothing of it changed the product.
    let product = http("GET", &format!("{base}/v1/inventory/P"), &[KEY], None).json();
    assert_eq!((product["available"].as_i64(), product["version"].as_u64()), (Some(4), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_names_itself() {
    let env = TestEnv::start();
    let url = env.url();
    for (args, needle) in [
        (vec!["central", "--nats-url", &url, "--api-keys", " , "], "--api-keys"),
        (vec!["central", "--nats-url", &url, "--api-keys", "demo", "--port", "70000"], "--port"),
    ] {
        let mut carrier = CarrierProcess::spawn(&args);
        let code = carrier.wait_exit(Duration::from_secs(20)).expect("exits");
        assert_eq!(code, Some(2), "{args:?}: {}", carrier.output());
        assert!(carrier.output().contains(needle), "{args:?} names {needle}: {}", carrier.output());
    }
}

/// The HTTP long-poll feed of `CENTRAL` for clients that do not speak NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_long_polls_the_stream_and_says_when_an_offset_is_gone() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_central, base) = start_central(&env, dir.path());
    assert_eq!(
        post(&base, "/v1/inventory", r#"{"productId":"P","name":"Kettle","price":29.99,"available":5}"#).status,
        201
    );
    assert_eq!(post(&base, "/v1/inventory/updates", r#"{"productId":"P","delta":-2}"#).status, 200);
    // The relay publishes after the commit: wait until both events are in the stream.
    let feed = |query: &str| http("GET", &format!("{base}/v1/events?{query}"), &[KEY], None);
    carrier_tests::wait_until(Duration::from_secs(10), "two events in the feed", || {
        let got = feed("offset=0&wait=0");
        async move { got.json()["events"].as_array().map_or(0, Vec::len) == 2 }
    })
    .await;
    let page = feed("offset=0&limit=10").json();
    let events = page["events"].as_array().expect("events");
    assert_eq!((events[0]["offset"].as_u64(), events[0]["eventType"].as_str()), (Some(1), Some("product_created")));
    assert_eq!((events[1]["eventType"].as_str(), events[1]["version"].as_u64()), (Some("inventory_updated"), Some(2)));
    // Every event carries the product's whole state (seed 003's `data`).
    assert_eq!(events[1]["data"]["available"], 3);
    assert_eq!(events[1]["data"]["price"], 29.99);
    assert_eq!(events[1]["data"]["name"], "Kettle");
    assert_eq!(page["offset"], 2);
    // The list says the offset it is as of.
    assert_eq!(http("GET", &format!("{base}/v1/inventory"), &[KEY], None).json()["asOfOffset"], 2);

    // A timeout answers 200 with no events and the same offset.
    let started = std::time::Instant::now();
    let empty = feed("offset=2&wait=1");
    assert_eq!(
        (empty.status, empty.json()["events"].as_array().map(Vec::len), empty.json()["offset"].as_u64()),
        (200, Some(0), Some(2))
    );
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
    // A long poll answers as soon as an event arrives.
    let waiting = {
        let base = base.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let answer = http("GET", &format!("{base}/v1/events?offset=2&wait=20"), &[KEY], None);
            (answer, started.elapsed())
        })
    };
    carrier_tests::wait_until(Duration::from_secs(10), "the update is decided", || {
        let base = base.clone();
        async move {
            post(&base, "/v1/inventory/updates", r#"{"productId":"P","delta":1,"idempotencyKey":"poll"}"#).status == 200
        }
    })
    .await;
    let (answer, took) = waiting.join().expect("the poller");
    assert_eq!(answer.json()["events"][0]["offset"], 3, "{}", answer.body);
    assert!(took < Duration::from_secs(10), "the long poll answered when the event came, not at its end: {took:?}");

    // An offset past the stream's end (the stream was recreated, say) is refused, not skipped to.
    let ahead = feed("offset=99&wait=0");
    assert_eq!((ahead.status, ahead.json()["error"]["code"].as_str()), (409, Some("offset_ahead")));
    // Parameters are checked and named.
    for (query, field) in
        [("limit=0", "limit"), ("limit=5000", "limit"), ("wait=soon", "wait"), ("offset=-1", "offset")]
    {
        let refused = feed(query);
        assert_eq!((refused.status, error_field(&refused)), (400, field.to_string()), "{query}");
    }
    // The stream trimmed below an offset: 409, saying from where it holds events.
    let js = async_nats::jetstream::new(env.plain_client().await);
    js.get_stream("CENTRAL").await.expect("CENTRAL").purge().keep(1).await.expect("purged");
    let gone = feed("offset=0");
    assert_eq!(gone.status, 409);
    let error = &gone.json()["error"];
    assert_eq!(
        (error["code"].as_str(), error["requested"].as_u64(), error["firstRetained"].as_u64()),
        (Some("offset_not_retained"), Some(1), Some(3))
    );
}
