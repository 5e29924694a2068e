//! `carrier bench --store-node`: a store node's product reads over HTTP against a static
//! baseline on the same HTTP stack, measured by `wrk` in the same run, and the time of a full
//! sync of `--products` products.
//!
//! The baseline answers a constant body of a product's size through the same axum stack and API
//! key check, without reading the cache: the ratio is what reading redb and encoding the product
//! cost. `wrk` (Debian's package) runs on the same two cores as the server, as a second process
//! on loopback, for the baseline and the node alike.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::central::{self, Central, CentralCommand};
use crate::http::ApiKeys;
use crate::node::{self, http::NodeApi, StoreHandle, StoreNode};
use anyhow::{bail, Context};
use carrier_actors::{CarrierSystem, ContextHandle, SystemConfig};
use carrier_messages::Causality;
use futures::StreamExt;

/// What `carrier bench --store-node` is told.
pub struct StoreNodeBench {
    /// Products at the central (and so in the node's cache).
    pub products: u64,
    /// Seconds of load per measurement.
    pub seconds: u32,
    /// wrk's connections.
    pub connections: u32,
    /// Rounds of (baseline, node), alternating; medians are reported.
    pub rounds: u32,
    /// One JSON object on stdout.
    pub json: bool,
}

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

const KEY: &str = "bench-key";

