//! Rebuilding a context's caches: the owners' streams are replayed into a fresh file (a
//! [`ContextFile`] of the same kind, beside the live one, see [`FileWriter::open_scratch`])
//! while the live file keeps serving; then [`FileWriter::swap_caches_step`] swaps the cache
//! tables in, a range of [`SWAP_ROWS`] ids at a time, each range in one short transaction on the
//! live file's writer, so that commands between two ranges wait for one range, not for the
//! whole table. An id's row and its version always move together.
//!
//! Only caches are rebuilt (the tables a context declares for another context's entities, with
//! their entities' versions and parked events): they are a pure function of the owners' streams. A
//! context's own state (baskets, orders, shopping lists) is made by its commands and by
//! decisions that depended on what it knew at the time, so replaying cannot reproduce it.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError};

use crate::context::{ContextFile, ContextKind, FileWriter};
use crate::engine::{CHECKPOINTS, PARKED, VERSIONS};
use crate::error::RedbResultExt;
use crate::StorageError;

/// Ids swapped per transaction: a few milliseconds of the writer's time.
pub const SWAP_ROWS: usize = 2048;

/// The cache tables one owner's stream fills, and the consumer that reads it.
#[derive(Clone, Debug)]
pub struct CacheSet {
    /// The tables (all `id → row` tables).
    pub tables: Vec<&'static str>,
    /// The aggregate type of each table, in the same order: whose versions and parked events
    /// belong to it.
    pub aggregates: Vec<&'static str>,
    /// The durable consumer's name: its checkpoint says how far each file has applied.
    pub consumer: String,
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

/// Where a swap is: the table being swapped and the last id swapped in it.
#[derive(Clone, Debug, Default)]
pub struct SwapCursor {
    set: usize,
    table: usize,
    after: Option<String>,
    before: u64,
    swapped: Vec<SwappedTable>,
}

/// What one step of a swap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapStep {
    /// Swapped this many rows; call again.
    More(usize),
    /// Every table swapped and the checkpoints moved: the tables, before and after.
    Done(Vec<SwappedTable>),
}

