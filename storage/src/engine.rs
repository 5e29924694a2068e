//! The dedup and ordering engine every consuming context shares.
//!
//! A delivered batch is applied in ONE write transaction. For each event, in delivery order:
//!
//! 1. If its id is in the inbox, it was applied (or parked) before: [`Disposition::Duplicate`].
//! 2. Otherwise its id goes into the inbox (and, once per batch, the batch's new ids into the
//!    inbox's time index), and its aggregate version is compared with the last
//!    version applied to that entity:
//!    - at or below it: an old event, already superseded ([`Disposition::Stale`]);
//!    - exactly the next one: its effect is applied, then any parked successors
//!      ([`Disposition::Applied`]);
//!    - further ahead: a version is missing, so the event is parked until the gap closes
//!      ([`Disposition::Parked`]) rather than applying a delta to a stale row.
//! 3. The consumer's checkpoint moves to the batch's last stream sequence.
//!
//! Then one commit. The effect, the inbox record and the version move together or not at all,
//! which is what makes redelivery harmless: the consumer acks only after this commit returns.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use carrier_messages::{Decoded, DomainEvent, Envelope};

use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::StorageError;

/// Applied (or parked) event ids → the stream sequence they arrived at.
pub(crate) const INBOX: TableDefinition<u128, u64> = TableDefinition::new("inbox");
/// (applied at, Unix ms; event id) → (): the inbox in the order it was written, one row per
/// event, as files written before `inbox_batches` keep it; pruning drains it.
pub(crate) const INBOX_BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("inbox_by_time");
/// (applied at, Unix ms; the first new event id of the batch) → the batch's new event ids, 16
/// bytes each (big-endian): the inbox in the order it was written, so that pruning past the
/// retention horizon is a range read instead of a scan. One row per batch, not per event: a row
/// per event cost as much as the inbox row itself (a tenth of the writer's time in the profile).
pub(crate) const INBOX_BATCHES: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("inbox_batches");
/// (aggregate type, aggregate id) → the last version applied.
pub(crate) const VERSIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("entity_versions");
/// (aggregate type, aggregate id, version) → a CBOR [`Inbound`] waiting for its predecessor.
pub(crate) const PARKED: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("parked");
/// Durable consumer name → the last stream sequence committed.
pub(crate) const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");
/// Event ids of another context's events whose effect this context holds already, because it
/// followed its own stream (an instance standing by, see [`crate::Follows`]): the events its
/// holder emitted name them as their cause. When such an event is delivered, its entity's
/// version moves on and its reaction does not run again.
pub(crate) const FOLLOWED: TableDefinition<u128, ()> = TableDefinition::new("followed_causes");

/// One delivered, decoded event and where it sat in the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "E: DomainEvent")]
pub struct Inbound<E> {
    /// The JetStream stream sequence it was delivered from.
    pub stream_seq: u64,
    /// The event.
    pub decoded: Decoded<E>,
}

/// What a context does with an event's payload, given its tables opened for one batch.
pub trait Projection<E>: Send + Sync + 'static {
    /// The context's tables, opened once per batch transaction.
    type Tables<'txn>;

    /// Opens the tables in `txn`.
    fn open<'txn>(&self, txn: &'txn WriteTransaction) -> Result<Self::Tables<'txn>, StorageError>;

    /// Applies one event's effect. Called only for the next version of its entity.
    fn apply(&self, tables: &mut Self::Tables<'_>, envelope: &Envelope, event: &E) -> Result<(), StorageError>;

    /// How many events the reactions emitted so far in this transaction (0 for projections that
    /// cannot emit).
    fn emitted(&self, _tables: &Self::Tables<'_>) -> usize {
        0
    }

    /// Whether applying `event` may emit (or change the context's own rows); see
    /// [`crate::Reacts::may_emit`].
    fn may_emit(&self, _event: &E) -> bool {
        false
    }
}

