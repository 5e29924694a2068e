//! The limits `carrier bench` measures Carrier against, written without Carrier's runtime: what
//! a hand-written program on the same server, client and redb can do.
//!
//! - `anchor_loop`: the plain loop a consumer that commits per batch cannot beat: pull a batch
//!   as Carrier's consumers pull, decode every event with the same decoder, apply it in ONE redb
//!   transaction with an inbox row, the same cached product row as the baskets context keeps and
//!   a checkpoint, commit (fsync), then one ack of the batch's last message (`AckPolicy::All`).
//! - `redb_get` and `redb_get_shared`: point reads of the baskets file's products, the table
//!   `lookups` reads, a read transaction each or one for all, the row's bytes only (no decoding).

use std::time::{Duration, Instant};

use anyhow::bail;
use carrier_actors::{Bus, Delivery};
use carrier_messages::Decoded;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::baskets::CachedProduct;
use crate::caches::stores::PRODUCTS_CACHE;
use crate::stores::StoresEvent;

const INBOX: TableDefinition<u128, u64> = TableDefinition::new("inbox");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new(PRODUCTS_CACHE);
const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");

/// Runs the plain loop over the first `count` messages of `stream`: events/s.
pub(super) async fn anchor_loop(
    bus: &Bus,
    stream: &str,
    durable: &str,
    count: u64,
    batch_max: usize,
) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new().prefix("carrier-bench-anchor-").tempdir()?;
    let db = redb::Database::create(dir.path().join("anchor.redb"))?;
    let took = bus
        .raw_batch_loop(stream, durable, count, batch_max, |batch| apply(&db, batch).map_err(|e| e.to_string()))
        .await?;
    bus.delete_consumer(stream, durable).await?;
    Ok(count as f64 / took.as_secs_f64())
}

/// One batch in one transaction.
fn apply(db: &redb::Database, batch: &[Delivery]) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut inbox = txn.open_table(INBOX)?;
        let mut products = txn.open_table(PRODUCTS)?;
        let mut checkpoints = txn.open_table(CHECKPOINTS)?;
        for d in batch {
            for decoded in Decoded::<StoresEvent>::decode_all(&d.subject, |name| d.header(name), &d.payload)? {
                let id = decoded.envelope.event_id.0.as_u128();
                if inbox.get(id)?.is_some() {
                    continue;
                }
                inbox.insert(id, d.stream_seq)?;
                match decoded.event {
                    StoresEvent::ProductAdded(e) => {
                        let row = CachedProduct { store_id: e.store_id, name: e.name, price: e.price };
                        products.insert(e.id.as_str(), carrier_messages::cbor::to_vec(&row)?.as_slice())?;
                    }
                    StoresEvent::ProductPriceIncreased(e) => {
                        let Some(bytes) = products.get(e.id.as_str())? else { bail!("product {} missing", e.id) };
                        let mut row: CachedProduct = carrier_messages::cbor::from_slice(bytes.value())?;
                        drop(bytes);
                        row.price += e.delta;
                        products.insert(e.id.as_str(), carrier_messages::cbor::to_vec(&row)?.as_slice())?;
                    }
                    _ => {}
                }
            }
        }
        if let Some(last) = batch.last() {
            checkpoints.insert("anchor", last.stream_seq)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Point reads of `ids` in `file`'s products for about a second: (a read transaction each,
/// one shared read transaction), reads/s. Every read must find its row.
pub(super) fn redb_gets(path: &std::path::Path, ids: &[&str]) -> anyhow::Result<(f64, f64)> {
    let db = redb::Database::open(path)?;
    let n = ids.len();
    let per_read = |shared: bool| -> anyhow::Result<f64> {
        let shared_txn = db.begin_read()?;
        let shared_table = shared_txn.open_table(PRODUCTS)?;
        let (mut done, mut bytes) = (0usize, 0usize);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            for _ in 0..10_000 {
                // The same scattered order as `lookups`.
                let id = ids[(done.wrapping_mul(7_919)) % n];
                let found = if shared {
                    shared_table.get(id)?.map(|v| v.value().len())
                } else {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(PRODUCTS)?;
                    let found = table.get(id)?.map(|v| v.value().len());
                    found
                };
                let Some(len) = found else { bail!("read of {id} found nothing") };
                bytes += len;
                done += 1;
            }
        }
        std::hint::black_box(bytes);
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };
    Ok((per_read(false)?, per_read(true)?))
}