impl<K: ContextKind> FileWriter<K> {
    /// One step of replacing this file's caches in `sets` with `fresh`'s: the next `rows` ids of
    /// one table (their rows and versions, ids this file has and `fresh` lacks removed), in one
    /// transaction; after the last table, the parked events and the checkpoints. Call it again
    /// while it answers [`SwapStep::More`]. Each step first checks that `fresh` has applied at
    /// least as far as this file in every set's stream, and changes nothing otherwise (it says
    /// how far `fresh` must get): so a swapped row is never older than the one it replaces.
    /// Run it on the file's writer, so that no batch commits between the check and the swap.
    ///
    /// The inboxes are not merged: an event the live consumer delivers again after the swap
    /// (one the rebuild applied first) is recognised by its entity's version, which moved with
    /// the row.
    pub fn swap_caches_step(
        &self,
        fresh: &ContextFile<K>,
        sets: &[CacheSet],
        cursor: &mut SwapCursor,
        rows: usize,
    ) -> Result<Result<SwapStep, Behind>, StorageError> {
        let source = fresh.db.begin_read().during("begin_read")?;
        let txn = self.db.begin_write().during("begin_write")?;
        let mut rebuilt_through = Vec::with_capacity(sets.len());
        {
            let fresh_checkpoints = source.open_table(CHECKPOINTS).during("open checkpoints")?;
            let checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
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
                rebuilt_through.push(rebuilt);
            }
        }
        // A set with no (table, aggregate) pair left is passed over.
        while let Some(set) = sets.get(cursor.set) {
            if cursor.table < set.tables.len() {
                break;
            }
            (cursor.set, cursor.table) = (cursor.set + 1, 0);
        }
        let step = if let Some(set) = sets.get(cursor.set) {
            // A table past the aggregates (an index of a projection's, say) moves without versions.
            let (name, aggregate) = (set.tables[cursor.table], set.aggregates.get(cursor.table).copied());
            let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
            let mut table = txn.open_table(definition).during("open cache")?;
            if cursor.after.is_none() {
                cursor.before = table.len().during("count cache")?;
            }
            let lower = match &cursor.after {
                Some(after) => Bound::Excluded(after.as_str()),
                None => Bound::Unbounded,
            };
            let mut chunk: Vec<(String, Vec<u8>)> = Vec::with_capacity(rows.min(SWAP_ROWS * 4));
            match source.open_table(definition) {
                Ok(rebuilt) => {
                    for entry in rebuilt.range::<&str>((lower, Bound::Unbounded)).during("read rebuilt cache")? {
                        let (k, v) = entry.during("read rebuilt cache")?;
                        chunk.push((k.value().to_string(), v.value().to_vec()));
                        if chunk.len() == rows.max(1) {
                            break;
                        }
                    }
                }
                // The rebuilt file never wrote this table: it is empty there.
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e).during("open rebuilt cache"),
            }
            let last = chunk.len() < rows.max(1);
            let upper = if last { Bound::Unbounded } else { Bound::Included(chunk[chunk.len() - 1].0.as_str()) };
            // Only what differs is written: a rebuild mostly finds the rows it replaces equal,
            // and a step that only reads costs the writer a millisecond or two.
            let mut live_rows: Vec<(String, Vec<u8>)> = Vec::new();
            for entry in table.range::<&str>((lower, upper)).during("read cache")? {
                let (k, v) = entry.during("read cache")?;
                live_rows.push((k.value().to_string(), v.value().to_vec()));
            }
            let (removed, written) = differences(&live_rows, &chunk);
            for k in removed {
                table.remove(k.as_str()).during("clear cache row")?;
            }
            for (k, v) in written {
                table.insert(k.as_str(), v.as_slice()).during("write cache")?;
            }
            if let Some(aggregate) = aggregate {
                // The same ids' versions: (aggregate, id) keys between the same bounds.
                let next_aggregate = format!("{aggregate}\0");
                let v_lower = match &cursor.after {
                    Some(after) => Bound::Excluded((aggregate, after.as_str())),
                    None => Bound::Included((aggregate, "")),
                };
                let v_upper = if last {
                    Bound::Excluded((next_aggregate.as_str(), ""))
                } else {
                    Bound::Included((aggregate, chunk[chunk.len() - 1].0.as_str()))
                };
                let mut versions = txn.open_table(VERSIONS).during("open entity_versions")?;
                let rebuilt_versions = source.open_table(VERSIONS).during("open entity_versions")?;
                let read =
                    |range: redb::Range<'_, (&str, &str), u64>| -> Result<Vec<((String, String), u64)>, StorageError> {
                        let mut out = Vec::new();
                        for entry in range {
                            let (k, v) = entry.during("read versions")?;
                            let (aggregate, id) = k.value();
                            out.push(((aggregate.to_string(), id.to_string()), v.value()));
                        }
                        Ok(out)
                    };
                let live_versions = read(versions.range::<(&str, &str)>((v_lower, v_upper)).during("read versions")?)?;
                let fresh_versions =
                    read(rebuilt_versions.range::<(&str, &str)>((v_lower, v_upper)).during("read versions")?)?;
                let (removed, written) = differences(&live_versions, &fresh_versions);
                for (aggregate, id) in removed {
                    versions.remove((aggregate.as_str(), id.as_str())).during("clear versions")?;
                }
                for ((aggregate, id), v) in written {
                    versions.insert((aggregate.as_str(), id.as_str()), *v).during("write versions")?;
                }
            }
            let swapped = chunk.len();
            if last {
                let after = table.len().during("count cache")?;
                cursor.swapped.push(SwappedTable { table: name, before: cursor.before, after });
                cursor.after = None;
                cursor.table += 1;
                if cursor.table >= set.tables.len() {
                    cursor.set += 1;
                    cursor.table = 0;
                }
            } else {
                cursor.after = chunk.pop().map(|(k, _)| k);
            }
            SwapStep::More(swapped)
        } else {
            let mut parked = txn.open_table(PARKED).during("open parked")?;
            let mut checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
            let rebuilt_parked = source.open_table(PARKED).during("open parked")?;
            for (set, rebuilt) in sets.iter().zip(rebuilt_through) {
                parked.retain(|(aggregate, _, _), _| !set.aggregates.contains(&aggregate)).during("clear parked")?;
                for entry in rebuilt_parked.iter().during("read parked")? {
                    let (k, v) = entry.during("read parked")?;
                    let (aggregate, id, version) = k.value();
                    if set.aggregates.contains(&aggregate) {
                        parked.insert((aggregate, id, version), v.value()).during("write parked")?;
                    }
                }
                checkpoints.insert(set.consumer.as_str(), rebuilt).during("write checkpoints")?;
            }
            SwapStep::Done(std::mem::take(&mut cursor.swapped))
        };
        let committed = txn.commit().during("commit");
        self.committed();
        committed?;
        Ok(Ok(step))
    }
}

/// Two key-sorted runs of rows: the keys only `live` has, and the rows of `rebuilt` that `live`
/// lacks or holds with another value.
fn differences<'a, K: Ord, V: PartialEq>(live: &'a [(K, V)], rebuilt: &'a [(K, V)]) -> (Vec<&'a K>, Vec<&'a (K, V)>) {
    let (mut removed, mut written) = (Vec::new(), Vec::new());
    let (mut l, mut r) = (live.iter().peekable(), rebuilt.iter().peekable());
    loop {
        match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(a), None) => {
                removed.push(&a.0);
                l.next();
            }
            (None, Some(b)) => {
                written.push(*b);
                r.next();
            }
            (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                std::cmp::Ordering::Less => {
                    removed.push(&a.0);
                    l.next();
                }
                std::cmp::Ordering::Greater => {
                    written.push(*b);
                    r.next();
                }
                std::cmp::Ordering::Equal => {
                    if a.1 != b.1 {
                        written.push(*b);
                    }
                    l.next();
                    r.next();
                }
            },
        }
    }
    (removed, written)
}

#[cfg(test)]
mod tests {
    use super::differences;

    #[test]
    fn differences_names_what_to_remove_and_what_to_write() {
        let live = [("a", 1), ("b", 2), ("d", 4), ("e", 5)];
        let rebuilt = [("b", 2), ("c", 3), ("d", 40), ("f", 6)];
        let (removed, written) = differences(&live, &rebuilt);
        assert_eq!(removed, vec![&"a", &"e"]);
        assert_eq!(written, vec![&("c", 3), &("d", 40), &("f", 6)]);
    }
}