/// How a batch treats reactions that emit (see [`apply_batch_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effects {
    /// Reactions run and emit.
    Emit,
    /// The instance stands by (or is fenced): a reaction that would emit refuses the batch with
    /// [`StorageError::NotYetFollowed`], because the holder may have emitted it already.
    Hold,
}

/// What happened to one event of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Its effect was applied.
    Applied,
    /// Its id was already in the inbox: nothing changed.
    Duplicate,
    /// Its entity was already at `current` or later: nothing changed.
    Stale {
        /// The entity's version before the event.
        current: u64,
    },
    /// An earlier version is missing; the event waits until it arrives.
    Parked {
        /// The version that must come first.
        expected: u64,
    },
    /// Its effect was already followed from the context's own stream (its holder reacted and
    /// published): its entity's version moved on, and its reaction did not run again.
    Followed,
}

impl Disposition {
    /// A short word for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Disposition::Applied => "applied",
            Disposition::Duplicate => "duplicate",
            Disposition::Stale { .. } => "stale",
            Disposition::Parked { .. } => "parked",
            Disposition::Followed => "followed",
        }
    }
}

/// The result of one committed batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One entry per event, in batch order.
    pub dispositions: Vec<Disposition>,
    /// Parked events applied because this batch closed their gap.
    pub unparked: u64,
}

impl BatchOutcome {
    /// How many events had the given disposition kind.
    pub fn count(&self, kind: &str) -> usize {
        self.dispositions.iter().filter(|d| d.as_str() == kind).count()
    }
}

