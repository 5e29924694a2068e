//! `carrier inspect`: a context's tables, read from its redb file.

use std::process::ExitCode;

use anyhow::{bail, Context};
use carrier_actors::ContextName;
use carrier_storage::{
    BasketsDb, ContextDb, ContextFile, ContextKind, CustomersDb, DepotDb, NotificationsDb, OrderingDb, PaymentsDb,
    SearchDb, StoresDb,
};

/// Arguments of `carrier inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The context whose file to read.
    context: ContextName,
    #[command(flatten)]
    data: crate::DataDir,
    /// Rows shown per table.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub fn main(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = args.data.data_dir.join(args.context.db_file());
    if !path.exists() {
        bail!("{} does not exist (wrong --data-dir, or the context never ran there)", path.display());
    }
    let hint = || format!("cannot read {} (a running carrier holds it open; stop it first)", path.display());
    match args.context {
        ContextName::Stores => {
            let db = StoresDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            section("stores", db.stores()?.len());
            for (id, s) in db.stores()?.into_iter().take(args.limit) {
                let flag = if s.participating { "participating" } else { "" };
                println!("  {id:<24} {:<28} {:<20} v{:<4} {flag}", s.name, s.location, s.version);
            }
            section("products", db.products()?.len());
            for (id, p) in db.products()?.into_iter().take(args.limit) {
                let flag = if p.removed { "removed" } else { "" };
                println!(
                    "  {id:<24} {:<28} store {:<16} {:>10} v{:<4} {flag}",
                    p.name,
                    p.store_id,
                    money(p.price),
                    p.version
                );
            }
            let pending = db.outbox_pending(args.limit)?;
            section("outbox (unpublished)", db.outbox_len()? as usize);
            for (key, event) in pending {
                println!("  #{key:<6} {:<36} {} {}", event.subject, event.event_id, event.body.len());
            }
        }
        ContextName::Customers => {
            let db = CustomersDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let customers = db.customers()?;
            section("customers", customers.len());
            for (id, c) in customers.into_iter().take(args.limit) {
                let flag = if c.enabled { "enabled" } else { "disabled" };
                println!("  {id:<24} {:<28} {:<20} v{:<4} {flag}", c.name, c.sms_number, c.version);
            }
            let pending = db.outbox_pending(args.limit)?;
            section("outbox (unpublished)", db.outbox_len()? as usize);
            for (key, event) in pending {
                println!("  #{key:<6} {:<36} {} {}", event.subject, event.event_id, event.body.len());
            }
        }
        ContextName::Baskets => {
            let db = BasketsDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let stores = db.stores()?;
            section("stores_cache", stores.len());
            for (id, s, version) in stores.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} v{version}", s.name);
            }
            let products = db.products()?;
            section("products_cache", products.len());
            for (id, p, version) in products.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} store {:<16} {:>10} v{version}", p.name, p.store_id, money(p.price));
            }
            let baskets = db.baskets()?;
            section("baskets", baskets.len());
            for (id, b) in baskets.into_iter().take(args.limit) {
                let lines: Vec<String> = b.items.iter().map(|i| format!("{}x{}", i.quantity, i.product_id)).collect();
                println!(
                    "  {id:<24} customer {:<16} {:<12?} v{:<4} {}",
                    b.customer_id,
                    b.status,
                    b.version,
                    lines.join(" ")
                );
            }
            outbox_section(&db, args.limit)?;
            engine_sections(&db, args.limit)?;
        }
        ContextName::Ordering => {
            let db = OrderingDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let orders = db.orders()?;
            section("orders", orders.len());
            for (id, o) in orders.into_iter().take(args.limit) {
                println!(
                    "  {id:<24} customer {:<16} {:<10} {:>10} v{:<4} {} lines",
                    o.customer_id,
                    o.status.as_str(),
                    money(o.total),
                    o.version,
                    o.items.len()
                );
            }
            outbox_section(&db, args.limit)?;
            engine_sections(&db, args.limit)?;
        }
        ContextName::Payments => {
            let db = PaymentsDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let customers = db.customers()?;
            section("customers_cache", customers.len());
            for (id, c, version) in customers.into_iter().take(args.limit) {
                println!("  {id:<24} {:<10} v{version}", if c.enabled { "enabled" } else { "disabled" });
            }
            let invoices = db.invoices()?;
            section("invoices", invoices.len());
            for (id, i) in invoices.into_iter().take(args.limit) {
                println!(
                    "  {id:<24} customer {:<16} {:<10?} {:>10} v{}",
                    i.customer_id,
                    i.status,
                    money(i.amount),
                    i.version
                );
            }
            outbox_section(&db, args.limit)?;
            engine_sections(&db, args.limit)?;
        }
        ContextName::Notifications => {
            let db = NotificationsDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let customers = db.customers()?;
            section("customers_cache", customers.len());
            for (id, c, version) in customers.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} {:<20} v{version}", c.name, c.sms_number);
            }
            let sent = db.sent()?;
            section("sent", sent.len());
            for (event_id, n) in sent.into_iter().take(args.limit) {
                println!("  {event_id}  {:<16} to {:<16} {}", n.kind, n.sms_number, n.text);
            }
            engine_sections(&db, args.limit)?;
        }
        ContextName::Search => {
            let db = SearchDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let customers = db.customers()?;
            section("customers_cache", customers.len());
            for (id, c, version) in customers.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} v{version}", c.name);
            }
            let stores = db.stores()?;
            section("stores_cache", stores.len());
            for (id, s, version) in stores.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} v{version}", s.name);
            }
            let products = db.products()?;
            section("products_cache", products.len());
            for (id, p, version) in products.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} store {:<16} v{version}", p.name, p.store_id);
            }
            let filter = carrier_messages::search::OrderFilter {
                limit: Some(args.limit.clamp(1, carrier_messages::search::MAX_LIMIT as usize) as u32),
                ..Default::default()
            };
            let (orders, _) = db.search(&filter)?;
            section("orders", orders.len());
            for o in orders {
                println!(
                    "  {:<24} {:<20} {:<10} {:>10} stores {}",
                    o.order_id,
                    o.customer_name,
                    o.status.as_str(),
                    money(o.total),
                    o.store_ids.join(",")
                );
            }
            engine_sections(&db, args.limit)?;
        }
        ContextName::Depot => {
            let db = DepotDb::open(&path).with_context(hint)?;
            println!("{}", path.display());
            let stores = db.stores()?;
            section("stores_cache", stores.len());
            for (id, s, version) in stores.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} {:<20} v{version}", s.name, s.location);
            }
            let products = db.products()?;
            section("products_cache", products.len());
            for (id, p, version) in products.into_iter().take(args.limit) {
                println!("  {id:<24} {:<28} store {:<16} v{version}", p.name, p.store_id);
            }
            let lists = db.shopping_lists()?;
            section("shopping_lists", lists.len());
            for (id, l) in lists.into_iter().take(args.limit) {
                let stops: Vec<String> =
                    l.stops.iter().map(|s| format!("{} ({})", s.store_name, s.store_location)).collect();
                println!(
                    "  {id:<24} order {:<16} {:<10?} v{:<4} {}",
                    l.order_id,
                    l.status,
                    l.version,
                    stops.join(" -> ")
                );
            }
            outbox_section(&db, args.limit)?;
            engine_sections(&db, args.limit)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A consuming context's unpublished events.
