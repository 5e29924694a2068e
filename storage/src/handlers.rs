//! The event bus's file: which events each subscription handled, where each one is, and the
//! handlers' own tables, so that a handler's effect and the record that it ran commit in one
//! transaction (a redelivered event is then a duplicate, never a second effect, whatever crashed
//! when).

use std::path::Path;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use carrier_messages::EventId;

use crate::error::RedbResultExt;
use crate::StorageError;

/// (subscription, event id) → (handled at, Unix ms; 1 when dead-lettered instead).
const HANDLED: TableDefinition<(&str, &[u8]), (u64, u8)> = TableDefinition::new("bus_handled");
/// (handled at, Unix ms; subscription; event id) → (): for pruning by age.
const HANDLED_BY_TIME: TableDefinition<(u64, &str, &[u8]), ()> = TableDefinition::new("bus_handled_by_time");
/// Subscription → the stream sequence through which every message was handled.
const POSITIONS: TableDefinition<&str, u64> = TableDefinition::new("bus_positions");

/// What became of one event for one subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The handler ran now and its effect committed.
    Now,
    /// It was handled (or dead-lettered) before: nothing ran.
    Before,
}

/// Why [`HandlerFile::handle`] kept nothing.
#[derive(Debug)]
pub enum HandleFailure<E> {
    /// The handler refused; nothing of it was kept.
    Handler(E),
    /// The file failed.
    Storage(StorageError),
}

impl<E> From<StorageError> for HandleFailure<E> {
    fn from(e: StorageError) -> Self {
        HandleFailure::Storage(e)
    }
}

/// The event bus's redb file (see the module).
pub struct HandlerFile {
    db: Database,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl HandlerFile {
    /// Opens (or creates) the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        // Made whole or not at all, as a context's file is (see `engine::open_database`).
        let db = crate::engine::open_database(path.as_ref(), crate::DEFAULT_CACHE_BYTES, |txn| {
            txn.open_table(HANDLED).during("create bus_handled")?;
            txn.open_table(HANDLED_BY_TIME).during("create bus_handled_by_time")?;
            txn.open_table(POSITIONS).during("create bus_positions")?;
            Ok(())
        })?;
        Ok(HandlerFile { db })
    }

    /// Runs `effect` for `event_id` unless `subscription` handled it before, and records it as
    /// handled in the same transaction; an `Err` from `effect` keeps nothing.
    pub fn handle<E>(
        &self,
        subscription: &str,
        event_id: &EventId,
        effect: impl FnOnce(&WriteTransaction) -> Result<(), E>,
    ) -> Result<Handled, HandleFailure<E>> {
        let txn = self.db.begin_write().during("begin_write")?;
        {
            let handled = txn.open_table(HANDLED).during("open bus_handled")?;
            if handled.get((subscription, event_id.as_bytes().as_slice())).during("read bus_handled")?.is_some() {
                return Ok(Handled::Before);
            }
        }
        effect(&txn).map_err(HandleFailure::Handler)?;
        record(&txn, subscription, event_id, 0)?;
        txn.commit().during("commit")?;
        Ok(Handled::Now)
    }

    /// Records `event_id` as dead-lettered for `subscription`: a redelivery runs nothing.
    pub fn record_dead_letter(&self, subscription: &str, event_id: &EventId) -> Result<(), StorageError> {
        let txn = self.db.begin_write().during("begin_write")?;
        record(&txn, subscription, event_id, 1)?;
        txn.commit().during("commit")
    }

    /// Whether `subscription` handled (or dead-lettered) `event_id`.
    pub fn was_handled(&self, subscription: &str, event_id: &EventId) -> Result<bool, StorageError> {
        let txn = self.db.begin_read().during("begin_read")?;
        let handled = txn.open_table(HANDLED).during("open bus_handled")?;
        Ok(handled.get((subscription, event_id.as_bytes().as_slice())).during("read bus_handled")?.is_some())
    }