/// Applies `batch` in one transaction; see the module docs for the rules. The checkpoint moves to
/// the batch's last stream sequence or `through`, whichever is higher: `through` covers messages
/// the consumer settled without applying them (dead letters), so a restart does not redo them.
/// A rebuild's scratch file, thrown away when the process dies, needs no
/// fsync per batch (`durability`), and no inbox (`scratch`): its inbox is never merged into the
/// live file, and a duplicate within the replay is told by its entity's version.
pub(crate) fn apply_batch_with<E, P>(
    db: &Database,
    consumer: &str,
    projection: &P,
    batch: &[Inbound<E>],
    through: u64,
    durability: redb::Durability,
    scratch: bool,
    effects: Effects,
) -> Result<BatchOutcome, StorageError>
where
    E: DomainEvent,
    P: Projection<E>,
{
    let mut txn = db.begin_write().during("begin_write")?;
    if !matches!(durability, redb::Durability::Immediate) {
        // Only refused for transactions that create or delete savepoints; this one does neither.
        let _ = txn.set_durability(durability);
    }
    let mut outcome = BatchOutcome { dispositions: Vec::with_capacity(batch.len()), unparked: 0 };
    {
        let mut inbox = txn.open_table(INBOX).during("open inbox")?;
        let mut inbox_batches = txn.open_table(INBOX_BATCHES).during("open inbox_batches")?;
        let mut new_ids: Vec<u8> = Vec::new();
        let mut first_new: Option<u128> = None;
        let mut versions = txn.open_table(VERSIONS).during("open entity_versions")?;
        let mut parked = txn.open_table(PARKED).during("open parked")?;
        let mut checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
        let mut followed = txn.open_table(FOLLOWED).during("open followed_causes")?;
        // Probing for followed causes costs a B-tree probe per event: only files that followed
        // their own stream have any.
        let any_followed = !followed.is_empty().during("count followed_causes")?;
        let mut tables = projection.open(&txn)?;
        // Runs one event's reaction, unless its effect was followed; while effects are held,
        // holds back one that may emit. Returns whether it was followed.
        let react = |tables: &mut P::Tables<'_>,
                     followed: &mut redb::Table<'_, u128, ()>,
                     item: &Inbound<E>|
         -> Result<bool, StorageError> {
            let envelope = &item.decoded.envelope;
            if any_followed && followed.remove(envelope.event_id.0.as_u128()).during("take followed_causes")?.is_some()
            {
                return Ok(true);
            }
            // Standing by, an event whose reaction may emit waits for what the holder did with
            // it, even when the reaction here would do nothing: these rows may be behind.
            if effects == Effects::Hold && projection.may_emit(&item.decoded.event) {
                return Err(StorageError::NotYetFollowed { stream_seq: item.stream_seq });
            }
            let before = projection.emitted(tables);
            projection.apply(tables, envelope, &item.decoded.event).map_err(|e| e.at(item.stream_seq))?;
            if effects == Effects::Hold && projection.emitted(tables) > before {
                return Err(StorageError::NotYetFollowed { stream_seq: item.stream_seq });
            }
            Ok(false)
        };
        // Looking for parked successors costs a B-tree probe per event; skip it while the table
        // is empty and this batch has parked nothing.
        let mut parked_any = !parked.is_empty().during("count parked")?;

        for item in batch {
            let envelope = &item.decoded.envelope;
            let id = envelope.event_id.0.as_u128();
            if !scratch {
                // One walk of the tree, not two: the insert says whether the id was there.
                let before = inbox.insert(id, item.stream_seq).during("write inbox")?.map(|seq| seq.value());
                if let Some(first_seq) = before {
                    if first_seq != item.stream_seq {
                        // Published again at another sequence: the record keeps the first.
                        inbox.insert(id, first_seq).during("write inbox")?;
                    }
                    if any_followed {
                        // Delivered again: whatever was followed of it is done with.
                        followed.remove(id).during("take followed_causes")?;
                    }
                    outcome.dispositions.push(Disposition::Duplicate);
                    continue;
                }
                first_new.get_or_insert(id);
                new_ids.extend_from_slice(&id.to_be_bytes());
            }

            let aggregate = item.decoded.event.aggregate_type();
            let key = (aggregate, envelope.aggregate_id.as_str());
            let version = envelope.aggregate_version;
            // One walk of the tree for the common case (the next version): the insert returns
            // the version it replaced, which is put back when the event does not apply.
            let stored = versions.insert(key, version).during("write entity_versions")?.map(|v| v.value());
            let current = stored.unwrap_or(0);
            let put_back = |versions: &mut redb::Table<'_, (&str, &str), u64>| -> Result<(), StorageError> {
                match stored {
                    Some(v) => versions.insert(key, v).map(|_| ()).during("write entity_versions"),
                    None => versions.remove(key).map(|_| ()).during("write entity_versions"),
                }
            };
            let disposition = if version <= current {
                put_back(&mut versions)?;
                if any_followed {
                    followed.remove(id).during("take followed_causes")?;
                }
                Disposition::Stale { current }
            } else if version == current + 1 {
                let was_followed = react(&mut tables, &mut followed, item)?;
                let mut now = version;
                while parked_any {
                    let next = parked.remove((key.0, key.1, now + 1)).during("take parked")?;
                    let Some(bytes) = next else { break };
                    let waiting: Inbound<E> = decode_row("parked", bytes.value())?;
                    drop(bytes);
                    react(&mut tables, &mut followed, &waiting)?;
                    outcome.unparked += 1;
                    now += 1;
                }
                if now != version {
                    versions.insert(key, now).during("write entity_versions")?;
                }
                if was_followed {
                    Disposition::Followed
                } else {
                    Disposition::Applied
                }
            } else {
                put_back(&mut versions)?;
                let row = encode_row("parked", item)?;
                parked.insert((key.0, key.1, version), row.as_slice()).during("write parked")?;
                parked_any = true;
                Disposition::Parked { expected: current + 1 }
            };
            outcome.dispositions.push(disposition);
        }

        if let Some(first) = first_new {
            inbox_batches.insert((unix_ms(), first), new_ids.as_slice()).during("write inbox_batches")?;
        }
        if let Some(last) = batch.iter().map(|i| i.stream_seq).chain((through > 0).then_some(through)).max() {
            let previous = checkpoints.get(consumer).during("read checkpoints")?.map(|v| v.value()).unwrap_or(0);
            if last > previous {
                checkpoints.insert(consumer, last).during("write checkpoints")?;
            }
        }
    }
    txn.commit().during("commit")?;
    Ok(outcome)
}

