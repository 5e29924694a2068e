//! The example's own binary, run as its users would: its contexts show up in every operator
//! tool, and a command to `inventory` reaches `storefront`, whose reaction publishes an event.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use carrier_tests::{http_get, http_json, CarrierProcess, TestEnv};
use serde_json::{json, Value};

const KEY: &str = "example-key-0123456789abcdef";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_inventory"))
}

fn inventory(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("the inventory binary runs")
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn wait(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_read_only(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy dir");
    for entry in std::fs::read_dir(from).expect("data dir") {
        let entry = entry.expect("entry");
        if entry.path().extension().is_some_and(|e| e == "redb") {
            let target = to.join(entry.file_name());
            std::fs::copy(entry.path(), &target).expect("copy file");
            let mut perms = std::fs::metadata(&target).expect("meta").permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&target, perms).expect("read-only");
        }
    }
}

#[test]
fn the_example_binary_runs_its_own_contexts_with_every_tool() {
    let env = TestEnv::start();
    let (url, data) = (env.url(), env.data_dir().to_string_lossy().to_string());
    let mut carrier = CarrierProcess::spawn_program(
        &bin(),
        &[
            "run",
            "--nats-url",
            &url,
            "--data-dir",
            &data,
            "--dashboard-addr",
            "127.0.0.1:0",
            "--dashboard-actions",
            "--api-key",
            KEY,
        ],
    );
    let dashboard = carrier.dashboard_url(Duration::from_secs(30));
    wait(Duration::from_secs(30), "/readyz says ready", || http_get(&format!("{dashboard}/readyz")).0 == 200);

    // A command to the owner, sent as any NATS client would, reaches the storefront's cache.
    let add = r#"{"command":"add_product","id":"p-1","name":"Kettle","price":2999,"quantity":2}"#;
    let reply = ok_json(inventory(&["command", "inventory", add, "--nats-url", &url]));
    assert_eq!(reply["event"]["event_type"], json!("inventory.ProductAdded"));
    let sell = r#"{"command":"adjust_stock","id":"p-1","delta":-2}"#;
    ok_json(inventory(&["command", "inventory", sell, "--nats-url", &url]));
    let too_many = r#"{"command":"adjust_stock","id":"p-1","delta":-1}"#;
    let refused = inventory(&["command", "inventory", too_many, "--nats-url", &url]);
    assert!(!refused.status.success(), "selling stock that is not there is refused");
    let query = r#"{"query":"get_listing","id":"p-1"}"#;
    wait(Duration::from_secs(30), "the storefront lists p-1 as sold out", || {
        let reply = ok_json(inventory(&["query", "storefront", query, "--nats-url", &url]));
        reply["found"] == json!({ "name": "Kettle", "price": 2999, "in_stock": false })
    });

    // The storefront's reaction published ProductSoldOut through its outbox.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sold_out = runtime.block_on(async {
        let js = async_nats::jetstream::new(env.plain_client().await);
        let mut stream = js.get_stream("STOREFRONT").await.expect("the storefront's stream exists");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = stream.info().await.expect("stream info");
            if info.state.messages >= 1 || Instant::now() > deadline {
                break stream.get_raw_message(1).await.expect("first message").subject.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(sold_out, "storefront.listing.sold_out");

    // `publish` knows the binary's own events, as a producer in any language would send them.
    let teapot = r#"{"id":"p-2","name":"Teapot","price":1500,"quantity":3}"#;
    let published =
        inventory(&["publish", "inventory.ProductAdded", teapot, "--aggregate-version", "1", "--nats-url", &url]);
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let teapot_query = r#"{"query":"get_listing","id":"p-2"}"#;
    wait(Duration::from_secs(30), "the storefront applied the published event", || {
        let reply = ok_json(inventory(&["query", "storefront", teapot_query, "--nats-url", &url]));
        reply["found"] == json!({ "name": "Teapot", "price": 1500, "in_stock": true })
    });
    let unknown = inventory(&["publish", "stores.StoreCreated", "{}", "--aggregate-version", "1", "--nats-url", &url]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && stderr.contains("known: inventory.ProductAdded"), "{stderr}");

    // Its listings are rebuilt from the stream, blue/green, by `rebuild`.
    let rebuilt = inventory(&["rebuild", "storefront", "--url", &dashboard, "--api-key", KEY]);
    let out = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(rebuilt.status.success(), "{out}{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert!(out.contains("listings"), "{out}");
    let reply = ok_json(inventory(&["query", "storefront", query, "--nats-url", &url]));
    assert_eq!(reply["found"], json!({ "name": "Kettle", "price": 2999, "in_stock": false }), "rebuilt the same");

    // Every operator tool knows the contexts without a line of code for them.
    let snapshot = http_json(&format!("{dashboard}/api/snapshot"));
    let contexts: Vec<&str> =
        snapshot["caches"].as_array().expect("caches").iter().filter_map(|c| c["context"].as_str()).collect();
    assert!(contexts.contains(&"inventory") && contexts.contains(&"storefront"), "{contexts:?}");
    let consumers: Vec<&str> =
        snapshot["consumers"].as_array().expect("consumers").iter().filter_map(|c| c["durable"].as_str()).collect();
    assert_eq!(consumers, vec!["storefront-inventory"]);
    assert_eq!(snapshot["health"]["contexts"]["storefront"]["status"], json!("healthy"));
    let status = ok_json(inventory(&["status", "--url", &dashboard, "--json"]));
    assert_eq!(status["health"]["status"], json!("healthy"), "{status:#}");
    let (_, metrics) = http_get(&format!("{dashboard}/metrics"));
    assert!(
        metrics.lines().any(|l| l.starts_with("carrier_events_total") && l.contains(r#"context="storefront""#)),
        "{metrics}"
    );
    let asyncapi = ok_json(inventory(&["asyncapi"]));
    assert_eq!(asyncapi["info"]["title"], json!("inventory"), "the document is named after the binary");
    for channel in ["inventory.product.added", "storefront.listing.sold_out", "cmd.inventory", "query.storefront"] {
        assert!(asyncapi["channels"].get(channel).is_some(), "{channel} is in the AsyncAPI document");
    }
    assert!(inventory(&["dlq", "list", "storefront", "--nats-url", &url]).status.success());

    // Stopped, its files are inspected read-only, every row, from a copy nobody may write.
    drop(carrier);
    let copy = tempfile_dir();
    copy_read_only(Path::new(&data), copy.path());
    let file = copy.path().join("storefront.redb");
    let before = std::fs::read(&file).expect("read");
    let copy_dir = copy.path().to_string_lossy().to_string();
    let dump = ok_json(inventory(&["inspect", "storefront", "--data-dir", &copy_dir, "--json"]));
    let listings =
        dump["tables"].as_array().expect("tables").iter().find(|t| t["table"] == json!("listings")).expect("listings");
    assert_eq!(
        listings["entries"],
        json!([
            ["p-1", { "name": "Kettle", "price": 2999, "in_stock": false }],
            ["p-2", { "name": "Teapot", "price": 1500, "in_stock": true }]
        ])
    );
    assert_eq!(std::fs::read(&file).expect("read"), before, "inspect changed nothing");
    let unknown = inventory(&["inspect", "baskets", "--data-dir", &copy_dir]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: inventory, storefront"));
}

fn tempfile_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("inventory-copy-").tempdir().expect("temp dir")
}
