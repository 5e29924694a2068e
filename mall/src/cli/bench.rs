//! `carrier bench`: Carrier's hot paths against the limit of the same server and client, in one
//! run, as ratios.
//!
//! Everything runs on one private nats-server, round after round, with the order of the
//! measurements rotated by round so that none always runs on a warmer (or more tired) machine;
//! the medians over rounds are reported. The baselines are what the server and client can move
//! with no Carrier code at all: bare messages (one `Nats-Msg-Id` header, a body of the same size
//! as Carrier's events), published with the same window and consumed by the same plain
//! pull-and-ack loop.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::baskets::{stores_durable_name, BasketsHandle};
use crate::stores::StoresHandle;
use crate::stores::{StoresCommand, StoresEvent};
use crate::workload::Workload;
use anyhow::{bail, Context};
use carrier_actors::Bus;
use carrier_actors::ConsumerStats;
use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_messages::Causality;
use carrier_messages::{DomainEvent, EncodedEvent, EventId};
use futures::StreamExt;

use crate::prelude::*;

/// The stream the bare baseline messages go to.
const BARE_STREAM: &str = "BENCH";
/// Its subjects.
const BARE_SUBJECTS: &str = "bench.>";
/// PublishAcks outstanding while loading a stream, for both kinds of message.
const PUBLISH_WINDOW: usize = 4096;
/// Events per round and products, unless given.
const EVENTS: u64 = 100_000;
const PRODUCTS: u64 = 1_000;
/// Commands in flight at once in the relay measurement.
const COMMANDS_IN_FLIGHT: usize = 1024;

/// What `carrier bench` measures of the mall (the binary's flags of the same names).
pub struct MallBench {
    /// Events to publish and consume per round [default: 100000; with `scale` 1200000].
    pub events: Option<u64>,
    /// Products the price changes are spread over [default: 1000; with `scale` 1000000].
    pub products: Option<u64>,
    /// Measure `carrier run` at scale instead (see [`super::scale`]).
    pub scale: bool,
    /// With `scale`: redb's page cache per file, MiB.
    pub redb_cache_mb: u32,
    /// Most events applied per redb transaction.
    pub batch_max: u32,
    /// Rounds; the median of each measurement over the rounds is reported.
    pub rounds: u32,
    /// Events per second offered in the latency measurement.
    pub rate: u32,
    /// Events published at `rate` in the latency measurement, per round.
    pub latency_events: u64,
    /// Owner commands decided in the relay measurement, per round.
    pub commands: u64,
    /// Print exactly one JSON object on stdout.
    pub json: bool,
}

/// One round's figures.
#[derive(Default)]
struct Round {
    bare_raw: f64,
    own_raw: f64,
    cache_path: f64,
    publish_bare: f64,
    publish_own: f64,
    relay: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    lookups: f64,
    events_per_commit: f64,
    ordered_raw: f64,
    anchor_loop: f64,
    redb_get: f64,
    redb_get_shared: f64,
}