/// Folds a batch of a context's own events into its tables in `txn` (see
/// [`crate::Follows`]) and moves `consumer`'s checkpoint forward: to the batch's last sequence
/// or `through`, whichever is higher. Its own stream has one writer, so its events come in
/// version order: no inbox, no parking. Returns the checkpoint.
pub(crate) fn follow_batch<K: crate::Follows>(
    txn: &WriteTransaction,
    consumer: &str,
    batch: &[Inbound<K::Event>],
    through: u64,
) -> Result<u64, StorageError> {
    let mut followed = txn.open_table(FOLLOWED).during("open followed_causes")?;
    let mut own = txn.open_table(crate::outbox::OWN_VERSIONS).during("open own_versions")?;
    for item in batch {
        K::follow(txn, &item.decoded.envelope, &item.decoded.event).map_err(|e| e.at(item.stream_seq))?;
        // The library's numbering goes on from what the holder published (a takeover decides next).
        let envelope = &item.decoded.envelope;
        let key = (item.decoded.event.aggregate_type(), envelope.aggregate_id.as_str());
        if own.get(key).during("read own_versions")?.map(|v| v.value()).unwrap_or(0) < envelope.aggregate_version {
            own.insert(key, envelope.aggregate_version).during("write own_versions")?;
        }
        // What caused it (another context's event, for a reaction) is done: delivered here
        // later, it moves its entity's version on without reacting again.
        let cause =
            item.decoded.envelope.causation_id.as_deref().and_then(|c| c.parse::<carrier_messages::EventId>().ok());
        // Also when the cause is in the inbox already: it may be parked there, waiting for an
        // earlier version, and must not react when it is unparked.
        if let Some(cause) = cause {
            followed.insert(cause.0.as_u128(), ()).during("write followed_causes")?;
        }
    }
    let mut checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
    let previous = checkpoints.get(consumer).during("read checkpoints")?.map(|v| v.value()).unwrap_or(0);
    let last = batch.iter().map(|i| i.stream_seq).chain([through, previous]).max().unwrap_or(0);
    if last > previous {
        checkpoints.insert(consumer, last).during("write checkpoints")?;
    }
    Ok(last)
}

/// Creates the engine's tables so that readers never meet a missing table.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(FOLLOWED).during("create followed_causes")?;
    txn.open_table(INBOX).during("create inbox")?;
    txn.open_table(INBOX_BATCHES).during("create inbox_batches")?;
    txn.open_table(VERSIONS).during("create entity_versions")?;
    txn.open_table(PARKED).during("create parked")?;
    txn.open_table(CHECKPOINTS).during("create checkpoints")?;
    Ok(())
}

/// Opens (or creates) a context's database file and makes sure its tables exist.
pub(crate) fn open_database(
    path: &std::path::Path,
    cache_bytes: usize,
    create: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
) -> Result<Database, StorageError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A missing directory would otherwise surface as a bare "No such file" from redb.
        let _ = std::fs::create_dir_all(dir);
    }
    if !path.exists() {
        create_atomically(path, cache_bytes)?;
    }
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
    let txn = db.begin_write().during("begin_write")?;
    create(&txn)?;
    txn.commit().during("commit")?;
    Ok(db)
}