/// Runs `carrier bench --store-node`.
pub async fn main(args: StoreNodeBench) -> anyhow::Result<ExitCode> {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        bail!("carrier bench --store-node needs wrk on PATH (Debian: apt-get install wrk)");
    }
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let profile = if cfg!(debug_assertions) { "debug (build with --release for real figures)" } else { "release" };
    say(format!("carrier bench --store-node: {} products, {} s of load per measurement, {} connections, {} round(s), {profile} build", args.products, args.seconds, args.connections, args.rounds));
    let nats = carrier_cli::nats_or_local(None, None)?;
    let dir = tempfile::Builder::new().prefix("carrier-bench-store-").tempdir().context("temp dir")?;

    // The central, filled through its own command path (group commit).
    let central = CarrierSystem::start(SystemConfig::new(
        nats.options.clone(),
        dir.path().join("central"),
        vec![central::context()],
    ))
    .await
    .context("the central did not start")?;
    let handle = central.handle::<ContextHandle<Central>>().context("central handle")?;
    let started = Instant::now();
    let results: Vec<bool> = futures::stream::iter(0..args.products)
        .map(|i| {
            let handle = handle.clone();
            async move {
                let command = CentralCommand::CreateProduct {
                    product_id: format!("B-{i:07}"),
                    name: format!("Bench product {i}"),
                    price: 100 + (i % 10_000) as i64,
                    available: 1_000,
                };
                handle.execute(command, Causality::default()).await.is_ok()
            }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    let seeded = started.elapsed();
    if results.iter().any(|ok| !ok) {
        bail!("the central refused some products");
    }
    say(format!(
        "central: {} products decided in {:.2} s ({:.0} commands/s)",
        args.products,
        seeded.as_secs_f64(),
        args.products as f64 / seeded.as_secs_f64()
    ));

    // The node: its first start is a full sync; then a forced one over a full cache.
    let system =
        CarrierSystem::start(SystemConfig::new(nats.options.clone(), dir.path().join("store"), vec![node::context()]))
            .await
            .context("the store node did not start")?;
    let store = StoreNode::new(
        "store-bench".into(),
        system.handle::<StoreHandle>().context("store handle")?,
        system.bus.clone(),
    );
    let monitor = store.start(Duration::from_secs(300), false);
    let first_started = Instant::now();
    store.handle.resync("first start").await.context("the first full sync")?;
    let first_sync = first_started.elapsed();
    let forced_started = Instant::now();
    store.handle.resync("forced").await.context("the forced full sync")?;
    let forced_sync = forced_started.elapsed();
    let count = store.handle.db.read(|txn| node::PRODUCTS.len(txn)).unwrap_or(0);
    if count != args.products {
        bail!("the node holds {count} products after the sync, not {}", args.products);
    }
    say(format!(
        "full sync of {} products: {:.2} s on first start (empty cache), {:.2} s forced (replacing a full cache)",
        args.products,
        first_sync.as_secs_f64(),
        forced_sync.as_secs_f64()
    ));
    // Let the node's consumer catch up with the stream (each event stale by now) before loading it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let last = system.bus.last_sequence(<central::CentralEvent as carrier_messages::DomainEvent>::STREAM).await?;
    while store.position() < last {
        if Instant::now() > deadline {
            bail!("the node's consumer did not catch up with the stream");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // HTTP: the node's API and the static baseline, each on its own loopback port.
    let keys = ApiKeys::parse(KEY);
    let node_url = serve(node::http::router(NodeApi::new(store.clone()), keys.clone())).await?;
    let sample = store
        .handle
        .db
        .read(|txn| node::PRODUCTS.get(txn, "B-0000000"))?
        .map(|p| serde_json::to_vec(&crate::central::http::ProductJson::from(p.view("B-0000000"))).unwrap_or_default())
        .unwrap_or_default();
    let baseline_url = serve(baseline_router(sample, keys)).await?;
    let script = dir.path().join("reads.lua");
    std::fs::write(&script, lua_script(args.products)).context("the wrk script")?;
    let script = script.to_string_lossy().to_string();

    // A short warm-up of each, then alternating rounds.
    for url in [&baseline_url, &node_url] {
        wrk(url, &script, 2, args.connections).await?;
    }
    let (mut baseline, mut node_loads) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let order: [(&String, bool); 2] = if round % 2 == 0 {
            [(&baseline_url, true), (&node_url, false)]
        } else {
            [(&node_url, false), (&baseline_url, true)]
        };
        for (url, is_baseline) in order {
            let load = wrk(url, &script, args.seconds, args.connections).await?;
            say(format!(
                "  round {}: {:<9} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                round + 1,
                if is_baseline { "baseline" } else { "node" },
                load.requests_per_second,
                load.p50_ms,
                load.p99_ms,
                load.errors
            ));
            if is_baseline {
                baseline.push(load)
            } else {
                node_loads.push(load)
            }
        }
    }
    monitor.abort();
    let (b, n) = (median(&baseline), median(&node_loads));
    let ratio = n.requests_per_second / b.requests_per_second.max(1.0);
    let goal_rps = n.requests_per_second >= 30_000.0;
    let goal_p99 = n.p99_ms < 5.0;
    if args.json {
        let report = serde_json::json!({
            "products": args.products,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "central_commands_per_s": args.products as f64 / seeded.as_secs_f64(),
            "first_sync_s": first_sync.as_secs_f64(),
            "forced_sync_s": forced_sync.as_secs_f64(),
            "baseline": { "requests_per_s": b.requests_per_second, "p50_ms": b.p50_ms, "p99_ms": b.p99_ms, "errors": b.errors },
            "node": { "requests_per_s": n.requests_per_second, "p50_ms": n.p50_ms, "p99_ms": n.p99_ms, "errors": n.errors },
            "node_over_baseline": ratio,
            "goals": { "node_requests_per_s_at_least_30000": goal_rps, "node_p99_under_5_ms": goal_p99 },
        });
        println!("{report}");
    } else {
        println!("\n| figure | baseline (static body) | store node (cache read) | ratio | goal |");
        println!("|---|---|---|---|---|");
        println!(
            "| requests/s | {:.0} | {:.0} | {ratio:.2} | >= 30000: {} |",
            b.requests_per_second,
            n.requests_per_second,
            if goal_rps { "met" } else { "not met" }
        );
        println!("| p50 | {:.2} ms | {:.2} ms | | |", b.p50_ms, n.p50_ms);
        println!(
            "| p99 | {:.2} ms | {:.2} ms | | < 5 ms: {} |",
            b.p99_ms,
            n.p99_ms,
            if goal_p99 { "met" } else { "not met" }
        );
        println!(
            "| full sync of {} products | | {:.2} s (first), {:.2} s (forced) | | |",
            args.products,
            first_sync.as_secs_f64(),
            forced_sync.as_secs_f64()
        );
    }
    system.shutdown().await;
    central.shutdown().await;
    if n.errors > 0 {
        bail!("{} node reads failed", n.errors);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("listen")?;
    let url = format!("http://{}", listener.local_addr().context("address")?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(url)
}

/// The same stack as the node's reads (routing, the API key check), answering a constant body.
fn baseline_router(body: Vec<u8>, keys: ApiKeys) -> axum::Router {
    use axum::routing::get;
    let body = bytes::Bytes::from(body);
    axum::Router::new()
        .route(
            "/v1/store/inventory/{product_id}",
            get(move || {
                let body = body.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .layer(axum::middleware::from_fn(move |headers, request, next| {
            crate::http::require_api_key(keys.clone(), headers, request, next)
        }))
}

/// Reads of random products, with the key.
fn lua_script(products: u64) -> String {
    format!(
        r#"math.randomseed(os.time())
request = function()
  local path = string.format("/v1/store/inventory/B-%07d", math.random(0, {}))
  return wrk.format("GET", path, {{["X-API-Key"] = "{KEY}"}})
end
"#,
        products.saturating_sub(1)
    )
}

/// Runs wrk for `seconds` against `url` and reads its figures.
async fn wrk(url: &str, script: &str, seconds: u32, connections: u32) -> anyhow::Result<Load> {
    let args = ["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s", script, url];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = tokio::process::Command::new("wrk").args(&args).output().await.context("wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text).with_context(|| format!("wrk's output: {text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(rps)) => load.requests_per_second = rps.parse()?,
            (Some("50%"), Some(t)) => load.p50_ms = millis(t)?,
            (Some("99%"), Some(t)) => load.p99_ms = millis(t)?,
            (Some("Non-2xx"), _) => load.errors += line.rsplit(' ').next().unwrap_or("0").parse::<u64>().unwrap_or(0),
            (Some("Socket"), _) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 3"
                load.errors +=
                    line.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
            }
            _ => {}
        }
    }
    if load.requests_per_second == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(load)
}

/// wrk's times (`812.00us`, `1.23ms`, `2.01s`) in milliseconds.
fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("not a wrk time: {text}")
    };
    Ok(number.parse::<f64>()? * factor)
}

fn median(loads: &[Load]) -> Load {
    let mut sorted = loads.to_vec();
    sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_output_is_read() {
        let text = "Running 2s test @ http://127.0.0.1:1\n  Latency Distribution\n     50%  812.00us\n     99%    2.31ms\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  41234.56\nNon-2xx or 3xx responses: 4\n";
        let load = super::parse_wrk(text).expect("read");
        assert_eq!(load.requests_per_second, 41234.56);
        assert!((load.p50_ms - 0.812).abs() < 1e-9 && (load.p99_ms - 2.31).abs() < 1e-9);
        assert_eq!(load.errors, 7);
    }
}
