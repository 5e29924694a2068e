//! The outbox: events an owning context has decided, waiting to be published.
//!
//! A row is written in the same transaction as the state change that decided it, so a crash can
//! never keep one without the other. The relay publishes rows in key order and deletes a row only
//! after JetStream's PublishAck for it: a crash in between publishes the row again with the same
//! `Nats-Msg-Id`, which JetStream (within its duplicate window) and every consumer's inbox (after
//! it) treat as a duplicate.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use carrier_messages::EncodedEvent;

use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::StorageError;

/// Outbox sequence → CBOR [`EncodedEvent`].
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// `"next"` → the next outbox key. Keys are never reused, even once the table is empty, so a
/// late delete for a published row can never hit a new one.
pub(crate) const OUTBOX_NEXT: TableDefinition<&str, u64> = TableDefinition::new("outbox_next");

/// The version of the last event a context recorded for each of its own entities (aggregate
/// type, id): what the library numbers the next one from ([`crate::Emitter::event`]).
pub(crate) const OWN_VERSIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("own_versions");

/// Appends `event` under the next key, with the tables already open.
pub(crate) fn append_to(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    counter: &mut redb::Table<'_, &'static str, u64>,
    event: &EncodedEvent,
) -> Result<u64, StorageError> {
    let after_last = table.last().during("read outbox")?.map(|(k, _)| k.value() + 1).unwrap_or(1);
    let stored = counter.get("next").during("read outbox_next")?.map(|v| v.value()).unwrap_or(1);
    let key = stored.max(after_last);
    let row = encode_row("outbox", event)?;
    table.insert(key, row.as_slice()).during("write outbox")?;
    counter.insert("next", key + 1).during("write outbox_next")?;
    Ok(key)
}

/// The oldest `limit` rows, in order.
pub(crate) fn pending(db: &Database, limit: usize) -> Result<Vec<(u64, EncodedEvent)>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(OUTBOX).during("open outbox")?;
    let mut rows = Vec::new();
    for entry in table.iter().during("read outbox")?.take(limit) {
        let (k, v) = entry.during("read outbox")?;
        rows.push((k.value(), decode_row("outbox", v.value())?));
    }
    Ok(rows)
}

/// Deletes published rows, in one transaction.
pub(crate) fn remove(db: &Database, keys: &[u64]) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().during("begin_write")?;
    {
        let mut table = txn.open_table(OUTBOX).during("open outbox")?;
        for key in keys {
            table.remove(key).during("remove outbox")?;
        }
    }
    txn.commit().during("commit")?;
    Ok(())
}

/// Rows waiting to be published.
pub(crate) fn len(db: &Database) -> Result<u64, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(OUTBOX).during("open outbox")?;
    table.len().during("count outbox")
}