/// Makes a new, empty redb file at `path` that appears whole or not at all: redb writes its
/// header in steps, and a process killed between them (SIGKILL on a first start) left a file that
/// no longer opened ("not a redb database: magic number mismatch"), so the context could never
/// start again. The file is made beside it under `.creating`, closed, and renamed into place;
/// a leftover `.creating` from a killed attempt is thrown away.
fn create_atomically(path: &std::path::Path, cache_bytes: usize) -> Result<(), StorageError> {
    let mut creating = path.as_os_str().to_owned();
    creating.push(".creating");
    let creating = std::path::PathBuf::from(creating);
    let _ = std::fs::remove_file(&creating);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&creating)
        .map_err(|source| StorageError::Open { path: creating.clone(), source })?;
    drop(db);
    std::fs::rename(&creating, path).map_err(|e| StorageError::io("rename a new file into place", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Counts and positions of the engine's tables, for `carrier inspect` and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Event ids in the inbox.
    pub inbox: u64,
    /// Entities with a recorded version.
    pub entities: u64,
    /// Events waiting for an earlier version.
    pub parked: u64,
    /// Consumer name → last committed stream sequence.
    pub checkpoints: Vec<(String, u64)>,
}

/// Event ids in the inbox's time index, both the per-batch rows and an older file's per-event rows.
pub(crate) fn inbox_indexed(db: &Database) -> Result<u64, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let mut ids = 0u64;
    if let Ok(old) = txn.open_table(INBOX_BY_TIME) {
        ids += old.len().during("count inbox_by_time")?;
    }
    let batches = txn.open_table(INBOX_BATCHES).during("open inbox_batches")?;
    for entry in batches.iter().during("read inbox_batches")? {
        let (_, value) = entry.during("read inbox_batches")?;
        ids += value.value().len() as u64 / 16;
    }
    Ok(ids)
}

/// Reads [`EngineStats`].
pub(crate) fn stats(db: &Database) -> Result<EngineStats, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let inbox = txn.open_table(INBOX).during("open inbox")?.len().during("count inbox")?;
    let entities = txn.open_table(VERSIONS).during("open entity_versions")?.len().during("count entity_versions")?;
    let parked = txn.open_table(PARKED).during("open parked")?.len().during("count parked")?;
    let table = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
    let mut checkpoints = Vec::new();
    for entry in table.iter().during("read checkpoints")? {
        let (k, v) = entry.during("read checkpoints")?;
        checkpoints.push((k.value().to_string(), v.value()));
    }
    Ok(EngineStats { inbox, entities, parked, checkpoints })
}

/// Reads the inbox: event id → stream sequence, oldest id first, at most `limit`.
pub(crate) fn inbox_entries(
    db: &Database,
    limit: usize,
) -> Result<Vec<(carrier_messages::EventId, u64)>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(INBOX).during("open inbox")?;
    let mut out = Vec::new();
    for entry in table.iter().during("read inbox")?.take(limit) {
        let (k, v) = entry.during("read inbox")?;
        out.push((carrier_messages::EventId(uuid::Uuid::from_u128(k.value())), v.value()));
    }
    Ok(out)
}

/// The checkpoint row of a consumer, `None` when it has none.
pub(crate) fn checkpoint_entry(db: &Database, consumer: &str) -> Result<Option<u64>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
    let seq = table.get(consumer).during("read checkpoints")?.map(|v| v.value());
    Ok(seq)
}

/// The last stream sequence committed for a consumer (0 when none).
pub(crate) fn checkpoint(db: &Database, consumer: &str) -> Result<u64, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
    let seq = table.get(consumer).during("read checkpoints")?.map(|v| v.value()).unwrap_or(0);
    Ok(seq)
}

/// Sets a consumer's checkpoint to exactly `seq` (0 too: "from the start", kept as a row so that
/// it is not mistaken for no checkpoint at all), in one transaction: an
/// operator's seek or skip. Unlike a batch's, this may move the checkpoint backwards; what is
/// delivered again is dropped by the inbox or as stale.
pub(crate) fn set_checkpoint(db: &Database, consumer: &str, seq: u64) -> Result<(), StorageError> {
    let txn = db.begin_write().during("begin_write")?;
    {
        let mut table = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
        table.insert(consumer, seq).during("write checkpoints")?;
    }
    txn.commit().during("commit")?;
    Ok(())
}