/// Runs the benchmark (or, with `scale`, the scale run).
pub async fn main(args: MallBench) -> anyhow::Result<ExitCode> {
    carrier_cli::init_logging("warn", false);
    if args.scale {
        let events = args.events.unwrap_or(1_200_000);
        return super::scale::main(super::scale::ScaleArgs {
            events,
            products: args.products.unwrap_or(1_000_000),
            // The small key space as `carrier bench` runs it, or smaller for a small run.
            small_events: EVENTS.min(events),
            small_products: PRODUCTS.min(events / 10).max(1),
            redb_cache_mb: args.redb_cache_mb,
            json: args.json,
        })
        .await;
    }
    let (events, products) = (args.events.unwrap_or(EVENTS), args.products.unwrap_or(PRODUCTS));
    if products + 1 >= events {
        bail!("--events ({events}) must exceed --products + 1 ({})", products + 1);
    }
    // Always a private server: the benchmark fills, purges and drains its streams.
    let nats = carrier_cli::nats_or_local(None, None)?;
    let bus = Bus::connect(&nats.url, "carrier-bench", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<StoresEvent>().await?;
    bus.ensure_stream(BARE_STREAM, BARE_SUBJECTS).await?;
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say(format!(
        "carrier bench: {} events per round (1 store, {} products, {} price changes), batch <= {}, nats-server {}, {} round(s)",
        events,
        products,
        events - products - 1,
        args.batch_max,
        bus.server_version(),
        args.rounds
    ));

    let mut rounds = Vec::new();
    let mut progress = carrier_cli::Progress::new("bench", u64::from(args.rounds) * 10);
    for round in 0..args.rounds {
        let r = run_round(&nats.url, &bus, &args, round, &mut progress).await?;
        let line = format!(
            "  round {}: bare_raw {:.0}/s, own_raw {:.0}/s, cache_path {:.0}/s ({:.0} per commit), publish_bare {:.0}/s, publish_own {:.0}/s, relay {:.0}/s, latency p50/p99/max {:.2}/{:.2}/{:.2} ms, lookups {:.0}/s, ordered_raw {:.0}/s, anchor_loop {:.0}/s, redb_get {:.0}/s, redb_get_shared {:.0}/s",
            round + 1,
            r.bare_raw,
            r.own_raw,
            r.cache_path,
            r.events_per_commit,
            r.publish_bare,
            r.publish_own,
            r.relay,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.latency_max_ms,
            r.lookups,
            r.ordered_raw,
            r.anchor_loop,
            r.redb_get,
            r.redb_get_shared
        );
        // With --json, stdout carries the one object and nothing else.
        if args.json {
            eprintln!("{line}");
        } else {
            progress.println(&line);
        }
        rounds.push(r);
    }
    progress.finish("done");

    let m = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let summary = Round {
        bare_raw: m(|r| r.bare_raw),
        own_raw: m(|r| r.own_raw),
        cache_path: m(|r| r.cache_path),
        publish_bare: m(|r| r.publish_bare),
        publish_own: m(|r| r.publish_own),
        relay: m(|r| r.relay),
        latency_p50_ms: m(|r| r.latency_p50_ms),
        latency_p99_ms: m(|r| r.latency_p99_ms),
        latency_max_ms: m(|r| r.latency_max_ms),
        lookups: m(|r| r.lookups),
        events_per_commit: m(|r| r.events_per_commit),
        ordered_raw: m(|r| r.ordered_raw),
        anchor_loop: m(|r| r.anchor_loop),
        redb_get: m(|r| r.redb_get),
        redb_get_shared: m(|r| r.redb_get_shared),
    };
    if args.json {
        let object = serde_json::json!({
            "bare_raw": summary.bare_raw.round(),
            "own_raw": summary.own_raw.round(),
            "cache_path": summary.cache_path.round(),
            "publish_bare": summary.publish_bare.round(),
            "publish_own": summary.publish_own.round(),
            "relay": summary.relay.round(),
            "latency_p50_ms": round3(summary.latency_p50_ms),
            "latency_p99_ms": round3(summary.latency_p99_ms),
            "latency_max_ms": round3(summary.latency_max_ms),
            "lookups": summary.lookups.round(),
            "ordered_raw": summary.ordered_raw.round(),
            "anchor_loop": summary.anchor_loop.round(),
            "redb_get": summary.redb_get.round(),
            "redb_get_shared": summary.redb_get_shared.round(),
            "cache_path_per_anchor_loop": round3(summary.cache_path / summary.anchor_loop),
            "anchor_loop_per_bare_raw": round3(summary.anchor_loop / summary.bare_raw),
            "ordered_raw_per_bare_raw": round3(summary.ordered_raw / summary.bare_raw),
            "lookups_per_redb_get_shared": round3(summary.lookups / summary.redb_get_shared),
            "cache_path_per_bare_raw": round3(summary.cache_path / summary.bare_raw),
            "own_raw_per_bare_raw": round3(summary.own_raw / summary.bare_raw),
            "publish_own_per_publish_bare": round3(summary.publish_own / summary.publish_bare),
            "relay_per_publish_bare": round3(summary.relay / summary.publish_bare),
            "events_per_commit": summary.events_per_commit.round(),
            "rate": args.rate,
            "nats_server_version": bus.server_version(),
            "events": events,
            "products": products,
            "rounds": args.rounds,
        });
        println!("{object}");
    } else {
        let s = &summary;
        println!("  medians over {} round(s)                      rate            ratio   goal", args.rounds);
        println!("  bare_raw      consume + ack, bare messages  {:>9.0} msg/s     1.00", s.bare_raw);
        println!(
            "  own_raw       consume + ack, Carrier's      {:>9.0} msg/s     {:.2}   >= 0.90 of bare_raw",
            s.own_raw,
            s.own_raw / s.bare_raw
        );
        println!(
            "  cache_path    consumer -> commit -> ack     {:>9.0} events/s  {:.2}   >= 0.85 of bare_raw",
            s.cache_path,
            s.cache_path / s.bare_raw
        );
        println!("  publish_bare  async publish, bare messages  {:>9.0} msg/s     1.00", s.publish_bare);
        println!(
            "  publish_own   async publish, Carrier's      {:>9.0} msg/s     {:.2}   >= 0.90 of publish_bare",
            s.publish_own,
            s.publish_own / s.publish_bare
        );
        println!(
            "  relay         command -> outbox -> ack      {:>9.0} cmd/s     {:.2}   >= 0.50 of publish_bare",
            s.relay,
            s.relay / s.publish_bare
        );
        println!(
            "  latency       publish -> cached, {} /s     p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   p99 <= 5 ms",
            args.rate, s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms
        );
        println!(
            "  ordered_raw   ordered consumer, no acks     {:>9.0} msg/s     {:.2}",
            s.ordered_raw,
            s.ordered_raw / s.bare_raw
        );
        println!(
            "  anchor_loop   plain pull/decode/commit/ack  {:>9.0} events/s  {:.2}   (cache_path is {:.2} of it)",
            s.anchor_loop,
            s.anchor_loop / s.bare_raw,
            s.cache_path / s.anchor_loop
        );
        println!("  redb_get      redb read, a txn each         {:>9.0} /s", s.redb_get);
        println!("  redb_get_shared  redb read, one txn        {:>9.0} /s", s.redb_get_shared);
        println!(
            "  lookups       cache reads by id, 1 thread   {:>9.0} /s        {:.2}   >= 0.80 of redb_get_shared",
            s.lookups,
            s.lookups / s.redb_get_shared
        );
        println!("  verified: every cached price equals the owner's, every event applied exactly once");
    }
    // Closed before its server stops, so that a clean end logs no reconnect warning.
    bus.close().await;
    drop(nats);
    Ok(ExitCode::SUCCESS)
}

async fn run_round(
    url: &str,
    bus: &Bus,
    args: &MallBench,
    round: u32,
    progress: &mut carrier_cli::Progress,
) -> anyhow::Result<Round> {
    let mut r = Round::default();
    let label = |what: &str| format!("round {}: {what}", round + 1);
    let mut step = u64::from(round) * 10;
    let mut advance = |progress: &mut carrier_cli::Progress, what: &str| {
        progress.update(step, &label(what));
        step += 1;
    };

    // Fresh ids every round: JetStream's duplicate window would drop a republished event.
    let workload = Workload::prices(args.events.unwrap_or(EVENTS), args.products.unwrap_or(PRODUCTS))?;
    let bare = bare_messages(&workload.events, round);
    let count = workload.events.len() as u64;
    bus.purge_stream(StoresEvent::STREAM).await?;
    bus.purge_stream(BARE_STREAM).await?;

    // Publishing, both kinds, the order alternating by round.
    advance(progress, "publish");
    let mut last_own = 0;
    let order = if round % 2 == 0 { [false, true] } else { [true, false] };
    for own in order {
        let messages = if own { &workload.events } else { &bare };
        let started = Instant::now();
        let last = bus.publish_many(messages, PUBLISH_WINDOW).await?;
        let rate = count as f64 / started.elapsed().as_secs_f64();
        if own {
            r.publish_own = rate;
            last_own = last;
        } else {
            r.publish_bare = rate;
        }
    }

    // Consuming, the five in rotating order.
    for which in 0..5 {
        match (which + round) % 5 {
            0 => {
                advance(progress, "bare_raw");
                let name = format!("bench-bare-{round}");
                let took = bus.raw_consume_and_ack(BARE_STREAM, &name, count).await?;
                bus.delete_consumer(BARE_STREAM, &name).await?;
                r.bare_raw = count as f64 / took.as_secs_f64();
            }
            1 => {
                advance(progress, "own_raw");
                let name = format!("bench-own-{round}");
                let took = bus.raw_consume_and_ack(StoresEvent::STREAM, &name, count).await?;
                bus.delete_consumer(StoresEvent::STREAM, &name).await?;
                r.own_raw = count as f64 / took.as_secs_f64();
            }
            2 => {
                advance(progress, "ordered_raw");
                let took = bus.raw_ordered_read(BARE_STREAM, count).await?;
                r.ordered_raw = count as f64 / took.as_secs_f64();
            }
            3 => {
                advance(progress, "anchor_loop");
                let name = format!("bench-anchor-{round}");
                r.anchor_loop =
                    super::baselines::anchor_loop(bus, StoresEvent::STREAM, &name, count, args.batch_max as usize)
                        .await?;
            }
            _ => {
                advance(progress, "cache_path");
                let path = cache_path(url, bus, args, &workload, last_own).await?;
                r.cache_path = path.rate;
                r.events_per_commit = path.per_commit;
                r.lookups = path.lookups;
                let ids: Vec<&str> = workload.expected.iter().map(|(id, _, _)| id.as_str()).collect();
                (r.redb_get, r.redb_get_shared) = super::baselines::redb_gets(&path.file, &ids)?;
            }
        }
    }

    advance(progress, "relay");
    bus.purge_stream(StoresEvent::STREAM).await?;
    r.relay = relay(url, bus, args, round).await?;

    advance(progress, "latency");
    bus.purge_stream(StoresEvent::STREAM).await?;
    let (p50, p99, max) = latency(url, bus, args).await?;
    (r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms) = (p50, p99, max);
    Ok(r)
}

/// Bare messages as the baseline: one `Nats-Msg-Id` header each and a body as long as the
/// Carrier event in the same place, so that both loops move the same bytes.
fn bare_messages(events: &[EncodedEvent], round: u32) -> Vec<EncodedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| EncodedEvent {
            event_id: EventId::new(),
            subject: "bench.bare".to_string(),
            headers: vec![("Nats-Msg-Id".to_string(), format!("bare-{round}-{i}"))],
            body: vec![0x5a; e.body.len()],
        })
        .collect()
}

