//! `carrier demo --story inventory`: seed 003's store nodes in one process. A central inventory
//! and two store nodes on one nats-server, each with its HTTP API on a loopback port; writes
//! through both nodes, a version conflict, an idempotent retry, the central stopped (reads go on,
//! writes answer 503) and started again, a forced full sync; it exits 0 only when both nodes'
//! caches equal the central.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::central::{self, http::CentralApi, Central};
use crate::http::ApiKeys;
use crate::node::{self, http::NodeApi, StoreHandle, StoreNode};
use anyhow::Context;
use carrier_actors::{CarrierSystem, ContextHandle, SystemConfig};
use serde_json::{json, Value};

const KEY: &str = "demo";

/// A service of the story: its system and its HTTP server.
struct Service {
    system: CarrierSystem,
    server: tokio::task::JoinHandle<()>,
    url: String,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    async fn stop(self) {
        self.server.abort();
        if let Some(monitor) = self.monitor {
            monitor.abort();
        }
        self.system.shutdown().await;
    }
}

async fn serve(router: axum::Router) -> anyhow::Result<(tokio::task::JoinHandle<()>, String)> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("listen")?;
    let url = format!("http://{}", listener.local_addr().context("address")?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((server, url))
}

async fn start_central(nats: &carrier_actors::NatsOptions, dir: &Path) -> anyhow::Result<Service> {
    let system = CarrierSystem::start(SystemConfig::new(nats.clone(), dir, vec![central::context()]))
        .await
        .context("the central inventory did not start")?;
    let handle = system.handle::<ContextHandle<Central>>().context("central handle")?;
    let api = CentralApi { handle, bus: system.bus.clone() };
    let (server, url) = serve(central::http::router(api, ApiKeys::parse(KEY))).await?;
    Ok(Service { system, server, url, monitor: None })
}

async fn start_node(nats: &carrier_actors::NatsOptions, store: &str, dir: &Path) -> anyhow::Result<Service> {
    let system = CarrierSystem::start(SystemConfig::new(nats.clone(), dir, vec![node::context()]))
        .await
        .with_context(|| format!("store node {store} did not start"))?;
    let handle = system.handle::<StoreHandle>().context("store handle")?;
    let store_node = StoreNode::new(store.to_string(), handle, system.bus.clone());
    let monitor = store_node.start(Duration::from_secs(300), true);
    let (server, url) = serve(node::http::router(NodeApi::new(store_node), ApiKeys::parse(KEY))).await?;
    Ok(Service { system, server, url, monitor: Some(monitor) })
}

/// One HTTP exchange: status, the `Idempotent-Replayed` header, the JSON body, and how long.
struct Exchange {
    status: u16,
    replayed: bool,
    body: Value,
    took: Duration,
}

async fn call(method: &'static str, url: String, body: Option<Value>) -> anyhow::Result<Exchange> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let started = Instant::now();
        let request = ureq::http::Request::builder().method(method).uri(&url).header("X-API-Key", KEY);
        let request = match &body {
            Some(_) => request.header("Content-Type", "application/json"),
            None => request,
        };
        let request = request.body(body.map(|b| b.to_string()).unwrap_or_default())?;
        let mut response = agent.run(request).with_context(|| format!("{method} {url}"))?;
        let took = started.elapsed();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Exchange { status, replayed, body, took })
    })
    .await?
}

/// Every product a service lists, as (id, available, version, price, name).
async fn products(base: &str, path: &str, page: usize) -> anyhow::Result<Vec<(String, i64, u64, f64, String)>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let body = call("GET", format!("{base}{path}?offset={offset}&limit={page}"), None).await?.body;
        let items = body["products"].as_array().cloned().unwrap_or_default();
        for p in &items {
            out.push((
                p["productId"].as_str().unwrap_or_default().to_string(),
                p["available"].as_i64().unwrap_or_default(),
                p["version"].as_u64().unwrap_or_default(),
                p["price"].as_f64().unwrap_or_default(),
                p["name"].as_str().unwrap_or_default().to_string(),
            ));
        }
        if !body["pagination"]["hasMore"].as_bool().unwrap_or(false) {
            return Ok(out);
        }
        offset += items.len();
    }
}

