//! `carrier bench`: the baskets cache path against a raw consume-and-ack loop, same messages,
//! same process, same server.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use carrier_actors::baskets::stores_durable_name;
use carrier_actors::bus::Bus;
use carrier_actors::{CarrierSystem, ContextName, SystemConfig};
use carrier_messages::codec::Causality;
use carrier_messages::stores::*;
use carrier_messages::{Decoded, DomainEvent, EncodedEvent};

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
    crate::init_logging("warn", false);
    if args.products + 1 >= args.events {
        bail!("--events ({}) must exceed --products + 1 ({})", args.events, args.products + 1);
    }
    // Always a private server: the benchmark fills and drains the STORES stream.
    let nats = crate::server::nats_or_local(None, None)?;
    let bus = Bus::connect(&nats.url, "carrier-bench", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<StoresEvent>().await?;

    let (events, expected_prices) = workload(args.events, args.products)?;
    let started = Instant::now();
    let last_seq = bus.publish_many(&events, 4096).await?;
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
    let mut carrier_rates = Vec::new();
    for round in 0..args.rounds {
        let raw_name = format!("bench-raw-{round}");
        let raw = bus.raw_consume_and_ack(StoresEvent::STREAM, &raw_name, count).await?;
        bus.delete_consumer(StoresEvent::STREAM, &raw_name).await?;
        raw_rates.push(count as f64 / raw.as_secs_f64());

        let data = tempfile::Builder::new().prefix("carrier-bench-").tempdir()?;
        bus.delete_consumer(StoresEvent::STREAM, &stores_durable_name()).await?;
        let mut config = SystemConfig::new(&nats.url, data.path());
        config.contexts = vec![ContextName::Baskets];
        config.batch_max = args.batch_max as usize;
        let t0 = Instant::now();
        let system = CarrierSystem::start(config).await.context("carrier did not start")?;
        let baskets = system.baskets.clone().context("baskets missing")?;
        let deadline = t0 + Duration::from_secs(600);
        while baskets.stores_consumer.acked_stream_seq.load(Ordering::Relaxed) < last_seq {
            if Instant::now() > deadline {
                bail!("the cache path did not finish within 10 minutes");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let elapsed = t0.elapsed();
        carrier_rates.push(count as f64 / elapsed.as_secs_f64());
        let applied = baskets.stores_consumer.applied.load(Ordering::Relaxed);
        let batches = baskets.stores_consumer.batches.load(Ordering::Relaxed);
        system.shutdown().await;
        check(&baskets.db, &expected_prices, applied, count)?;
        println!(
            "  round {}: raw {:>9.0} msg/s   carrier {:>9.0} events/s   ratio {:.2}   ({} batches, {:.0} events per commit)",
            round + 1,
            raw_rates[round as usize],
            carrier_rates[round as usize],
            carrier_rates[round as usize] / raw_rates[round as usize],
            batches,
            count as f64 / batches.max(1) as f64
        );
    }
    let raw = median(&mut raw_rates);
    let carrier = median(&mut carrier_rates);
    println!("  raw consume + ack per message (median):   {raw:>9.0} msg/s     1.00");
    println!("  carrier cache path (median):              {carrier:>9.0} events/s  {:.2} of raw", carrier / raw);
    println!("  verified: every cached price equals the owner's, every event applied exactly once");
    drop(nats);
    Ok(ExitCode::SUCCESS)
}

/// One store, `products` products, then price increases round-robin, each with its entity's
/// next version. Returns the encoded events and each product's final price.
fn workload(events: u64, products: u64) -> anyhow::Result<(Vec<EncodedEvent>, Vec<(String, i64)>)> {
    let causality = Causality::default();
    let mut out = Vec::with_capacity(events as usize);
    let store = StoresEvent::StoreCreated(StoreCreated {
        id: "bench-store".into(),
        name: "Bench".into(),
        location: "Lab".into(),
    });
    out.push(Decoded::new(store, 1, &causality).encode()?);
    let mut prices = Vec::with_capacity(products as usize);
    let mut versions = vec![1u64; products as usize];
    for p in 0..products {
        let id = format!("bench-p{p}");
        let added = StoresEvent::ProductAdded(ProductAdded {
            id: id.clone(),
            store_id: "bench-store".into(),
            name: format!("Product {p}"),
            description: "benchmark product".into(),
            sku: format!("B{p}"),
            price: 1_000,
        });
        out.push(Decoded::new(added, 1, &causality).encode()?);
        prices.push((id, 1_000i64));
    }
    let mut i = 0usize;
    while (out.len() as u64) < events {
        let p = i % products as usize;
        versions[p] += 1;
        let delta = 1 + (i % 7) as i64;
        prices[p].1 += delta;
        let raise = StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: prices[p].0.clone(), delta });
        out.push(Decoded::new(raise, versions[p], &causality).encode()?);
        i += 1;
    }
    Ok((out, prices))
}

fn check(db: &carrier_storage::BasketsDb, expected: &[(String, i64)], applied: u64, count: u64) -> anyhow::Result<()> {
    if applied != count {
        bail!("{applied} events applied out of {count}");
    }
    for (id, price) in expected {
        let cached = db.product(id)?.with_context(|| format!("product {id} missing from the cache"))?;
        if cached.price != *price {
            bail!("product {id}: cached price {} but {} expected", cached.price, price);
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