/// Now, as Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Deletes inbox records written before `cutoff_unix_ms`, in one transaction: about `limit` of
/// them (whole batches, so one batch may take it past `limit`). Returns how many went.
///
/// Past the horizon, idempotence rests on entity versions alone: a redelivered event finds its
/// entity at its own version or later and is skipped as stale. What the inbox adds inside the
/// horizon is telling a duplicate (the same event again) from a stale one (an older event of an
/// entity that moved on), which the consumer counts separately.
pub(crate) fn prune_inbox(db: &Database, cutoff_unix_ms: u64, limit: usize) -> Result<u64, StorageError> {
    let txn = db.begin_write().during("begin_write")?;
    let mut removed = 0u64;
    {
        let mut inbox = txn.open_table(INBOX).during("open inbox")?;
        // What a file written before `inbox_batches` still indexes per event goes first.
        if txn.list_tables().during("list tables")?.any(|t| redb::TableHandle::name(&t) == "inbox_by_time") {
            let mut by_time = txn.open_table(INBOX_BY_TIME).during("open inbox_by_time")?;
            let mut expired = Vec::new();
            for entry in by_time.range(..(cutoff_unix_ms, 0u128)).during("read inbox_by_time")?.take(limit) {
                let (key, _) = entry.during("read inbox_by_time")?;
                expired.push(key.value());
            }
            for key in expired {
                by_time.remove(key).during("prune inbox_by_time")?;
                inbox.remove(key.1).during("prune inbox")?;
                removed += 1;
            }
        }
        let mut batches = txn.open_table(INBOX_BATCHES).during("open inbox_batches")?;
        let mut expired = Vec::new();
        let mut ids = 0usize;
        for entry in batches.range(..(cutoff_unix_ms, 0u128)).during("read inbox_batches")? {
            if removed as usize + ids >= limit {
                break;
            }
            let (key, value) = entry.during("read inbox_batches")?;
            ids += value.value().len() / 16;
            expired.push(key.value());
        }
        for key in expired {
            let Some(value) = batches.remove(key).during("prune inbox_batches")? else { continue };
            let packed = value.value().to_vec();
            drop(value);
            for id in packed.chunks_exact(16) {
                let id = u128::from_be_bytes(id.try_into().unwrap_or_default());
                inbox.remove(id).during("prune inbox")?;
                removed += 1;
            }
        }
    }
    if removed == 0 {
        txn.abort().during("abort")?;
    } else {
        txn.commit().during("commit")?;
    }
    Ok(removed)
}

/// What `adopt` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// The owner's state was written at its version; `unparked` waiting events followed it.
    Written {
        /// Parked events applied after it.
        unparked: u64,
    },
    /// The cache already had this version or a newer one: nothing changed.
    AlreadyCurrent {
        /// The cache's version.
        current: u64,
    },
}

