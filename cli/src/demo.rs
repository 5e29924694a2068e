//! `carrier demo`: the single-node demo of MallBots' stores and baskets contexts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use carrier_actors::verify::{baskets_against_stores, depot_against_stores};
use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_messages::codec::Causality;
use carrier_messages::customers::CustomersCommand;
use carrier_messages::stores::StoresCommand;

use crate::inspect::money;

/// Arguments of `carrier demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Keep the redb files (and a started server's store) here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long to wait for the caches to agree.
    #[arg(long, default_value = "20", value_name = "SECONDS")]
    timeout: u64,
}

pub async fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn,carrier::flow=info", true);
    let temp = tempfile_dir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let nats = crate::server::nats_or_local(args.nats_url.clone(), args.data_dir.as_deref())?;
    println!("Carrier demo: stores publishes to JetStream at {}; baskets caches in {}\n", nats.url, data_dir.display());

    let system =
        CarrierSystem::start(SystemConfig::new(&nats.url, &data_dir)).await.context("carrier did not start")?;
    let stores = system.stores.clone().context("stores context missing")?;
    let run_id = &uuid::Uuid::now_v7().simple().to_string()[..8];
    let id = |name: &str| format!("{name}-{run_id}");
    let script = vec![
        StoresCommand::CreateStore { id: id("store-1"), name: "Waldorf's Wares".into(), location: "North wing".into() },
        StoresCommand::CreateStore { id: id("store-2"), name: "Tiny Treasures".into(), location: "South wing".into() },
        StoresCommand::EnableParticipation { id: id("store-1") },
        product(&id("kettle"), &id("store-1"), "Kettle", 2999),
        product(&id("teapot"), &id("store-1"), "Teapot", 1999),
        product(&id("musicbox"), &id("store-2"), "Music box", 4500),
        StoresCommand::RebrandStore { id: id("store-2"), name: "Treasure Trove".into() },
        StoresCommand::RebrandProduct {
            id: id("teapot"),
            name: "Porcelain teapot".into(),
            description: "Holds six cups".into(),
        },
        StoresCommand::IncreaseProductPrice { id: id("kettle"), delta: 500 },
        StoresCommand::DecreaseProductPrice { id: id("musicbox"), delta: 1000 },
        StoresCommand::RemoveProduct { id: id("teapot") },
    ];
    for command in script {
        let correlation = Causality { correlation_id: Some(uuid::Uuid::now_v7().to_string()), causation_id: None };
        stores.execute(command, correlation).await.context("a demo command was refused")?;
    }

    let customers = system.customers.clone().context("customers context missing")?;
    let people = [
        CustomersCommand::RegisterCustomer { id: id("ada"), name: "Ada".into(), sms_number: "+15550100".into() },
        CustomersCommand::RegisterCustomer { id: id("grace"), name: "Grace".into(), sms_number: "+15550101".into() },
        CustomersCommand::ChangeSmsNumber { id: id("ada"), sms_number: "+15550199".into() },
    ];
    for command in people {
        customers.execute(command, Causality::default()).await.context("a demo command was refused")?;
    }

    let baskets = system.baskets.clone().context("baskets context missing")?;
    let depot = system.depot.clone().context("depot context missing")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut problems;
    loop {
        problems = baskets_against_stores(&stores.db, &baskets.db)?;
        problems.extend(depot_against_stores(&stores.db, &depot.db)?.into_iter().map(|p| format!("depot: {p}")));
        if problems.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("\nstores (owner state)                                    | baskets caches");
    let cached_stores = baskets.db.stores()?;
    for (sid, s) in stores.db.stores()? {
        let cached = cached_stores.iter().find(|(c, _, _)| *c == sid);
        let right = cached.map(|(_, c, v)| format!("{:<24} v{v}", c.name)).unwrap_or_else(|| "(missing)".into());
        println!("  store   {:<26} {:<16} v{:<3} | {right}", sid, s.name, s.version);
    }
    let cached_products = baskets.db.products()?;
    for (pid, p) in stores.db.products()? {
        let cached = cached_products.iter().find(|(c, _, _)| *c == pid);
        let left =
            if p.removed { format!("{:<16} removed", p.name) } else { format!("{:<16} {:>8}", p.name, money(p.price)) };
        let right = cached.map(|(_, c, v)| format!("{:<16} {:>8} v{v}", c.name, money(c.price))).unwrap_or_else(|| {
            if p.removed {
                "(removed)".into()
            } else {
                "(missing)".into()
            }
        });
        println!("  product {:<26} {left:<25} v{:<3} | {right}", pid, p.version);
    }
    println!("\ndepot caches (where the bots go)");
    for (sid, s, v) in depot.db.stores()? {
        println!("  store   {sid:<26} {:<16} {:<12} v{v}", s.name, s.location);
    }
    for (pid, p, v) in depot.db.products()? {
        println!("  product {pid:<26} {:<16} at {:<22} v{v}", p.name, p.store_id);
    }
    println!("\ncustomers (owner state)");
    for (cid, c) in customers.db.customers()? {
        println!("  customer {cid:<25} {:<16} {:<14} v{}", c.name, c.sms_number, c.version);
    }
    let consumer = &baskets.stores_consumer;
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "\nbaskets consumer: {} delivered, {} applied, {} duplicates, {} dead-lettered",
        consumer.delivered.load(Relaxed),
        consumer.applied.load(Relaxed),
        consumer.duplicates.load(Relaxed),
        consumer.dead_lettered.load(Relaxed)
    );
    system.shutdown().await;
    drop(nats);
    if problems.is_empty() {
        println!("\nOK: the baskets and depot caches agree with the stores owner.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nFAILED: the caches disagree with the owner:");
        for p in problems {
            println!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn product(id: &str, store: &str, name: &str, price: i64) -> StoresCommand {
    StoresCommand::AddProduct {
        id: id.into(),
        store_id: store.into(),
        name: name.into(),
        description: format!("A fine {}", name.to_lowercase()),
        sku: format!("SKU-{}", &id[..id.len().min(12)]),
        price,
    }
}

fn tempfile_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("carrier-demo-").tempdir().context("cannot make a temporary directory")
}