/// Waits until `node` lists what `central` does; `false` after `limit`.
async fn agree(central: &str, node: &str, limit: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if products(central, "/v1/inventory", 1000).await? == products(node, "/v1/store/inventory", 200).await? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn result_line(e: &Exchange) -> String {
    let b = &e.body;
    match b["applied"].as_bool() {
        Some(true) => format!("applied: {} left, version {}", b["newQuantity"], b["newVersion"]),
        Some(false) => format!(
            "{} ({}): {} left at version {}",
            b["errorType"].as_str().unwrap_or("refused"),
            e.status,
            b["newQuantity"],
            b["newVersion"]
        ),
        None => format!("{} {}", e.status, b["error"]["code"].as_str().unwrap_or_default()),
    }
}

/// The story. `nats` is the server to use; `dir` holds the three data directories.
pub async fn main(nats: &carrier_actors::NatsOptions, dir: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let central_dir = dir.join("central");
    let central = start_central(nats, &central_dir).await?;
    let s1 = start_node(nats, "store-s1", &dir.join("store-s1")).await?;
    let s2 = start_node(nats, "store-s2", &dir.join("store-s2")).await?;
    println!("central inventory at {}; store-s1 at {}; store-s2 at {}\n", central.url, s1.url, s2.url);

    println!("1. The central creates three products");
    for (id, name, price, qty) in [
        ("PROD-001", "Wireless Headphones", 99.99, 10),
        ("PROD-002", "USB-C Cable", 9.5, 40),
        ("PROD-003", "Desk Lamp", 34.0, 5),
    ] {
        let body = json!({ "productId": id, "name": name, "price": price, "available": qty });
        let created = call("POST", format!("{}/v1/inventory", central.url), Some(body)).await?;
        anyhow::ensure!(created.status == 201, "creating {id}: {} {}", created.status, created.body);
        println!("   {id} {name:<20} {price:>7.2}  {qty} in stock");
    }
    for node in [&s1, &s2] {
        anyhow::ensure!(agree(&central.url, &node.url, timeout).await?, "a store node did not receive the products");
    }
    println!("   both store nodes hold them (each through a durable consumer of its own on CENTRAL)\n");

    println!("2. Writes through both nodes, proxied to the central with store-prefixed idempotency keys");
    let sale = json!({ "storeId": "store-s1", "productId": "PROD-001", "delta": -2, "version": 1, "idempotencyKey": "order-1001" });
    let sold = call("POST", format!("{}/v1/store/inventory/updates", s1.url), Some(sale.clone())).await?;
    println!("   store-s1 sells 2 x PROD-001 at version 1 (key order-1001): {} in {:?}", result_line(&sold), sold.took);
    let read = call("GET", format!("{}/v1/store/inventory/PROD-001", s1.url), None).await?;
    println!(
        "   store-s1 reads its own write at once: {} in stock, version {}",
        read.body["available"], read.body["version"]
    );
    let stale = json!({ "storeId": "store-s2", "productId": "PROD-001", "delta": -1, "version": 1, "idempotencyKey": "order-2001" });
    let conflict = call("POST", format!("{}/v1/store/inventory/updates", s2.url), Some(stale)).await?;
    println!("   store-s2 sells 1 x PROD-001 still at version 1: {}", result_line(&conflict));
    anyhow::ensure!(conflict.body["errorType"] == "version_conflict", "expected a version conflict: {}", conflict.body);
    let retry = json!({ "storeId": "store-s2", "productId": "PROD-001", "delta": -1, "version": 2, "idempotencyKey": "order-2001" });
    let retried = call("POST", format!("{}/v1/store/inventory/updates", s2.url), Some(retry)).await?;
    println!("   store-s2 retries at version 2: {}", result_line(&retried));
    let again = call("POST", format!("{}/v1/store/inventory/updates", s1.url), Some(sale)).await?;
    println!(
        "   store-s1 sends order-1001 again (a retry after a timeout): {}, Idempotent-Replayed: {}",
        result_line(&again),
        again.replayed
    );
    anyhow::ensure!(again.replayed && again.body == sold.body, "the retry was not answered with the first result");
    println!();

    println!("3. The central stops");
    central.stop().await;
    let read = call("GET", format!("{}/v1/store/inventory/PROD-001", s2.url), None).await?;
    println!("   store-s2 still serves reads: PROD-001 has {} in stock ({})", read.body["available"], read.status);
    anyhow::ensure!(read.status == 200, "a read failed with the central down");
    let refused = call(
        "POST",
        format!("{}/v1/store/inventory/updates", s1.url),
        Some(json!({ "productId": "PROD-002", "delta": -1, "idempotencyKey": "order-1002" })),
    )
    .await?;
    println!(
        "   a write through store-s1 answers {} {} in {:?}",
        refused.status,
        refused.body["error"]["code"].as_str().unwrap_or_default(),
        refused.took
    );
    anyhow::ensure!(refused.status == 503, "a write with the central down: {} {}", refused.status, refused.body);

    println!("\n4. The central starts again on its own data");
    let central = start_central(nats, &central_dir).await?;
    let deadline = Instant::now() + timeout;
    let written = loop {
        let body = json!({ "productId": "PROD-002", "delta": -1, "idempotencyKey": "order-1002" });
        let attempt = call("POST", format!("{}/v1/store/inventory/updates", s1.url), Some(body)).await?;
        if attempt.status == 200 || Instant::now() > deadline {
            break attempt;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("   store-s1 sends order-1002 again: {}", result_line(&written));
    anyhow::ensure!(written.status == 200, "the write did not go through after the central came back");

    println!("\n5. store-s2 forces a full sync from the central's snapshot");
    let forced = call("POST", format!("{}/v1/store/sync/force", s2.url), None).await?;
    let status = &forced.body["status"];
    println!(
        "   {} ({} products, as of stream offset {})",
        forced.body["message"].as_str().unwrap_or_default(),
        status["productCount"],
        status["fullSync"]["lastThrough"]
    );

    println!("\n6. Verdict");
    let mut ok = true;
    for (name, node) in [("store-s1", &s1), ("store-s2", &s2)] {
        let agrees = agree(&central.url, &node.url, timeout).await?;
        println!("   {name}: {}", if agrees { "equal to the central" } else { "DIFFERS from the central" });
        ok &= agrees;
    }
    println!("\n   central                            | store-s1          | store-s2");
    let (c, a, b) = (
        products(&central.url, "/v1/inventory", 1000).await?,
        products(&s1.url, "/v1/store/inventory", 200).await?,
        products(&s2.url, "/v1/store/inventory", 200).await?,
    );
    for (i, p) in c.iter().enumerate() {
        let show = |list: &Vec<(String, i64, u64, f64, String)>| {
            list.get(i).map(|q| format!("{:>3} in stock v{}", q.1, q.2)).unwrap_or_else(|| "missing".into())
        };
        println!("   {} {:<20} {:>3} in stock v{} | {} | {}", p.0, p.4, p.1, p.2, show(&a), show(&b));
    }
    for service in [s1, s2, central] {
        service.stop().await;
    }
    if ok {
        println!("\nOK: both store nodes' caches equal the central inventory.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nFAILED: a store node's cache differs from the central inventory.");
        Ok(ExitCode::FAILURE)
    }
}