/// Writes an entity's full state as its owner reported it at `version`, unless the cache is
/// already at that version or newer (a fallback answer never overwrites newer data). Parked
/// events at or below `version` are dropped (the state includes them); those above follow in
/// order. One transaction.
pub fn adopt<E, P>(
    db: &Database,
    projection: &P,
    aggregate: &str,
    id: &str,
    version: u64,
    write: impl FnOnce(&mut P::Tables<'_>) -> Result<(), StorageError>,
) -> Result<Adopted, StorageError>
where
    E: DomainEvent,
    P: Projection<E>,
{
    let txn = db.begin_write().during("begin_write")?;
    let outcome = {
        let mut versions = txn.open_table(VERSIONS).during("open entity_versions")?;
        let current = versions.get((aggregate, id)).during("read entity_versions")?.map(|v| v.value()).unwrap_or(0);
        if current >= version {
            Adopted::AlreadyCurrent { current }
        } else {
            let mut parked = txn.open_table(PARKED).during("open parked")?;
            let mut tables = projection.open(&txn)?;
            write(&mut tables)?;
            let superseded: Vec<u64> = parked
                .range((aggregate, id, 0)..=(aggregate, id, version))
                .during("read parked")?
                .map(|entry| entry.map(|(k, _)| k.value().2))
                .collect::<Result<_, _>>()
                .during("read parked")?;
            for v in superseded {
                parked.remove((aggregate, id, v)).during("drop parked")?;
            }
            let mut now = version;
            let mut unparked = 0;
            while let Some(bytes) = parked.remove((aggregate, id, now + 1)).during("take parked")? {
                let waiting: Inbound<E> = decode_row("parked", bytes.value())?;
                drop(bytes);
                projection.apply(&mut tables, &waiting.decoded.envelope, &waiting.decoded.event)?;
                unparked += 1;
                now += 1;
            }
            versions.insert((aggregate, id), now).during("write entity_versions")?;
            Adopted::Written { unparked }
        }
    };
    match outcome {
        Adopted::AlreadyCurrent { .. } => txn.abort().during("abort")?,
        Adopted::Written { .. } => txn.commit().during("commit")?,
    }
    Ok(outcome)
}

/// Replaces every entity of the kinds in `snapshot` (kind, entities) with an owner's snapshot, in
/// one transaction for all of them: `clear` empties the context's rows of a kind, `write` writes
/// each entity's state (a tombstone, with no state, keeps only its version); the kinds' versions
/// become exactly the snapshot's and their parked events go (everything after `through` is
/// delivered again, as the checkpoint says).
/// `consumer`'s checkpoint becomes `through`, the stream's last sequence read before the snapshot
/// was: every event up to it is reflected in the snapshot, so nothing before it needs delivering
/// again, and an event after it that the snapshot already reflects is stale by its version. The caller must keep batches from being applied while it
/// reads the snapshot (an event applied in between would be in the inbox, and so skipped on
/// redelivery, while the snapshot may predate it).
///
/// Without `through` (the stream could not be read: a fallback sync while JetStream is out of
/// reach) the snapshot is merged instead: an entity is written only where it is newer than what
/// the file holds, nothing is cleared, tombstones are skipped, and the checkpoint stays; events
/// still to come are then stale or next by their versions as usual. Returns how many entities
/// were written.
pub fn resync<E, P, S>(
    db: &Database,
    projection: &P,
    consumer: &str,
    through: Option<u64>,
    snapshot: Vec<(&str, Vec<(String, u64, Option<S>)>)>,
    mut clear: impl FnMut(&mut P::Tables<'_>, &str) -> Result<(), StorageError>,
    mut write: impl FnMut(&mut P::Tables<'_>, &str, &str, Option<S>) -> Result<(), StorageError>,
) -> Result<u64, StorageError>
where
    E: DomainEvent,
    P: Projection<E>,
{
    let txn = db.begin_write().during("begin_write")?;
    let mut written = 0;
    {
        let mut tables = projection.open(&txn)?;
        let mut versions = txn.open_table(VERSIONS).during("open entity_versions")?;
        let mut parked = txn.open_table(PARKED).during("open parked")?;
        for (aggregate, entities) in snapshot {
            let Some(_) = through else {
                for (id, version, state) in entities {
                    let current =
                        versions.get((aggregate, id.as_str())).during("read entity_versions")?.map(|v| v.value());
                    if current.unwrap_or(0) < version {
                        // A newer tombstone forgets the entity: it is written as `None`.
                        written += u64::from(state.is_some());
                        write(&mut tables, aggregate, &id, state)?;
                        versions.insert((aggregate, id.as_str()), version).during("write entity_versions")?;
                    }
                }
                continue;
            };
            clear(&mut tables, aggregate)?;
            let mut old: Vec<String> = Vec::new();
            for entry in versions.range((aggregate, "")..).during("read entity_versions")? {
                let (key, _) = entry.during("read entity_versions")?;
                let (a, id) = key.value();
                if a != aggregate {
                    break;
                }
                old.push(id.to_string());
            }
            for id in old {
                versions.remove((aggregate, id.as_str())).during("clear entity_versions")?;
            }
            let mut waiting: Vec<(String, u64)> = Vec::new();
            for entry in parked.range((aggregate, "", 0)..).during("read parked")? {
                let (key, _) = entry.during("read parked")?;
                let (a, id, v) = key.value();
                if a != aggregate {
                    break;
                }
                waiting.push((id.to_string(), v));
            }
            for (id, v) in waiting {
                parked.remove((aggregate, id.as_str(), v)).during("clear parked")?;
            }
            for (id, version, state) in entities {
                // A tombstone keeps only its version: the rows were cleared.
                if state.is_some() {
                    write(&mut tables, aggregate, &id, state)?;
                    written += 1;
                }
                versions.insert((aggregate, id.as_str()), version).during("write entity_versions")?;
            }
        }
        if let Some(through) = through {
            // Exactly `through`: the caller held every batch back and read `through` as the
            // stream's last sequence, so nothing past it was applied; a checkpoint beyond it can
            // only be one a stream that started over no longer has.
            let mut checkpoints = txn.open_table(CHECKPOINTS).during("open checkpoints")?;
            checkpoints.insert(consumer, through).during("write checkpoints")?;
        }
    }
    txn.commit().during("commit")?;
    Ok(written)
}

/// Entities with events parked behind a missing version: (aggregate type, id, current version,
/// lowest parked version).
pub(crate) fn gaps(db: &Database) -> Result<Vec<(String, String, u64, u64)>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let parked = txn.open_table(PARKED).during("open parked")?;
    let versions = txn.open_table(VERSIONS).during("open entity_versions")?;
    let mut out: Vec<(String, String, u64, u64)> = Vec::new();
    for entry in parked.iter().during("read parked")? {
        let (key, _) = entry.during("read parked")?;
        let (aggregate, id, version) = key.value();
        if out.last().is_some_and(|(a, i, _, _)| a == aggregate && i == id) {
            continue;
        }
        let current = versions.get((aggregate, id)).during("read entity_versions")?.map(|v| v.value()).unwrap_or(0);
        out.push((aggregate.to_string(), id.to_string(), current, version));
    }
    Ok(out)
}

/// Every table of a file with its row count, by name: the dashboard's "rows per table" without
/// knowing each context's tables.
pub(crate) fn table_sizes(db: &Database) -> Result<Vec<(String, u64)>, StorageError> {
    use redb::{ReadableTableMetadata, TableHandle};
    let txn = db.begin_read().during("begin_read")?;
    let mut sizes = Vec::new();
    for handle in txn.list_tables().during("list tables")? {
        let name = handle.name().to_string();
        let table = txn.open_untyped_table(handle).during("open table")?;
        sizes.push((name, table.len().during("count rows")?));
    }
    sizes.sort();
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written before `inbox_batches` indexed the inbox one row per event: pruning drains
    /// those rows with their inbox entries, and counts them in the index until then.
    #[test]
    fn an_older_files_per_event_index_is_pruned_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_database(&dir.path().join("old.redb"), 1 << 20, create_tables).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let mut inbox = txn.open_table(INBOX).expect("inbox");
            let mut by_time = txn.open_table(INBOX_BY_TIME).expect("inbox_by_time");
            for id in 1..=3u128 {
                inbox.insert(id, id as u64).expect("insert");
                by_time.insert((1_000, id), ()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        assert_eq!(inbox_indexed(&db).expect("index"), 3);
        assert_eq!(prune_inbox(&db, 999, 10).expect("prune"), 0, "written after the cutoff");
        assert_eq!(prune_inbox(&db, 2_000, 2).expect("prune"), 2, "at most the limit");
        assert_eq!(prune_inbox(&db, 2_000, 10).expect("prune"), 1);
        assert_eq!(inbox_indexed(&db).expect("index"), 0);
        assert_eq!(inbox_entries(&db, 10).expect("inbox"), Vec::new());
    }
}
