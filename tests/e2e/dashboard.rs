//! The supervision dashboard of a running `carrier`: its JSON API, `/metrics`, health probes,
//! actions behind the API key, `carrier status`, and the page itself in a real browser.

use std::process::Command;
use std::time::{Duration, Instant};

use carrier_tests::browser::Browser;
use carrier_tests::{carrier_bin, http_get, http_json, http_post, CarrierProcess, TestEnv};
use serde_json::{json, Value};

const KEY: &str = "test-key-0123456789abcdef";

/// Polls `condition` every 50 ms until it holds; panics with `what` after `limit`.
fn wait(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_service(env: &TestEnv, extra: &[&str]) -> (CarrierProcess, String) {
    CarrierProcess::run_ready(&env.url(), &env.data_dir(), "stores,baskets", extra)
}

fn publish_store(env: &TestEnv, id: &str, version: u64) {
    let out = Command::new(carrier_bin())
        .args(["publish", "stores.StoreCreated"])
        .arg(format!(r#"{{"id":"{id}","name":"Store {id}","location":"Hall"}}"#))
        .args(["--aggregate-version", &version.to_string(), "--nats-url", &env.url()])
        .output()
        .expect("carrier publish runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The value of one sample of `/metrics`, parsed by a Prometheus text parser; 0 when absent.
fn metric(dashboard: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = http_get(&format!("{dashboard}/metrics"));
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|v| v[key] == json!(value)))
        .unwrap_or_else(|| panic!("no entry with {key} = {value:?} in {list:#}"))
}

#[test]
fn the_api_and_metrics_follow_events_as_they_flow() {
    let env = TestEnv::start();
    let (carrier, dashboard) = run_service(&env, &[]);
    // baskets keeps its caches through a durable of this instance's own.
    let durable = carrier_mall::baskets::stores_durable_name(&env.data_dir()).expect("instance id");

    // The shapes operators and `carrier status` rely on.
    let tree = http_json(&format!("{dashboard}/api/tree"));
    let cache = find(&tree, "path", "carrier/baskets/cache");
    assert_eq!(cache["state"], json!("running"));
    assert_eq!(cache["restarts"], json!(0));
    assert_eq!(cache["parent"], json!("carrier/baskets"));
    assert_eq!(find(&tree, "path", "carrier")["depth"], json!(0));
    let health = http_json(&format!("{dashboard}/api/health"));
    assert_eq!(health["status"], json!("healthy"));
    assert_eq!(health["contexts"]["baskets"]["status"], json!("healthy"));
    assert_eq!(http_get(&format!("{dashboard}/healthz")).0, 200);

    let applied = |d: &str| metric(d, "carrier_events_total", &[("context", "baskets"), ("outcome", "applied")]);
    let applied_before = applied(&dashboard);
    for (i, id) in ["s-1", "s-2", "s-3"].iter().enumerate() {
        publish_store(&env, id, 1);
        let _ = i;
    }
    // A producer's garbage goes to the dead-letter stream, and the dashboard says why.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let js = async_nats::jetstream::new(env.plain_client().await);
        js.publish("stores.StoreCreated", "not cbor".into()).await.expect("publish").await.expect("stored");
    });

    wait(Duration::from_secs(30), "the consumer's acked sequence reaches 4 in /api/consumers", || {
        let consumers = http_json(&format!("{dashboard}/api/consumers"));
        let c = find(&consumers, "durable", &durable);
        c["ack_floor_stream_seq"] == json!(4) && c["pending"] == json!(0) && c["counters"]["applied"] == json!(3)
    });
    let consumers = http_json(&format!("{dashboard}/api/consumers"));
    let c = find(&consumers, "durable", &durable);
    assert_eq!(c["stream"], json!("STORES"));
    assert_eq!(c["filter_subjects"], json!(["stores.>"]));
    assert_eq!(c["delivered_stream_seq"], json!(4));
    assert!(c["rate_history"].is_array());

    let caches = http_json(&format!("{dashboard}/api/caches"));
    let baskets = find(&caches, "context", "baskets");
    assert_eq!(find(&baskets["tables"], "table", "stores_cache")["rows"], json!(3));
    assert_eq!(find(&baskets["applied_through"], "consumer", &durable)["stream_seq"], json!(4));
    assert_eq!(baskets["fallbacks"][0]["owner"], json!("stores"));
    assert_eq!(baskets["fallbacks"][0]["breaker"], json!("closed"));
    let outbox = http_json(&format!("{dashboard}/api/outbox"));
    assert_eq!(find(&outbox, "context", "stores")["backlog"], json!(0));
    let letters = http_json(&format!("{dashboard}/api/dead-letters"));
    let baskets_letters = find(&letters, "context", "baskets");
    assert_eq!(baskets_letters["count"], json!(1));
    assert_eq!(baskets_letters["latest"][0]["subject"], json!("stores.StoreCreated"));
    assert!(baskets_letters["latest"][0]["reason"].as_str().is_some_and(|r| !r.is_empty() && r != "?"));

    // The counters moved by exactly what flowed.
    assert_eq!(applied(&dashboard) - applied_before, 3.0);
    let dead = metric(&dashboard, "carrier_events_total", &[("context", "baskets"), ("outcome", "dead_lettered")]);
    assert_eq!(dead, 1.0);
    let typed = [("context", "baskets"), ("event_type", "stores.StoreCreated"), ("outcome", "consumed")];
    assert_eq!(metric(&dashboard, "carrier_events_total", &typed), 3.0);
    assert!(metric(&dashboard, "carrier_commit_seconds_count", &[("context", "baskets")]) >= 1.0);
    wait(Duration::from_secs(10), "the lag gauge is exported", || {
        http_get(&format!("{dashboard}/metrics")).1.contains("carrier_consumer_pending_messages{")
    });

    // Read-only by default; unknown paths answer JSON.
    let (status, body) = http_post(&format!("{dashboard}/api/actors/restart"), Some(KEY), &json!({"path": "carrier"}));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--dashboard-actions"), "{body}");
    let (status, body) = http_get(&format!("{dashboard}/api/nothing"));
    assert_eq!((status, body.contains("error")), (404, true), "{body}");
    let (status, page) = http_get(&format!("{dashboard}/"));
    assert_eq!(status, 200);
    assert!(page.contains("EventSource") && !page.contains("://cdn"), "the page ships inside the binary");

    // `carrier status` prints the same from the API.
    let status = Command::new(carrier_bin()).args(["status", "--url", &dashboard]).output().expect("status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}{}", String::from_utf8_lossy(&status.stderr));
    assert!(text.contains("HEALTHY"), "{text}");
    assert!(text.contains(&durable) && text.contains("stores-consumer"), "{text}");
    assert!(text.contains("stores_cache=3"), "{text}");
    drop(carrier);
}

#[test]
fn actions_need_the_flag_and_the_key_and_a_restart_shows_in_tree_and_metrics() {
    let env = TestEnv::start();
    // A short key is refused at start, by name.
    let data = env.data_dir().to_string_lossy().to_string();
    let short = Command::new(carrier_bin())
        .args(["run", "--nats-url", &env.url(), "--data-dir", &data, "--dashboard-actions", "--api-key", "short"])
        .output()
        .expect("carrier runs");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16 characters"));

    let (carrier, dashboard) = run_service(&env, &["--dashboard-actions", "--api-key", KEY]);
    let restart = format!("{dashboard}/api/actors/restart");
    let body = json!({"path": "carrier/baskets/cache", "kill": true});
    assert_eq!(http_post(&restart, None, &body).0, 401);
    assert_eq!(http_post(&restart, Some("test-key-0123456789abcdeX"), &body).0, 401);
    assert_eq!(http_post(&restart, Some(KEY), &json!({"path": "carrier/nowhere"})).0, 404);
    let (status, text) = http_post(&restart, Some(KEY), &body);
    assert_eq!(status, 202, "{text}");

    wait(Duration::from_secs(10), "the tree shows the cache restarted and running again", || {
        let tree = http_json(&format!("{dashboard}/api/tree"));
        let cache = find(&tree, "path", "carrier/baskets/cache");
        cache["restarts"] == json!(1) && cache["state"] == json!("running") && cache["last_failure"].is_string()
    });
    let restarts = metric(&dashboard, "carrier_actor_restarts_total", &[("actor", "carrier/baskets/cache")]);
    assert_eq!(restarts, 1.0);
    wait(Duration::from_secs(10), "health is back to healthy", || {
        http_json(&format!("{dashboard}/api/health"))["status"] == json!("healthy")
    });
    // It still applies events after the restart.
    publish_store(&env, "after-restart", 1);
    wait(Duration::from_secs(30), "the restarted cache applies a new event", || {
        let caches = http_json(&format!("{dashboard}/api/caches"));
        find(&find(&caches, "context", "baskets")["tables"], "table", "stores_cache")["rows"] == json!(1)
    });
    assert!(carrier.output().contains("restarted by the operator"), "the action is logged");

    // `carrier rebuild` through the same API: progress, then the tables swapped.
    let rebuild = |args: &[&str]| {
        Command::new(carrier_bin()).arg("rebuild").args(args).args(["--url", &dashboard]).output().expect("runs")
    };
    let out = rebuild(&["baskets", "--api-key", KEY]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("stores_cache") && stdout.contains("rows after"), "{stdout}");
    assert!(
        stderr.contains("rebuild baskets:") && stderr.contains("done in"),
        "plain progress lines off a terminal: {stderr}"
    );
    let rebuilds = http_json(&format!("{dashboard}/api/rebuilds"));
    assert_eq!(find(&rebuilds, "context", "baskets")["state"], json!("done"));
    let caches = http_json(&format!("{dashboard}/api/caches"));
    assert_eq!(find(&find(&caches, "context", "baskets")["tables"], "table", "stores_cache")["rows"], json!(1));
    let refused = rebuild(&["baskets", "--api-key", "test-key-0123456789abcdeX"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong API key"));
    let absent = rebuild(&["search", "--api-key", KEY]);
    assert!(String::from_utf8_lossy(&absent.stderr).contains("not running here"));
    drop(carrier);
}

#[test]
fn a_browser_shows_the_tree_and_consumers_live_and_a_restart_within_5_s() {
    let env = TestEnv::start();
    let data = env.data_dir().to_string_lossy().to_string();
    let url = env.url();
    let mut demo = CarrierProcess::spawn(&[
        "demo",
        "--stay",
        "--nats-url",
        &url,
        "--data-dir",
        &data,
        "--dashboard-addr",
        "127.0.0.1:0",
        "--dashboard-actions",
        "--api-key",
        KEY,
    ]);
    let dashboard = demo.dashboard_url(Duration::from_secs(30));
    demo.wait_for_output("Still running", Duration::from_secs(60));

    let browser = Browser::start();
    browser.goto(&format!("{dashboard}/"));
    browser.wait_for(
        Duration::from_secs(15),
        "the supervision tree and a consumer row",
        r#"return !!document.querySelector('#tree tr[data-path="carrier/ordering/cache"][data-state="running"]')
            && !!document.querySelector('#consumers tr[data-durable^="search-ordering"]')
            && document.querySelector('#overall').textContent === 'healthy'
            && document.querySelector('#instance').textContent.includes('read models: search')
            && document.querySelector('#instance').dataset.leases.split(',').includes('ordering')
            && !!document.querySelector('#leases tr[data-context="ordering"][data-mine="true"]');"#,
    );
    let delivered = browser.eval(
        r#"return document.querySelector('#consumers tr[data-durable^="search-ordering"]').children[4].textContent;"#,
    );
    assert_ne!(delivered, json!("0"), "the row shows the search read model's deliveries");

    // The topology: every context that publishes, every stream, every reader, and an edge per
    // durable whose label carries its rate and lag.
    browser.wait_for(
        Duration::from_secs(15),
        "the topology graph",
        r#"return !!document.querySelector('#topology [data-node="stream:ORDERING"]')
            && !!document.querySelector('#topology [data-node="context:stores"]')
            && !!document.querySelector('#topology [data-node="reader:search"]');"#,
    );
    let graph = browser.eval(
        r#"return {
            streams: [...document.querySelectorAll('#topology .node.stream')].map((n) => n.dataset.node).sort(),
            edges: [...document.querySelectorAll('#topology path.edge')].map((e) => e.dataset.edge).sort(),
            label: document.querySelector('#topology [data-edge-label^="search-ordering"]').textContent,
            lag: document.querySelector('#topology [data-edge-label^="search-ordering"]').dataset.lag,
        };"#,
    );
    let streams: Vec<String> = ["BASKETS", "CUSTOMERS", "DEPOT", "NOTIFICATIONS", "ORDERING", "PAYMENTS", "STORES"]
        .iter()
        .map(|s| format!("stream:{s}"))
        .collect();
    assert_eq!(graph["streams"], json!(streams), "{graph:#}");
    let edges = graph["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 7 + 13, "a publish edge per stream and a read edge per durable: {graph:#}");
    let own = carrier_actors::durable_suffix(&carrier_actors::instance_id(&env.data_dir()).expect("instance id"));
    assert!(
        edges.contains(&json!("publish:ordering")) && edges.contains(&json!(format!("depot-ordering-{own}"))),
        "{graph:#}"
    );
    assert!(graph["label"].as_str().is_some_and(|l| l.contains("/s · lag")), "{graph:#}");
    assert_eq!(graph["lag"], json!("0"), "the story settled, so nothing lags: {graph:#}");
    save_screenshot(&browser, "dashboard.png");

    // An actor failure: the ordering cache is killed, as a crash would end it.
    let (status, text) = http_post(
        &format!("{dashboard}/api/actors/restart"),
        Some(KEY),
        &json!({"path": "carrier/ordering/cache", "kill": true}),
    );
    assert_eq!(status, 202, "{text}");
    browser.wait_for(
        Duration::from_secs(5),
        "the restart of carrier/ordering/cache",
        r#"const row = document.querySelector('#tree tr[data-path="carrier/ordering/cache"]');
           return !!row && row.dataset.restarts === '1' && !!row.querySelector('.failure');"#,
    );
    browser.eval(
        r#"document.querySelector('#tree tr[data-path="carrier/ordering/cache"]').scrollIntoView({block: 'center'});
           return true;"#,
    );
    save_screenshot(&browser, "dashboard-restart.png");

    // The page's own restart button, with the key typed in: the actions work from the browser.
    browser.eval(&format!(
        r#"document.querySelector('#key').value = '{KEY}';
           document.querySelector('button[data-restart="carrier/search/cache"]').click();
           return true;"#
    ));
    browser.wait_for(
        Duration::from_secs(5),
        "the restart of carrier/search/cache from its button",
        r#"const row = document.querySelector('#tree tr[data-path="carrier/search/cache"]');
           return !!row && row.dataset.restarts === '1' && row.dataset.state === 'running';"#,
    );
    // And a cache rebuild from the caches table, followed to the end on the page.
    browser.eval(r#"document.querySelector('button[data-rebuild="depot"]').click(); return true;"#);
    browser.wait_for(
        Duration::from_secs(15),
        "the depot's cache rebuild done",
        r#"return !!document.querySelector('#rebuilds tr[data-context="depot"][data-state="done"]');"#,
    );
    // A consumer paused and resumed from its row's buttons.
    browser.eval(
        r#"document.querySelector('button[data-consumer="pause"][data-context="search"][data-source="ordering"]').click();
           return true;"#,
    );
    browser.wait_for(
        Duration::from_secs(5),
        "search-ordering shown paused",
        r#"const row = document.querySelector('#consumers tr[data-durable^="search-ordering"]');
           return !!row && row.dataset.paused === 'true' && row.textContent.includes('paused')
               && !!row.querySelector('button[data-consumer="resume"]');"#,
    );
    browser.eval(
        r#"document.querySelector('button[data-consumer="resume"][data-context="search"][data-source="ordering"]').click();
           return true;"#,
    );
    browser.wait_for(
        Duration::from_secs(5),
        "search-ordering running again",
        r#"const row = document.querySelector('#consumers tr[data-durable^="search-ordering"]');
           return !!row && row.dataset.paused === 'false';"#,
    );
    drop(browser);
    drop(demo);
}

/// Keeps a screenshot under `$CARRIER_SCREENSHOTS` (the README's come from `docs/img`).
fn save_screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Ok(dir) = std::env::var("CARRIER_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("screenshot written");
    }
}
