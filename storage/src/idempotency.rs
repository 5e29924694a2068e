//! Idempotency keys: a command sent again with the same key is answered with what the first one
//! recorded, and decides nothing a second time.
//!
//! A client that cannot tell whether its command was carried out (a timeout, a dropped
//! connection, a crashed proxy) sends it again with the same key. The key is stored with the
//! event the command recorded **in the command's own transaction**, so there is no moment at
//! which the change is kept and the key is not, or the other way round: a replay finds either
//! nothing (the first attempt kept nothing, so deciding again is right) or the recorded event,
//! which it returns as the answer (`replayed`). The same key with other parameters is refused
//! (`idempotency_key_reused`), because answering it with the first command's result would be a
//! lie. Only commands that were carried out are remembered: a refused command kept nothing, so
//! sending it again decides it again (a version conflict may since have gone away).
//!
//! Keys live for a retention period (24 h by default), pruned by time like the inbox.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use carrier_messages::{Decoded, DomainEvent, EncodedEvent};

use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::{CommandError, StorageError};

/// Key → CBOR [`Record`].
pub(crate) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (stored at, Unix ms; key) → (): the keys in the order they were stored, so that pruning past
/// the retention period is a range delete.
pub(crate) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_by_time");

/// How long keys are kept by default: 24 hours.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub use carrier_messages::IdempotencyKey;

/// A command's outcome: the event it recorded, or the one an earlier send with its idempotency
/// key recorded (`replayed`).
#[derive(Clone, Debug, PartialEq)]
pub struct Decided<E> {
    /// The event.
    pub event: Decoded<E>,
    /// Whether this answers an earlier send of the same command (nothing was decided now).
    pub replayed: bool,
    /// Where the event was stored, when that is known at once (an event store's append; an
    /// outbox's event is stored later, by its relay): `STREAM:seq`.
    pub position: Option<String>,
}

impl<E> From<Decoded<E>> for Decided<E> {
    /// An event decided now.
    fn from(event: Decoded<E>) -> Self {
        Decided { event, replayed: false, position: None }
    }
}

/// What is kept of a key.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(with = "carrier_messages::cbor::bytes")]
    fingerprint: Vec<u8>,
    stored_at_ms: u64,
    event: EncodedEvent,
}

/// A key's tables, open in a command group's transaction.
pub(crate) struct KeyTables<'txn> {
    keys: Table<'txn, &'static str, &'static [u8]>,
    by_time: Table<'txn, (u64, &'static str), ()>,
}

impl<'txn> KeyTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        Ok(KeyTables {
            keys: txn.open_table(IDEMPOTENCY).during("open idempotency")?,
            by_time: txn.open_table(IDEMPOTENCY_BY_TIME).during("open idempotency_by_time")?,
        })
    }

    /// The answer for `key` when it was seen before: the recorded event, or a refusal when the
    /// key came with other parameters. `None` when it is new.
    pub(crate) fn replay<E: DomainEvent>(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Result<Decoded<E>, CommandError>>, StorageError> {
        let Some(row) = self.keys.get(key.key()).during("read idempotency")? else {
            return Ok(None);
        };
        let record: Record = decode_row("idempotency", row.value())?;
        if record.fingerprint != key.fingerprint() {
            return Ok(Some(Err(CommandError::refused(
                "idempotency_key_reused",
                format!("idempotency key {:?} was used before with other parameters", key.key()),
            ))));
        }
        let event = &record.event;
        let header =
            |name: &str| event.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let decoded = Decoded::<E>::decode(&event.subject, header, &event.body)
            .map_err(|e| StorageError::Corrupt { table: "idempotency", reason: e.to_string() })?;
        Ok(Some(Ok(decoded)))
    }

    /// Remembers `key` with the event its command recorded.
    pub(crate) fn store<E: DomainEvent>(
        &mut self,
        key: &IdempotencyKey,
        event: &Decoded<E>,
    ) -> Result<(), StorageError> {
        let encoded =
            event.encode().map_err(|e| StorageError::Corrupt { table: "idempotency", reason: e.to_string() })?;
        let stored_at_ms = crate::engine::unix_ms();
        let record = Record { fingerprint: key.fingerprint().to_vec(), stored_at_ms, event: encoded };
        let row = encode_row("idempotency", &record)?;
        self.keys.insert(key.key(), row.as_slice()).during("write idempotency")?;
        self.by_time.insert((stored_at_ms, key.key()), ()).during("write idempotency_by_time")?;
        Ok(())
    }
}

/// Deletes keys stored at or before `cutoff_unix_ms`, at most `limit`, in one transaction.
/// Returns how many went.
pub(crate) fn prune(db: &redb::Database, cutoff_unix_ms: u64, limit: usize) -> Result<u64, StorageError> {
    let txn = db.begin_write().during("begin_write")?;
    let mut removed = 0u64;
    {
        let mut tables = KeyTables::open(&txn)?;
        let mut expired: Vec<(u64, String)> = Vec::new();
        for entry in tables
            .by_time
            .range(..(cutoff_unix_ms.saturating_add(1), ""))
            .during("read idempotency_by_time")?
            .take(limit)
        {
            let (key, _) = entry.during("read idempotency_by_time")?;
            let (at, k) = key.value();
            expired.push((at, k.to_string()));
        }
        for (at, key) in expired {
            tables.by_time.remove((at, key.as_str())).during("prune idempotency_by_time")?;
            // A key stored again later (after an earlier prune) has a newer row: keep it.
            let newer = match tables.keys.get(key.as_str()).during("read idempotency")? {
                Some(row) => {
                    decode_row::<Record>("idempotency", row.value()).map(|r| r.stored_at_ms > at).unwrap_or(false)
                }
                None => false,
            };
            if !newer {
                tables.keys.remove(key.as_str()).during("prune idempotency")?;
            }
            removed += 1;
        }
    }
    if removed == 0 {
        txn.abort().during("abort")?;
    } else {
        txn.commit().during("commit")?;
    }
    Ok(removed)
}