/// What the cache path measured.
struct CachePath {
    /// Events/s.
    rate: f64,
    /// Events per commit.
    per_commit: f64,
    /// Lookups/s on the filled cache afterwards.
    lookups: f64,
    /// The filled file (closed), for the redb baselines.
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The baskets cache path over the whole STORES stream from a fresh file. The end state is
/// checked.
async fn cache_path(
    url: &str,
    bus: &Bus,
    args: &MallBench,
    workload: &Workload,
    last_seq: u64,
) -> anyhow::Result<CachePath> {
    let count = workload.events.len() as u64;
    let data = tempfile::Builder::new().prefix("carrier-bench-").tempdir()?;
    let mut config = SystemConfig::new(url, data.path(), vec![crate::baskets::context()]);
    config.batch_max = args.batch_max as usize;
    let system = CarrierSystem::start(config).await.context("carrier did not start")?;
    let baskets = system.handle::<BasketsHandle>().context("baskets missing")?;
    let consumer = baskets.consumer("stores").context("stores consumer missing")?;
    // Timed from the started system, as the baselines are timed from their made consumers:
    // what the consumer already applied while the system started is not counted.
    let started = Instant::now();
    let from = consumer.acked_stream_seq.load(Ordering::Relaxed).max(last_seq - count);
    wait_acked(&consumer, last_seq, Duration::from_secs(600)).await.context("the cache path did not finish")?;
    let elapsed = started.elapsed();
    let timed = last_seq - from;
    let applied = consumer.applied.load(Ordering::Relaxed);
    let batches = consumer.batches.load(Ordering::Relaxed).max(1);
    system.shutdown().await;
    // Each round is a new instance with a durable of its own; it is of no use after.
    bus.delete_consumer(StoresEvent::STREAM, &stores_durable_name(data.path())?).await?;
    if applied != count {
        bail!("{applied} events applied out of {count}");
    }
    let problems = workload.check(&baskets.db)?;
    if !problems.is_empty() {
        bail!("the cache disagrees with the workload: {}", problems.join("; "));
    }
    let lookups = lookups(&baskets, workload)?;
    let file = baskets.db.path().to_path_buf();
    drop(baskets);
    Ok(CachePath {
        rate: timed as f64 / elapsed.as_secs_f64(),
        per_commit: count as f64 / batches as f64,
        lookups,
        file,
        _dir: data,
    })
}

/// Reads of cached products by id on one thread, the ids in a scattered order, for about a
/// second. Every read must find its product.
fn lookups(baskets: &BasketsHandle, workload: &Workload) -> anyhow::Result<f64> {
    let ids: Vec<&str> = workload.expected.iter().map(|(id, _, _)| id.as_str()).collect();
    let n = ids.len();
    let mut done = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..10_000 {
            // A multiplicative step through the ids: no two reads in a row are neighbours.
            let id = ids[(done.wrapping_mul(7_919)) % n];
            if baskets.db.product(id)?.is_none() {
                bail!("lookup of {id} found nothing");
            }
            done += 1;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// The stores owner deciding `--commands` commands (one store, then its products), with many in
/// flight, until JetStream has acknowledged every event its relay published: commands/s.
async fn relay(url: &str, bus: &Bus, args: &MallBench, round: u32) -> anyhow::Result<f64> {
    let data = tempfile::Builder::new().prefix("carrier-bench-relay-").tempdir()?;
    let config = SystemConfig::new(url, data.path(), vec![crate::stores::context()]);
    let system = CarrierSystem::start(config).await.context("the stores owner did not start")?;
    let stores = system.handle::<StoresHandle>().context("stores missing")?;
    let base = bus.last_sequence(StoresEvent::STREAM).await?;
    let store = format!("bench-store-{round}");
    let started = Instant::now();
    let create = StoresCommand::CreateStore { id: store.clone(), name: "Bench".into(), location: "Lab".into() };
    stores.execute(create, Causality::default()).await?;
    let commands = (1..args.commands).map(|i| StoresCommand::AddProduct {
        id: format!("bench-{round}-p{i}"),
        store_id: store.clone(),
        name: format!("Product {i}"),
        description: "synthetic product".into(),
        sku: format!("B{i}"),
        price: 1_000,
    });
    let stores = Arc::new(stores);
    let mut decided = futures::stream::iter(commands)
        .map(|command| {
            let stores = stores.clone();
            async move { stores.execute(command, Causality::default()).await }
        })
        .buffer_unordered(COMMANDS_IN_FLIGHT);
    while let Some(result) = decided.next().await {
        result?;
    }
    let target = base + args.commands;
    let deadline = Instant::now() + Duration::from_secs(600);
    while bus.last_sequence(StoresEvent::STREAM).await? < target {
        if Instant::now() > deadline {
            bail!("the relay did not publish {} events within 10 minutes", args.commands);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    system.shutdown().await;
    Ok(args.commands as f64 / elapsed.as_secs_f64())
}

/// Publish → committed in the baskets cache and acknowledged, at `--rate` offered:
/// (p50, p99, max) in milliseconds over `--latency-events` events.
async fn latency(url: &str, bus: &Bus, args: &MallBench) -> anyhow::Result<(f64, f64, f64)> {
    let products = (args.latency_events / 4).max(1);
    let workload = Workload::prices(args.latency_events.max(products + 2), products)?;
    let data = tempfile::Builder::new().prefix("carrier-bench-latency-").tempdir()?;
    let mut config = SystemConfig::new(url, data.path(), vec![crate::baskets::context()]);
    config.batch_max = args.batch_max as usize;
    let system = CarrierSystem::start(config).await.context("carrier did not start")?;
    let baskets = system.handle::<BasketsHandle>().context("baskets missing")?;
    let consumer = baskets.consumer("stores").context("stores consumer missing")?;
    let base = bus.last_sequence(StoresEvent::STREAM).await?;
    let count = workload.events.len();

    // The watcher notes when each stream position became acknowledged (after its commit).
    let watcher = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let mut seen_at = Vec::with_capacity(count);
            let target = base + count as u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let moved = consumer.acked.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                let acked = consumer.acked_stream_seq.load(Ordering::Relaxed);
                let now = Instant::now();
                while base + (seen_at.len() as u64) < acked.min(target) {
                    seen_at.push(now);
                }
                if seen_at.len() == count || now > deadline {
                    return seen_at;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), moved).await;
            }
        })
    };
    let sent_at = bus.publish_paced(&workload.events, args.rate, PUBLISH_WINDOW).await?;
    let seen_at = watcher.await?;
    system.shutdown().await;
    // Each round is a new instance with a durable of its own; it is of no use after.
    bus.delete_consumer(StoresEvent::STREAM, &stores_durable_name(data.path())?).await?;
    if seen_at.len() != count {
        bail!("only {} of {count} events were cached within 10 minutes", seen_at.len());
    }
    let mut ms: Vec<f64> =
        seen_at.iter().zip(&sent_at).map(|(seen, sent)| (*seen - *sent).as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    Ok((at(0.50), at(0.99), ms[ms.len() - 1]))
}

/// Waits until the consumer has acknowledged `seq`.
async fn wait_acked(consumer: &ConsumerStats, seq: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let moved = consumer.acked.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        if consumer.acked_stream_seq.load(Ordering::Relaxed) >= seq {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("stream sequence {seq} not acknowledged within {within:?}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), moved).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
