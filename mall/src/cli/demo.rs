//! `carrier demo`: the single-node demo of MallBots' stores and baskets contexts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::customers::CustomersCommand;
use crate::stores::StoresCommand;
use crate::verify::{baskets_against_stores, depot_against_stores};
use anyhow::Context;
use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_messages::Causality;
use carrier_messages::TraceContext;

use carrier_cli::money;

use crate::prelude::*;

/// Arguments of `carrier demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// A NATS server to use instead of starting one (with --nats-url or --nats-context).
    #[command(flatten)]
    nats: carrier_cli::NatsArgs,
    /// Keep the redb files (and a started server's store) here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long to wait for the caches to agree and the orders to settle.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    timeout: u64,
    /// After the story, keep running (and serving the dashboard) until SIGINT or SIGTERM.
    #[arg(long)]
    stay: bool,
    #[command(flatten)]
    dashboard: carrier_cli::DashboardArgs,
    #[command(flatten)]
    otlp: carrier_cli::OtlpArgs,
}

/// Where a story of `carrier demo` runs: the server (the one named, or one of its own) and the
/// data directory (the one named, or a temporary one, deleted when this is dropped).
pub struct Stage {
    /// The server.
    pub nats: carrier_cli::Nats,
    /// The data directory.
    pub data_dir: PathBuf,
    /// How long the story waits for the caches to agree and the orders to settle.
    pub timeout: Duration,
    _temp: tempfile::TempDir,
}

impl DemoArgs {
    /// Sets the stage any story of `carrier demo` runs on (the mall's, or another app's), and the
    /// demo's logging.
    pub fn stage(&self) -> anyhow::Result<Stage> {
        carrier_cli::init_logging("warn,carrier::flow=info", true);
        self.dashboard.check()?;
        let temp = tempfile_dir()?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
        let nats = carrier_cli::nats_or_local(
            self.nats.names_a_server().then(|| self.nats.options()).transpose()?,
            self.data_dir.as_deref(),
        )?;
        Ok(Stage { nats, data_dir, timeout: Duration::from_secs(self.timeout), _temp: temp })
    }
}

