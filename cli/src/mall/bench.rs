//! `carrier bench`: the baskets cache path against a raw consume-and-ack loop, same messages,
//! same process, same server.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use carrier_actors::bus::Bus;
use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_mall::baskets::stores_durable_name;
use carrier_mall::workload::Workload;
use carrier_messages::stores::StoresEvent;
use carrier_messages::DomainEvent;

/// Arguments of `carrier bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Events to publish and consume.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    events: u64,
    /// Products the price changes are spread over.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    products: u64,
    /// Most events applied per redb transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_max: u32,
    /// Rounds of (baseline, carrier); the median of each is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
}

pub async fn main(args: BenchArgs) -> anyhow::Result<ExitCode> {
    carrier_cli::init_logging("warn", false);
    if args.products + 1 >= args.events {
        bail!("--events ({}) must exceed --products + 1 ({})", args.events, args.products + 1);
    }
    // Always a private server: the benchmark fills and drains the STORES stream.
    let nats = carrier_cli::server::nats_or_local(None, None)?;
    let bus = Bus::connect(&nats.url, "carrier-bench", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<StoresEvent>().await?;

    let workload = Workload::prices(args.events, args.products)?;
    let events = &workload.events;
    let started = Instant::now();
    let last_seq = bus.publish_many(events, 4096).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    println!(
        "carrier bench: {} events (1 store, {} products, {} price changes), batch <= {}, nats-server {}, {} round(s)",
        events.len(),
        args.products,
        events.len() as u64 - args.products - 1,
        args.batch_max,
        bus.server_version(),
        args.rounds
    );
    println!("  publish, 4096 acks in flight:         {:>9.0} events/s", events.len() as f64 / publish_secs);

    let count = events.len() as u64;
    let mut raw_rates = Vec::new();
    let mut off_rates = Vec::new();
    let mut on_rates = Vec::new();
    let mut progress = carrier_cli::progress::Progress::new("bench", count * 3 * u64::from(args.rounds));
    let mut done = 0u64;
    for round in 0..args.rounds {
        progress.update(done, &format!("round {}: raw consume + ack", round + 1));
        let raw_name = format!("bench-raw-{round}");
        let raw = bus.raw_consume_and_ack(StoresEvent::STREAM, &raw_name, count).await?;
        bus.delete_consumer(StoresEvent::STREAM, &raw_name).await?;
        raw_rates.push(count as f64 / raw.as_secs_f64());
        done += count;

        // Metrics off, then on (the order alternates by round, so that neither always runs on a
        // warmer machine). "On" is what `carrier run` does with its dashboard: every hook records,
        // and a sampler takes a snapshot and encodes /metrics once a second.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for metrics_on in order {
            let label = if metrics_on { "metrics on" } else { "metrics off" };
            let rate = cache_path(&nats.url, &bus, &args, &workload, last_seq, metrics_on, |acked| {
                progress.update(done + acked.min(count), &format!("round {}: cache path, {label}", round + 1))
            })
            .await?;
            done += count;
            if metrics_on {
                on_rates.push(rate.0)
            } else {
                off_rates.push(rate.0)
            }
            progress.println(&format!(
                "  round {}: carrier, {label:<11} {:>9.0} events/s   {:.2} of raw   ({} batches, {:.0} events per commit)",
                round + 1,
                rate.0,
                rate.0 / raw_rates[round as usize],
                rate.1,
                count as f64 / rate.1.max(1) as f64
            ));
        }
        progress.println(&format!(
            "  round {}: raw consume + ack   {:>9.0} msg/s",
            round + 1,
            raw_rates[round as usize]
        ));
    }
    progress.finish("done");
    let raw = median(&mut raw_rates);
    let off = median(&mut off_rates);
    let on = median(&mut on_rates);
    println!("  raw consume + ack per message (median):   {raw:>9.0} msg/s     1.00");
    println!("  carrier cache path, metrics off (median): {off:>9.0} events/s  {:.2} of raw", off / raw);
    println!("  carrier cache path, metrics on (median):  {on:>9.0} events/s  {:.2} of raw", on / raw);
    println!("  metrics on / metrics off:                 {:.3}", on / off);
    println!("  verified: every cached price equals the owner's, every event applied exactly once");
    drop(nats);
    Ok(ExitCode::SUCCESS)
}

/// One run of the baskets cache path over the whole stream: (events/s, batches).
async fn cache_path(
    url: &str,
    bus: &Bus,
    args: &BenchArgs,
    workload: &Workload,
    last_seq: u64,
    metrics_on: bool,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<(f64, u64)> {
    let count = workload.events.len() as u64;
    let data = tempfile::Builder::new().prefix("carrier-bench-").tempdir()?;
    bus.delete_consumer(StoresEvent::STREAM, &stores_durable_name()).await?;
    let mut config = SystemConfig::new(url, data.path(), vec![carrier_mall::baskets::context()]);
    config.batch_max = args.batch_max as usize;
    if metrics_on {
        carrier_actors::metrics::enable();
    } else {
        carrier_actors::metrics::disable();
    }
    let t0 = Instant::now();
    let system = CarrierSystem::start(config).await.context("carrier did not start")?;
    let sampler = if metrics_on {
        let snapshots = system.observer().start_sampler(Duration::from_secs(1)).await;
        Some(tokio::spawn(async move {
            let mut snapshots = snapshots;
            while snapshots.changed().await.is_ok() {
                // A scrape a second, as Prometheus would.
                let _ = carrier_actors::metrics::get().map(|m| m.encode());
            }
        }))
    } else {
        None
    };
    let baskets = system.handle::<carrier_mall::baskets::BasketsHandle>().context("baskets missing")?;
    let consumer = baskets.consumer("stores").context("stores consumer missing")?;
    let deadline = t0 + Duration::from_secs(600);
    let mut last_report = Instant::now();
    while consumer.acked_stream_seq.load(Ordering::Relaxed) < last_seq {
        if Instant::now() > deadline {
            bail!("the cache path did not finish within 10 minutes");
        }
        if last_report.elapsed() > Duration::from_millis(200) {
            on_progress(consumer.applied.load(Ordering::Relaxed));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = t0.elapsed();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    carrier_actors::metrics::disable();
    let applied = consumer.applied.load(Ordering::Relaxed);
    let batches = consumer.batches.load(Ordering::Relaxed);
    system.shutdown().await;
    check(&baskets.db, workload, applied, count)?;
    Ok((count as f64 / elapsed.as_secs_f64(), batches))
}

fn check(db: &carrier_storage::BasketsDb, workload: &Workload, applied: u64, count: u64) -> anyhow::Result<()> {
    if applied != count {
        bail!("{applied} events applied out of {count}");
    }
    let problems = workload.check(db)?;
    if !problems.is_empty() {
        bail!("the cache disagrees with the workload: {}", problems.join("; "));
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