    /// The stream sequence through which `subscription` handled everything (0: none).
    pub fn position(&self, subscription: &str) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().during("begin_read")?;
        let positions = txn.open_table(POSITIONS).during("open bus_positions")?;
        Ok(positions.get(subscription).during("read bus_positions")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Moves `subscription`'s position (never back). Not flushed at once: a position lost in a
    /// crash only means redeliveries, which the handled records drop.
    pub fn set_position(&self, subscription: &str, seq: u64) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().during("begin_write")?;
        let _ = txn.set_durability(redb::Durability::None);
        {
            let mut positions = txn.open_table(POSITIONS).during("open bus_positions")?;
            let current = positions.get(subscription).during("read bus_positions")?.map(|v| v.value()).unwrap_or(0);
            if seq > current {
                positions.insert(subscription, seq).during("write bus_positions")?;
            }
        }
        txn.commit().during("commit")
    }

    /// Forgets handled records older than `age`, at most `limit` of them. Returns how many went.
    pub fn prune(&self, age: std::time::Duration, limit: usize) -> Result<u64, StorageError> {
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        let txn = self.db.begin_write().during("begin_write")?;
        let mut removed = 0;
        {
            let mut by_time = txn.open_table(HANDLED_BY_TIME).during("open bus_handled_by_time")?;
            let mut handled = txn.open_table(HANDLED).during("open bus_handled")?;
            let old: Vec<(u64, String, Vec<u8>)> = by_time
                .range::<(u64, &str, &[u8])>(..(cutoff, "", &[][..]))
                .during("range bus_handled_by_time")?
                .take(limit)
                .filter_map(|row| row.ok())
                .map(|(k, _)| {
                    let (at, sub, id) = k.value();
                    (at, sub.to_string(), id.to_vec())
                })
                .collect();
            for (at, sub, id) in old {
                by_time.remove((at, sub.as_str(), id.as_slice())).during("prune bus_handled_by_time")?;
                handled.remove((sub.as_str(), id.as_slice())).during("prune bus_handled")?;
                removed += 1;
            }
        }
        txn.commit().during("commit")?;
        Ok(removed)
    }

    /// A read transaction, for reading the handlers' own tables.
    pub fn read(&self) -> Result<ReadTransaction, StorageError> {
        self.db.begin_read().during("begin_read")
    }

    /// How many (subscription, event) records it keeps.
    pub fn handled_count(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().during("begin_read")?;
        let handled = txn.open_table(HANDLED).during("open bus_handled")?;
        redb::ReadableTableMetadata::len(&handled).during("count bus_handled")
    }
}

fn record(txn: &WriteTransaction, subscription: &str, event_id: &EventId, how: u8) -> Result<(), StorageError> {
    let at = now_ms();
    let id = event_id.as_bytes().as_slice();
    txn.open_table(HANDLED)
        .during("open bus_handled")?
        .insert((subscription, id), (at, how))
        .during("write bus_handled")?;
    txn.open_table(HANDLED_BY_TIME)
        .during("open bus_handled_by_time")?
        .insert((at, subscription, id), ())
        .during("write bus_handled_by_time")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_commits_with_its_record_and_a_refusal_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = HandlerFile::open(dir.path().join("bus.redb")).unwrap();
        const LOG: crate::Rows<String> = crate::Rows::new("log");
        let id = EventId::new();
        let refused = file.handle("s", &id, |txn| {
            LOG.open(txn).map_err(|e| e.to_string())?.put("a", &"x".to_string()).map_err(|e| e.to_string())?;
            Err::<(), String>("no".into())
        });
        assert!(matches!(refused, Err(HandleFailure::Handler(_))));
        assert!(!file.was_handled("s", &id).unwrap());
        let first = file.handle("s", &id, |txn| LOG.open(txn)?.put("a", &"x".to_string())).map_err(|_| ()).unwrap();
        assert_eq!(first, Handled::Now);
        let again =
            file.handle("s", &id, |_| -> Result<(), StorageError> { panic!("ran twice") }).map_err(|_| ()).unwrap();
        assert_eq!(again, Handled::Before);
        assert_eq!(file.handle("other", &id, |_| Ok::<(), StorageError>(())).map_err(|_| ()).unwrap(), Handled::Now);
        assert_eq!(LOG.all(&file.read().unwrap()).unwrap().len(), 1);
        file.set_position("s", 7).unwrap();
        file.set_position("s", 3).unwrap();
        assert_eq!(file.position("s").unwrap(), 7);
        assert_eq!(file.prune(std::time::Duration::ZERO, 10).unwrap(), 2);
        assert!(!file.was_handled("s", &id).unwrap());
    }
}