/// The mall's story (seed 001): every context, the order flow, every cache checked.
pub async fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let stage = args.stage()?;
    let (nats, data_dir) = (&stage.nats, stage.data_dir.clone());
    println!("Carrier demo: stores publishes to JetStream at {}; baskets caches in {}\n", nats.url, data_dir.display());

    let exporter = carrier_cli::start_otlp(&args.otlp).await?;
    let system = CarrierSystem::start(SystemConfig::new(nats.options.clone(), &data_dir, crate::contexts()))
        .await
        .context("carrier did not start")?;
    let dashboard = carrier_cli::start_dashboard(&args.dashboard, system.observer()).await?;
    if let Some(dashboard) = &dashboard {
        println!("Dashboard: {}/ (JSON API under /api, metrics at /metrics)\n", dashboard.url());
    }
    let stores = system.handle::<crate::stores::StoresHandle>().context("stores context missing")?;
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
        let correlation = Causality {
            correlation_id: Some(uuid::Uuid::now_v7().to_string()),
            causation_id: None,
            trace: Some(TraceContext::new_root()),
            idempotency: None,
        };
        stores.execute(command, correlation).await.context("a demo command was refused")?;
    }

    let customers = system.handle::<crate::customers::CustomersHandle>().context("customers context missing")?;
    let people = [
        CustomersCommand::RegisterCustomer { id: id("ada"), name: "Ada".into(), sms_number: "+15550100".into() },
        CustomersCommand::RegisterCustomer { id: id("grace"), name: "Grace".into(), sms_number: "+15550101".into() },
        CustomersCommand::ChangeSmsNumber { id: id("ada"), sms_number: "+15550199".into() },
    ];
    for command in people {
        customers.execute(command, Causality::default()).await.context("a demo command was refused")?;
    }

    let baskets = system.handle::<crate::baskets::BasketsHandle>().context("baskets context missing")?;
    let depot = system.handle::<crate::depot::DepotHandle>().context("depot context missing")?;
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
    if problems.is_empty() {
        problems.extend(order_story(&system, &id, deadline).await?);
    }
    let consumer = &baskets.consumer("stores").expect("stores consumer");
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "\nbaskets consumer: {} delivered, {} applied, {} duplicates, {} dead-lettered",
        consumer.delivered.load(Relaxed),
        consumer.applied.load(Relaxed),
        consumer.duplicates.load(Relaxed),
        consumer.dead_lettered.load(Relaxed)
    );
    if args.stay {
        // Listening before saying so: a signal sent on reading the line stops it cleanly.
        carrier_cli::listen_for_stop();
        match &dashboard {
            Some(d) => println!("\nStill running: the dashboard is at {}/ ; Ctrl-C stops.", d.url()),
            None => println!("\nStill running; Ctrl-C stops."),
        }
        carrier_cli::shutdown_signal().await;
    }
    carrier_cli::stop_running(system, dashboard, exporter).await;
    drop(stage);
    if problems.is_empty() {
        println!("\nOK: every cache agrees with its owner, and the order went from checkout to completion.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nFAILED: the caches disagree with the owner:");
        for p in problems {
            println!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The order story of seed 001: a basket filled and checked out, the order created, its shopping
/// list made and completed, the order readied, the invoice paid, the order completed, the
/// customer texted, the order found through search. A second customer, disabled before checking
/// out, has the payment declined and the order canceled. Returns what went wrong.
async fn order_story(
    system: &CarrierSystem,
    id: &dyn Fn(&str) -> String,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    use crate::baskets::BasketsCommand as B;
    use crate::depot::DepotCommand;
    use crate::ordering::OrderStatus;
    use crate::search::{OrderFilter, SearchQuery};

    let baskets = system.handle::<crate::baskets::BasketsHandle>().context("baskets context missing")?;
    let depot = system.handle::<crate::depot::DepotHandle>().context("depot context missing")?;
    let ordering = system.handle::<crate::ordering::OrderingHandle>().context("ordering context missing")?;
    let payments = system.handle::<crate::payments::PaymentsHandle>().context("payments context missing")?;
    let notifications =
        system.handle::<crate::notifications::NotificationsHandle>().context("notifications context missing")?;
    let search = system.handle::<crate::search::SearchHandle>().context("search context missing")?;
    let customers = system.handle::<crate::customers::CustomersHandle>().context("customers context missing")?;
    let mut problems = Vec::new();

    println!("\n--- the order story ---");
    let (basket, ada) = (id("basket-1"), id("ada"));
    let script = vec![
        B::StartBasket { id: basket.clone(), customer_id: ada.clone() },
        B::AddItem { id: basket.clone(), product_id: id("kettle"), quantity: 2 },
        B::AddItem { id: basket.clone(), product_id: id("musicbox"), quantity: 1 },
        B::AddItem { id: basket.clone(), product_id: id("kettle"), quantity: 1 },
        B::RemoveItem { id: basket.clone(), product_id: id("kettle"), quantity: 1 },
        B::CheckoutBasket { id: basket.clone(), payment_id: id("payment-1") },
    ];
    // One trace for the whole story: every event it sets off, in every context, joins it.
    let correlation = Causality {
        correlation_id: Some(format!("order-{basket}")),
        causation_id: None,
        trace: Some(TraceContext::new_root()),
        idempotency: None,
    };
    for command in script {
        crate::baskets::execute(&baskets, command, correlation.clone())
            .await
            .context("a basket command was refused")?;
    }
    let list_ready = wait(deadline, || depot.db.shopping_list(&basket).ok().flatten().is_some()).await;
    if !list_ready {
        problems.push(format!("no shopping list was made for order {basket}"));
        return Ok(problems);
    }
    // The bot collects everything and reports the list completed.
    let complete = DepotCommand::CompleteShoppingList { id: basket.clone() };
    depot.execute(complete, correlation.clone()).await.context("the depot refused to complete the list")?;
    let completed = wait(deadline, || {
        search.db.order(&basket).ok().flatten().is_some_and(|o| o.status == OrderStatus::Completed)
            && notifications
                .db
                .sent()
                .map(|s| s.iter().filter(|(_, n)| n.order_id == basket).count() == 2)
                .unwrap_or(false)
    })
    .await;
    if !completed {
        problems.push(format!("order {basket} did not reach completed in search with two notifications"));
    }

    // Grace is disabled; once payments knows it, her checkout is declined and her order canceled.
    let (basket2, grace) = (id("basket-2"), id("grace"));
    customers
        .execute(crate::customers::CustomersCommand::DisableCustomer { id: grace.clone() }, Causality::default())
        .await
        .context("disabling a customer was refused")?;
    if !wait(deadline, || payments.db.customer(&grace).ok().flatten().is_some_and(|c| !c.enabled)).await {
        problems.push("payments never learned that grace was disabled".to_string());
    }
    for command in [
        B::StartBasket { id: basket2.clone(), customer_id: grace.clone() },
        B::AddItem { id: basket2.clone(), product_id: id("musicbox"), quantity: 1 },
        B::CheckoutBasket { id: basket2.clone(), payment_id: id("payment-2") },
    ] {
        crate::baskets::execute(&baskets, command, Causality::default())
            .await
            .context("a basket command was refused")?;
    }
    let canceled = wait(deadline, || {
        search.db.order(&basket2).ok().flatten().is_some_and(|o| o.status == OrderStatus::Canceled)
            && notifications
                .db
                .sent()
                .map(|s| s.iter().any(|(_, n)| n.order_id == basket2 && n.kind == "order_canceled"))
                .unwrap_or(false)
    })
    .await;
    if !canceled {
        problems.push(format!("order {basket2} of a disabled customer was not canceled"));
    }

    println!("\nordering (owner of orders)");
    for (oid, o) in ordering.db.orders()? {
        println!(
            "  order   {oid:<26} {:<10} {:>10} v{}  customer {}",
            o.status.as_str(),
            money(o.total),
            o.version,
            o.customer_id
        );
        for i in &o.items {
            println!(
                "          {} x {:<16} from {:<16} at {:>8}",
                i.quantity,
                i.product_name,
                i.store_name,
                money(i.price)
            );
        }
    }
    println!("\ndepot shopping lists");
    for (lid, l) in depot.db.shopping_lists()? {
        let stops: Vec<String> = l
            .stops
            .iter()
            .map(|s| format!("{} ({}): {} items", s.store_name, s.store_location, s.items.len()))
            .collect();
        println!("  list    {lid:<26} {:<10?} {}", l.status, stops.join("; "));
    }
    println!("\npayments invoices");
    for (iid, i) in payments.db.invoices()? {
        println!("  invoice {iid:<26} {:<10?} {:>10}", i.status, money(i.amount));
    }
    println!("\nnotifications sent");
    for (_, n) in notifications.db.sent()? {
        println!("  to {:<12} {}", n.sms_number, n.text);
    }
    let reply = crate::search::answer(
        &search.db,
        SearchQuery::SearchOrders(OrderFilter { customer_id: Some(ada.clone()), ..Default::default() }),
    );
    println!("\nsearch: orders of customer {ada}");
    for o in &reply.orders {
        let lines: Vec<String> =
            o.items.iter().map(|i| format!("{} x {} ({})", i.quantity, i.product_name, i.store_name)).collect();
        println!(
            "  {} {} {} {} [{}] created {}",
            o.order_id,
            o.customer_name,
            o.status.as_str(),
            money(o.total),
            lines.join(", "),
            o.created_at
        );
    }
    match reply.orders.first() {
        Some(o) if o.order_id == basket && o.customer_name == "Ada" && o.total == 2 * 3499 + 3500 => {}
        other => problems.push(format!("search did not find ada's order as expected: {other:?}")),
    }
    Ok(problems)
}

/// Polls `done` every 20 ms until it holds or `deadline` passes.
async fn wait(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
