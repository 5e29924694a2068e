//! Rebuilding a context's caches: the owners' streams are replayed into a fresh file (a
//! [`ContextFile`] of the same kind, beside the live one) while the live file keeps serving;
//! then [`FileWriter::adopt_caches`] swaps the cache tables in, in one transaction on the live
//! file's writer.
//!
//! Only caches are rebuilt (`stores_cache`, `products_cache`, `customers_cache`, with their
//! entities' versions and parked events): they are a pure function of the owners' streams. A
//! context's own state (baskets, orders, shopping lists) is made by its commands and by
//! decisions that depended on what it knew at the time, so replaying cannot reproduce it.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::context::{ContextFile, ContextKind, FileWriter};
use crate::engine::{CHECKPOINTS, INBOX, INBOX_BY_TIME, PARKED, VERSIONS};
use crate::error::RedbResultExt;
use crate::StorageError;

/// The cache tables one owner's stream fills, and the consumer that reads it.
#[derive(Clone, Debug)]
pub struct CacheSet {
    /// The tables (all `id → row` tables).
    pub tables: &'static [&'static str],
    /// The aggregate types whose versions and parked events belong to these tables.
    pub aggregates: &'static [&'static str],
    /// The durable consumer's name: its checkpoint says how far each file has applied.
    pub consumer: String,
}

/// The stores caches (`stores_cache`, `products_cache`).
pub fn stores_caches(consumer: String) -> CacheSet {
    CacheSet { tables: &["stores_cache", "products_cache"], aggregates: &["store", "product"], consumer }
}

/// The customers cache (`customers_cache`).
pub fn customers_caches(consumer: String) -> CacheSet {
    CacheSet { tables: &["customers_cache"], aggregates: &["customer"], consumer }
}

/// A table's rows before and after the swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwappedTable {
    /// The table.
    pub table: &'static str,
    /// Rows in the live file before.
    pub before: u64,
    /// Rows after (the rebuilt file's).
    pub after: u64,
}

/// Why the swap did not happen yet: the live file has applied further than the rebuilt one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    /// The consumer.
    pub consumer: String,
    /// The stream sequence the rebuilt file must reach first.
    pub live_through: u64,
    /// Where the rebuilt file is.
    pub rebuilt_through: u64,
}

impl<K: ContextKind> FileWriter<K> {
    /// Replaces this file's caches in `sets` with `fresh`'s, in one transaction, provided that
    /// `fresh` has applied at least as far as this file in every set's stream; otherwise changes
    /// nothing and says how far it must get. Run it on the file's writer, so that no batch
    /// commits between the check and the swap.
    ///
    /// The inboxes are merged, so an event the live consumer delivers again after the swap (one
    /// the rebuild read first) is recognised as a duplicate.
    pub fn adopt_caches(
        &self,
        fresh: &ContextFile<K>,
        sets: &[CacheSet],
    ) -> Result<Result<Vec<SwappedTable>, Behind>, StorageError> {
        let source = fresh.db.begin_read().during("begin_read")?;
        let txn = self.db.begin_write().during("begin_write")?;
        let mut swapped = Vec::new();
        {
            let fresh_checkpoints = source.open_table(CHECKPOINTS).during("open checkpoints")?;
            let mut checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
            for set in sets {
                let live = checkpoints.get(set.consumer.as_str()).during("read checkpoints")?.map(|v| v.value());
                let rebuilt =
                    fresh_checkpoints.get(set.consumer.as_str()).during("read checkpoints")?.map(|v| v.value());
                let (live, rebuilt) = (live.unwrap_or(0), rebuilt.unwrap_or(0));
                if rebuilt < live {
                    drop(checkpoints);
                    txn.abort().during("abort")?;
                    return Ok(Err(Behind {
                        consumer: set.consumer.clone(),
                        live_through: live,
                        rebuilt_through: rebuilt,
                    }));
                }
                checkpoints.insert(set.consumer.as_str(), rebuilt).during("write checkpoints")?;
            }
        }
        for set in sets {
            for name in set.tables {
                let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
                let before = txn.open_table(definition).during("open cache")?.len().during("count cache")?;
                txn.delete_table(definition).during("drop cache")?;
                let mut table = txn.open_table(definition).during("create cache")?;
                let rows = source.open_table(definition).during("open rebuilt cache")?;
                for entry in rows.iter().during("read rebuilt cache")? {
                    let (k, v) = entry.during("read rebuilt cache")?;
                    table.insert(k.value(), v.value()).during("write cache")?;
                }
                swapped.push(SwappedTable { table: name, before, after: table.len().during("count cache")? });
            }
            let mut versions = txn.open_table(VERSIONS).during("open entity_versions")?;
            versions.retain(|(aggregate, _), _| !set.aggregates.contains(&aggregate)).during("clear versions")?;
            for entry in source.open_table(VERSIONS).during("open entity_versions")?.iter().during("read versions")? {
                let (k, v) = entry.during("read versions")?;
                let (aggregate, id) = k.value();
                if set.aggregates.contains(&aggregate) {
                    versions.insert((aggregate, id), v.value()).during("write versions")?;
                }
            }
            let mut parked = txn.open_table(PARKED).during("open parked")?;
            parked.retain(|(aggregate, _, _), _| !set.aggregates.contains(&aggregate)).during("clear parked")?;
            for entry in source.open_table(PARKED).during("open parked")?.iter().during("read parked")? {
                let (k, v) = entry.during("read parked")?;
                let (aggregate, id, version) = k.value();
                if set.aggregates.contains(&aggregate) {
                    parked.insert((aggregate, id, version), v.value()).during("write parked")?;
                }
            }
        }
        {
            // Only ids the live inbox lacks are added, with their time in both tables: an id
            // both files hold keeps its first (live) time, so `inbox_by_time` stays one row per
            // inbox entry however many rebuilds run (it used to gain a full copy each time).
            let mut inbox = txn.open_table(INBOX).during("open inbox")?;
            let mut by_time = txn.open_table(INBOX_BY_TIME).during("open inbox_by_time")?;
            for entry in source.open_table(INBOX).during("open inbox")?.iter().during("read inbox")? {
                let (k, v) = entry.during("read inbox")?;
                let (id, applied_at) = (k.value(), v.value());
                if inbox.get(id).during("read inbox")?.is_none() {
                    inbox.insert(id, applied_at).during("write inbox")?;
                    by_time.insert((applied_at, id), ()).during("write inbox_by_time")?;
                }
            }
        }
        let committed = txn.commit().during("commit");
        self.committed();
        committed?;
        Ok(Ok(swapped))
    }
}