fn outbox_section<K: ContextKind>(db: &ContextFile<K>, limit: usize) -> anyhow::Result<()> {
    section("outbox (unpublished)", db.outbox_len()? as usize);
    for (key, event) in db.outbox_pending(limit)? {
        println!("  #{key:<6} {:<36} {} {}", event.subject, event.event_id, event.body.len());
    }
    Ok(())
}

/// The inbox, checkpoints and parked events every consuming context has.
fn engine_sections(db: &impl ContextDb, limit: usize) -> anyhow::Result<()> {
    let stats = db.engine_stats()?;
    section("inbox", stats.inbox as usize);
    for (event_id, seq) in db.inbox(limit)? {
        println!("  {event_id}  stream seq {seq}");
    }
    section("checkpoints", stats.checkpoints.len());
    for (durable, seq) in stats.checkpoints {
        println!("  {durable:<24} last committed stream seq {seq}");
    }
    println!(
        "\nentities with a version: {}   parked (waiting for an earlier version): {}",
        stats.entities, stats.parked
    );
    Ok(())
}

fn section(name: &str, rows: usize) {
    println!("\n{name} ({rows} rows)");
}

/// Minor units as a decimal amount.
pub fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.unsigned_abs() / 100, minor.unsigned_abs() % 100)
}
