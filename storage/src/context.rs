//! A bounded context's redb file: its own tables, the engine's (inbox, versions, parked events,
//! checkpoints) and an outbox, all written by the context's one writer actor.
//!
//! A context reacts to other contexts' events ([`Reacts`]) and decides commands
//! ([`FileWriter::execute`]). Either way, what it publishes goes into the outbox in the same
//! transaction as the change that caused it, so a reaction to a redelivered event can neither
//! publish twice nor change state without publishing.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use carrier_messages::Causality;
use carrier_messages::{Decoded, DomainEvent, EncodedEvent, Envelope, EventId};

use crate::engine::{self, Adopted, BatchOutcome, EngineStats, Inbound, Projection};
use crate::error::RedbResultExt;
use crate::idempotency::{Decided, IdempotencyKey};
use crate::outbox::{self, OUTBOX, OUTBOX_NEXT, OWN_VERSIONS};
use crate::{CommandError, ReactError, StorageError};

/// What one context keeps and publishes.
pub trait ContextKind: Sized + Send + Sync + 'static {
    /// The context's name, e.g. `depot`.
    const NAME: &'static str;
    /// What it publishes ([`carrier_messages::NoEvents`] when nothing).
    type Event: DomainEvent;
    /// Creates its own tables (the engine's and the outbox are created for it). By default
    /// none: a [`Rows`](crate::Rows) table is created by its first write and reads as empty
    /// before.
    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        let _ = txn;
        Ok(())
    }
}

/// How a context decides commands of type `C`: against its own tables, recording each event it
/// decides through the emitter, in the transaction of the change. An owner is a context that
/// decides commands and reacts to nothing; any context may do both.
pub trait Decides<C>: ContextKind {
    /// The command's name for logs, e.g. `CreateStore` (by default the command type's name).
    fn command_name(command: &C) -> &'static str {
        let _ = command;
        let full = std::any::type_name::<C>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Decides `command`: reads and writes the context's tables in `txn` and records what it
    /// decided with [`Emitter::record`] (with `causality`). Nothing is kept unless it returns
    /// `Ok` having recorded an event.
    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, Self::Event>,
        command: &C,
        causality: &Causality,
    ) -> Result<(), CommandError>;
}

/// How an instance standing by for a context rebuilds the context's own tables from the events
/// the context published (its own stream), so that it can take over, with the state, when the
/// instance deciding the context's commands dies: the fold of `decide`'s events into the rows.
///
/// The fold must skip an event its rows already have (by the entity's version): followers
/// start from a checkpoint committed with their rows, and a batch may come again after a crash.
pub trait Follows: ContextKind {
    /// Folds one of the context's own events into its tables in `txn`.
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &Self::Event) -> Result<(), StorageError>;
}

/// How a context that caches another context's entities (events of type `E`) adopts an entity's
/// state when the owner reports it: on a cache miss, and after a version gap stayed open, it
/// asks the owner ([`carrier_messages::EntityQuery`]) and writes what it keeps, never
/// over a newer version.
pub trait Adopts<E: DomainEvent>: Reacts<E> {
    /// The fields of the owner's row this context keeps (the owner may send more).
    type State: serde::de::DeserializeOwned + Send + 'static;
    /// Where it keeps each kind of entity: `(aggregate, table)` pairs, each table a
    /// [`Rows`](crate::Rows) table of one row per id, written only from `E`'s stream and the
    /// owner's answers. `carrier rebuild` replays `E`'s stream into fresh copies of them and
    /// swaps them in; lookups read them.
    const TABLES: &'static [(&'static str, &'static str)];
    /// Writes the entity `aggregate`/`id` in the state the owner reported.
    fn adopt(tables: &mut Self::Tables<'_>, aggregate: &str, id: &str, state: Self::State) -> Result<(), StorageError>;
    /// Forgets the entity `aggregate`/`id`: its owner deleted it (a tombstone in its answer).
    fn forget(tables: &mut Self::Tables<'_>, aggregate: &str, id: &str) -> Result<(), StorageError>;
}

/// How a cache of `E`'s owner's entities is replaced wholesale by the owner's snapshot (a full
/// sync: on first start, when the stream no longer holds the cache's position, or on demand).
pub trait Resyncs<E: DomainEvent>: Adopts<E> {
    /// Removes every entity of kind `aggregate` the context keeps, before the snapshot's are
    /// written in with [`Adopts::adopt`] (all in one transaction).
    fn clear(tables: &mut Self::Tables<'_>, aggregate: &str) -> Result<(), StorageError>;
}

/// How a context applies another context's events of type `E`.
pub trait Reacts<E: DomainEvent>: ContextKind {
    /// Its tables, opened once per batch transaction.
    type Tables<'txn>;
    /// Opens them.
    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Self::Tables<'txn>, StorageError>;
    /// Applies one event (called only for its entity's next version); may emit events.
    fn react(
        tables: &mut Self::Tables<'_>,
        emit: &mut Emitter<'_, Self::Event>,
        envelope: &Envelope,
        event: &E,
    ) -> Result<(), ReactError>;

    /// Whether reacting to `event` may emit an event of the context's own (or change its own
    /// rows, which only its events may do). An instance standing by holds such an event until
    /// it has followed what the holder did with it: reacting on rows that may be behind the
    /// holder's could decide otherwise, and say "nothing to do" for good. Say `false` only for
    /// events whose reaction only fills caches. By default: whenever the context publishes.
    fn may_emit(_event: &E) -> bool {
        !<Self::Event as DomainEvent>::EVENT_TYPES.is_empty()
    }
}

/// Appends the events a reaction or a command decides to the outbox, in its transaction, and
/// keeps each of the context's entities' versions.
pub struct Emitter<'txn, E> {
    outbox: Table<'txn, u64, &'static [u8]>,
    next: Table<'txn, &'static str, u64>,
    /// The last version recorded for each entity of the context's own (see [`Emitter::event`]).
    own: Table<'txn, (&'static str, &'static str), u64>,
    emitted: Vec<Decoded<E>>,
}

impl<'txn, E: DomainEvent> Emitter<'txn, E> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        Ok(Emitter {
            outbox: txn.open_table(OUTBOX).during("open outbox")?,
            next: txn.open_table(OUTBOX_NEXT).during("open outbox_next")?,
            own: txn.open_table(OWN_VERSIONS).during("open own_versions")?,
            emitted: Vec::new(),
        })
    }

    /// Records the event a command decided at its entity's next version, which the library
    /// keeps: one more than the last event this context recorded for that entity (1 for a new
    /// one), in the same transaction. Returns the version it got. An event that breaks a field
    /// limit refuses the command ([`CommandError::Invalid`]). An owner that checks an expected
    /// version (optimistic concurrency) compares it with [`next_version`](Self::next_version)
    /// first.
    pub fn event(&mut self, event: E, causality: &Causality) -> Result<u64, CommandError> {
        let version = self.next_version_of(&event)?;
        self.decided(event, version, causality)?;
        Ok(version)
    }

    /// Records, in reaction to `cause`, `event` at its entity's next version (see
    /// [`event`](Self::event)); returns the version.
    pub fn caused(&mut self, event: E, cause: &Envelope) -> Result<u64, StorageError> {
        let version = self.next_version_of(&event)?;
        self.emit(event, version, cause)?;
        Ok(version)
    }

    /// The version the next event about the entity `aggregate`/`id` gets: one more than the last
    /// this context recorded for it, 1 for a new one.
    pub fn next_version(&self, aggregate: &str, id: &str) -> Result<u64, StorageError> {
        let last = self.own.get((aggregate, id)).during("read own_versions")?.map(|v| v.value());
        Ok(last.unwrap_or(0) + 1)
    }

    fn next_version_of(&self, event: &E) -> Result<u64, StorageError> {
        self.next_version(event.aggregate_type(), event.aggregate_id())
    }

    /// Records `event` at `version` of its entity, caused by the event in `cause` (same
    /// correlation id; causation id = its event id).
    pub fn emit(&mut self, event: E, version: u64, cause: &Envelope) -> Result<(), StorageError> {
        let causality = Causality {
            correlation_id: Some(cause.correlation_id.clone()),
            causation_id: Some(cause.event_id.to_string()),
            // The consumer span in which this context reacts to `cause` (see messages::trace).
            trace: Some(cause.trace().consumer_span(&cause.event_id.to_string(), E::CONTEXT)),
            idempotency: None,
        };
        self.record(event, version, &causality)
    }

    /// Records the event a command decided, at `version` of its entity: an event that breaks
    /// a field limit refuses the command ([`CommandError::Invalid`]).
    pub fn decided(&mut self, event: E, version: u64, causality: &Causality) -> Result<(), CommandError> {
        event.validate()?;
        Ok(self.record(event, version, causality)?)
    }

    /// Records `event` at `version` with the given causality (commands).
    pub fn record(&mut self, event: E, version: u64, causality: &Causality) -> Result<(), StorageError> {
        event.validate().map_err(|e| StorageError::Corrupt { table: "outbox", reason: e.to_string() })?;
        let decoded = Decoded::new(event, version, causality);
        let encoded = decoded.encode().map_err(|e| StorageError::Corrupt { table: "outbox", reason: e.to_string() })?;
        outbox::append_to(&mut self.outbox, &mut self.next, &encoded)?;
        let key = (decoded.event.aggregate_type(), decoded.event.aggregate_id());
        let last = self.own.get(key).during("read own_versions")?.map(|v| v.value()).unwrap_or(0);
        if version > last {
            self.own.insert(key, version).during("write own_versions")?;
        }
        self.emitted.push(decoded);
        Ok(())
    }

    /// How many events were recorded so far in this transaction.
    pub fn count(&self) -> usize {
        self.emitted.len()
    }
}

/// Hands events of type `E` to `K`'s reaction, with an emitter.
struct ReactProjection<K, E>(PhantomData<fn() -> (K, E)>);

impl<K: Reacts<E>, E: DomainEvent> Projection<E> for ReactProjection<K, E> {
    type Tables<'txn> = (K::Tables<'txn>, Emitter<'txn, K::Event>);

    fn open<'txn>(&self, txn: &'txn WriteTransaction) -> Result<Self::Tables<'txn>, StorageError> {
        Ok((K::open(txn)?, Emitter::open(txn)?))
    }

    fn apply(&self, tables: &mut Self::Tables<'_>, envelope: &Envelope, event: &E) -> Result<(), StorageError> {
        K::react(&mut tables.0, &mut tables.1, envelope, event).map_err(StorageError::from)
    }

    fn emitted(&self, tables: &Self::Tables<'_>) -> usize {
        tables.1.count()
    }

    fn may_emit(&self, event: &E) -> bool {
        K::may_emit(event)
    }
}

/// A context's redb file, `<context>.redb`, for reading: what handles, queries, the dashboard and
/// tests hold. Only its [`FileWriter`] writes it.
pub struct ContextFile<K> {
    pub(crate) db: Database,
    path: PathBuf,
    kind: PhantomData<fn() -> K>,
    /// A read snapshot shared by lookups until the writer's next commit: opening a read
    /// transaction is about a third of a lookup by id. Tagged with the commit generation it
    /// was taken in, so that it is never used after a commit (see [`ContextFile::snapshot`]).
    snapshot: std::sync::Mutex<Option<(u64, Arc<Snapshot>)>>,
    /// Bumped by the writer after every commit.
    generation: std::sync::atomic::AtomicU64,
    /// redb's page cache for this file.
    cache_bytes: usize,
    /// A rebuild's scratch file: batches commit without fsync (see [`FileWriter::open_scratch`]).
    scratch: bool,
    /// Batches committed without fsync since the last one with it.
    unsynced: std::sync::atomic::AtomicU32,
    /// A scratch file's own handle, to start the kernel's writeback after each batch.
    writeback: Option<std::fs::File>,
}

/// A read transaction shared by lookups until the writer's next commit, with the tables they
/// opened in it.
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    tables: std::sync::RwLock<Vec<(&'static str, Arc<RowsTable>)>>,
}

type RowsTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

impl Snapshot {
    /// `rows`' table in this snapshot, opened at its first use; `None` before anything was
    /// ever written to it.
    fn table<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        rows: &crate::Rows<T>,
    ) -> Result<Option<Arc<RowsTable>>, StorageError> {
        let name = rows.name();
        if let Some((_, table)) = self.tables.read().unwrap_or_else(|p| p.into_inner()).iter().find(|(n, _)| *n == name)
        {
            return Ok(Some(table.clone()));
        }
        let Some(table) = rows.read(&self.txn)? else { return Ok(None) };
        let table = Arc::new(table);
        self.tables.write().unwrap_or_else(|p| p.into_inner()).push((name, table.clone()));
        Ok(Some(table))
    }
}

/// A scratch file syncs one applied batch in this many.
pub const SCRATCH_SYNC_EVERY: u32 = 32;

/// How much memory redb may keep of a file's pages, by default: 64 MiB. redb's own default is
/// 1 GiB per file, which a process with a live file and a rebuild beside it would fill with a
/// million cached products; past this, pages are read from the operating system's page cache
/// (counted as the kernel's memory, not the process's, and given back under pressure).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl<K: ContextKind> ContextFile<K> {
    fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let path = path.to_path_buf();
        let db = engine::open_database(&path, cache_bytes, |txn| {
            engine::create_tables(txn)?;
            txn.open_table(OUTBOX).during("create outbox")?;
            txn.open_table(OUTBOX_NEXT).during("create outbox_next")?;
            txn.open_table(OWN_VERSIONS).during("create own_versions")?;
            txn.open_table(crate::idempotency::IDEMPOTENCY).during("create idempotency")?;
            txn.open_table(crate::idempotency::IDEMPOTENCY_BY_TIME).during("create idempotency_by_time")?;
            K::create_tables(txn)
        })?;
        Ok(ContextFile {
            db,
            path,
            kind: PhantomData,
            snapshot: std::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            cache_bytes,
            scratch: false,
            unsynced: std::sync::atomic::AtomicU32::new(0),
            writeback: None,
        })
    }

    /// redb's page cache for this file, in bytes (a rebuild opens its fresh file with the same).
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// A read snapshot at least as new as the last commit that finished before this call:
    /// shared by lookups until the writer commits again, then taken afresh.
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>, StorageError> {
        use std::sync::atomic::Ordering;
        let current = self.generation.load(Ordering::Acquire);
        {
            let slot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((generation, txn)) = slot.as_ref() {
                if *generation == current {
                    return Ok(txn.clone());
                }
            }
        }
        let txn = Arc::new(Snapshot { txn: self.db.begin_read().during("begin_read")?, tables: Default::default() });
        let mut slot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        // Kept for others only if no commit finished meanwhile (it might predate that commit).
        if self.generation.load(Ordering::Acquire) == current {
            *slot = Some((current, txn.clone()));
        }
        Ok(txn)
    }

    /// The writer committed: lookups take a new snapshot, and the old one is let go (a held
    /// read transaction keeps redb from reusing the pages it sees).
    fn committed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let old = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on a read snapshot.
    pub fn read<T>(&self, read: impl FnOnce(&ReadTransaction) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let txn = self.db.begin_read().during("begin_read")?;
        read(&txn)
    }

    /// Runs `read` on the snapshot lookups share until the writer's next commit (see
    /// `ContextFile::snapshot`): what a hot read path wants, since opening a read transaction
    /// is a good part of a lookup by id. It never reads from before a commit that finished
    /// before the call; keep `read` short, as the snapshot is held while it runs.
    pub fn read_latest<T>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let snapshot = self.snapshot()?;
        read(&snapshot.txn)
    }

    /// One row of `rows` by id, read on the snapshot lookups share (see
    /// [`read_latest`](Self::read_latest)), with the table opened once per snapshot: opening
    /// it was two fifths of a lookup in the profile.
    pub fn row<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        rows: &crate::Rows<T>,
        id: &str,
    ) -> Result<Option<T>, StorageError> {
        let snapshot = self.snapshot()?;
        let Some(table) = snapshot.table(rows)? else { return Ok(None) };
        let row = table.get(id).during("read row")?;
        row.map(|bytes| crate::error::decode_row(rows.name(), bytes.value())).transpose()
    }

    /// The oldest `limit` unpublished events.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<(u64, EncodedEvent)>, StorageError> {
        outbox::pending(&self.db, limit)
    }

    /// Unpublished events.
    pub fn outbox_len(&self) -> Result<u64, StorageError> {
        outbox::len(&self.db)
    }

    /// How many event ids the inbox's time index holds: as many as the inbox holds, or pruning
    /// would leave some behind for ever (a scan of the index: for checks, not hot paths).
    pub fn inbox_indexed(&self) -> Result<u64, StorageError> {
        engine::inbox_indexed(&self.db)
    }
}

/// The one writer of a context's file. Whoever opens the file holds it (the context's writer
/// actor); everyone else gets the [`ContextFile`] it hands out, which only reads. A second
/// writer of the same file cannot exist: redb refuses to open a file twice.
pub struct FileWriter<K> {
    file: Arc<ContextFile<K>>,
}

/// Why one attempt of [`FileWriter::decide_all`] kept nothing: the refused decision's position
/// and why, or `None` for a failed commit.
type Refusal = (Option<usize>, CommandError);

/// One command's decision for [`FileWriter::decide_all`]: reads and writes the context's tables
/// in the transaction and records exactly one event through the emitter.
pub type Decision<K> =
    Box<dyn FnMut(&WriteTransaction, &mut Emitter<'_, <K as ContextKind>::Event>) -> Result<(), CommandError> + Send>;

impl<K> std::ops::Deref for FileWriter<K> {
    type Target = ContextFile<K>;
    fn deref(&self) -> &ContextFile<K> {
        &self.file
    }
}

impl<K: ContextKind> FileWriter<K> {
    /// Every write of the file ends with this: lookups must not go on reading the snapshot
    /// from before it.
    pub(crate) fn committed(&self) {
        self.file.committed();
    }
}

impl<K: ContextKind> FileWriter<K> {
    /// Opens or creates the file and its tables, with redb's page cache at
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Like [`FileWriter::open`], with redb's page cache at `cache_bytes`.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self, StorageError> {
        Ok(FileWriter { file: Arc::new(ContextFile::open(path.as_ref(), cache_bytes)?) })
    }

    /// A scratch file, for a rebuild: applied batches commit without waiting for the disk
    /// (every [`SCRATCH_SYNC_EVERY`]th does, so that redb can reuse the pages earlier ones
    /// freed) and record no inbox (the swap does not take it). What a crash leaves of it is
    /// never used: a rebuild starts from an empty file.
    pub fn open_scratch(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self, StorageError> {
        let mut file = ContextFile::open(path.as_ref(), cache_bytes)?;
        file.scratch = true;
        file.writeback = std::fs::File::open(path.as_ref()).ok();
        Ok(FileWriter { file: Arc::new(file) })
    }

    /// The file, for reading: what the writer hands to everyone else.
    pub fn file(&self) -> Arc<ContextFile<K>> {
        self.file.clone()
    }

    /// Sets `consumer`'s checkpoint to exactly `seq` (an operator's seek or skip; see
    /// `engine::set_checkpoint`).
    pub fn set_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StorageError> {
        engine::set_checkpoint(&self.db, consumer, seq)?;
        self.file.committed();
        Ok(())
    }

    /// Applies a delivered batch of `E` events in one transaction (see `engine::apply_batch_with`),
    /// with whatever the reactions emit.
    pub fn apply<E: DomainEvent>(
        &self,
        consumer: &str,
        batch: &[Inbound<E>],
        through: u64,
    ) -> Result<BatchOutcome, StorageError>
    where
        K: Reacts<E>,
    {
        self.apply_with(consumer, batch, through, engine::Effects::Emit)
    }

    /// Like [`apply`](Self::apply), for a context that [`Follows`] its own stream (it may stand
    /// by): an event whose effect was followed already (an event of its own names it as its
    /// cause) moves its entity's version on without its reaction running again; and while
    /// `hold_effects` (this instance stands by or is fenced), a reaction that would emit refuses
    /// the batch with [`StorageError::NotYetFollowed`], keeping nothing: the holder may have
    /// emitted it, and this instance tries again once it has followed that, or holds the
    /// context. Reactions that emit nothing (caches) apply as usual, so a standby's caches stay
    /// current.
    pub fn apply_followed<E: DomainEvent>(
        &self,
        consumer: &str,
        batch: &[Inbound<E>],
        through: u64,
        hold_effects: bool,
    ) -> Result<BatchOutcome, StorageError>
    where
        K: Reacts<E>,
    {
        let effects = if hold_effects { engine::Effects::Hold } else { engine::Effects::Emit };
        self.apply_with(consumer, batch, through, effects)
    }

    /// [`apply`](Self::apply) and [`apply_followed`](Self::apply_followed): one transaction,
    /// without fsync for most of a scratch file's batches.
    fn apply_with<E: DomainEvent>(
        &self,
        consumer: &str,
        batch: &[Inbound<E>],
        through: u64,
        effects: engine::Effects,
    ) -> Result<BatchOutcome, StorageError>
    where
        K: Reacts<E>,
    {
        let durability = if self.scratch
            && self.unsynced.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SCRATCH_SYNC_EVERY != 0
        {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        };
        let projection = ReactProjection::<K, E>(PhantomData);
        let outcome = engine::apply_batch_with(
            &self.db,
            consumer,
            &projection,
            batch,
            through,
            durability,
            self.scratch,
            effects,
        );
        self.file.committed();
        if let Some(file) = &self.file.writeback {
            start_writeback(file);
        }
        outcome
    }

    /// Folds a batch of the context's own events (read back from its stream) into its tables
    /// with [`Follows`], and moves `consumer`'s checkpoint to `through` or the batch's last
    /// sequence, all in one transaction.
    pub fn follow(&self, consumer: &str, batch: &[Inbound<K::Event>], through: u64) -> Result<u64, StorageError>
    where
        K: Follows,
    {
        let txn = self.db.begin_write().during("begin_write")?;
        let last = engine::follow_batch::<K>(&txn, consumer, batch, through)?;
        txn.commit().during("commit")?;
        self.file.committed();
        Ok(last)
    }

    /// Writes an entity's state as its owner reported it, unless the file already has that
    /// version or a newer one (see `engine::adopt`).
    pub fn adopt<E: DomainEvent>(
        &self,
        aggregate: &str,
        id: &str,
        version: u64,
        write: impl FnOnce(&mut K::Tables<'_>) -> Result<(), StorageError>,
    ) -> Result<Adopted, StorageError>
    where
        K: Reacts<E>,
    {
        let projection = ReactProjection::<K, E>(PhantomData);
        let adopted =
            engine::adopt::<E, _>(&self.db, &projection, aggregate, id, version, |tables| write(&mut tables.0));
        self.file.committed();
        adopted
    }

    /// Replaces the entities of each kind in `snapshot` (kind, then id, version, and state or
    /// none for a tombstone) with the owner's snapshot, all in one transaction (see
    /// `engine::resync`): the context's rows of those kinds, their versions and parked events,
    /// and `consumer`'s checkpoint, which becomes `through` (the stream's last sequence before
    /// the snapshot was read); without `through`, merges the snapshot where it is newer. Returns
    /// how many entities were written.
    pub fn resync<E: DomainEvent>(
        &self,
        consumer: &str,
        through: Option<u64>,
        snapshot: Vec<(&str, Vec<(String, u64, Option<K::State>)>)>,
    ) -> Result<u64, StorageError>
    where
        K: Resyncs<E>,
    {
        let projection = ReactProjection::<K, E>(PhantomData);
        let written = engine::resync::<E, _, _>(
            &self.db,
            &projection,
            consumer,
            through,
            snapshot,
            |tables, aggregate| K::clear(&mut tables.0, aggregate),
            |tables, aggregate, id, state| match state {
                Some(state) => K::adopt(&mut tables.0, aggregate, id, state),
                None => K::forget(&mut tables.0, aggregate, id),
            },
        );
        self.file.committed();
        written
    }

    /// Decides `command` with `K`'s rules ([`Decides`]) in one transaction, with its outbox row.
    pub fn execute<C>(&self, command: &C, causality: &Causality) -> Result<Decoded<K::Event>, CommandError>
    where
        K: Decides<C>,
    {
        self.decide_with(|txn, emit| K::decide(txn, emit, command, causality))
    }

    /// Decides a command against the file in one transaction: `decide` reads and writes the
    /// context's tables and records its event through the emitter. Nothing is kept unless it
    /// returns `Ok` having recorded an event.
    pub fn decide_with(
        &self,
        decide: impl FnOnce(&WriteTransaction, &mut Emitter<'_, K::Event>) -> Result<(), CommandError>,
    ) -> Result<Decoded<K::Event>, CommandError> {
        let txn = self.db.begin_write().during("begin_write")?;
        let result = {
            let mut emitter = Emitter::open(&txn)?;
            decide(&txn, &mut emitter).and_then(|()| {
                emitter.emitted.pop().ok_or_else(|| CommandError::Rejected("the command changed nothing".into()))
            })
        };
        match result {
            Ok(decoded) => {
                let committed = txn.commit().during("commit");
                self.file.committed();
                committed?;
                Ok(decoded)
            }
            Err(e) => {
                txn.abort().during("abort")?;
                Err(e)
            }
        }
    }

    /// Decides many commands in one write transaction, each with its outbox row, and commits
    /// once: one fsync for the lot (group commit), so an owner's throughput is not bounded by
    /// the disk's flush rate. Returns one result per decision, in order.
    ///
    /// Every decision sees the effects of those before it. One that is refused (or records no
    /// event) must leave nothing behind, so the transaction is then abandoned and the others are
    /// decided again in a fresh one without it; decisions are therefore `FnMut` and must decide
    /// the same way when run again on the same state (as a pure decision on the file does).
    pub fn decide_all(&self, decisions: &mut [Decision<K>]) -> Vec<Result<Decoded<K::Event>, CommandError>> {
        self.decide_all_keyed(decisions, &[]).into_iter().map(|r| r.map(|d| d.event)).collect()
    }

    /// Like [`decide_all`](Self::decide_all), where decision `i` may carry an idempotency key
    /// (`keys[i]`; a shorter `keys` leaves the rest without): a key seen before answers with the
    /// event its first command recorded and decides nothing (see `crate::idempotency`); a new
    /// key is stored with its command's event, in the same transaction.
    pub fn decide_all_keyed(
        &self,
        decisions: &mut [Decision<K>],
        keys: &[Option<IdempotencyKey>],
    ) -> Vec<Result<Decided<K::Event>, CommandError>> {
        let mut results: Vec<Option<Result<Decided<K::Event>, CommandError>>> =
            (0..decisions.len()).map(|_| None).collect();
        // Indices still to decide; a refused one is answered and removed, the rest run again.
        let mut pending: Vec<usize> = (0..decisions.len()).collect();
        while !pending.is_empty() {
            match self.try_decide_all(decisions, keys, &pending) {
                Ok(decided) => {
                    for (index, decoded) in pending.iter().zip(decided) {
                        results[*index] = Some(Ok(decoded));
                    }
                    pending.clear();
                }
                Err((Some(position), error)) => {
                    results[pending[position]] = Some(Err(error));
                    pending.remove(position);
                }
                Err((None, error)) => {
                    // The commit itself failed: nothing of the group was kept.
                    let message = error.to_string();
                    for index in pending.drain(..) {
                        results[index] = Some(Err(CommandError::Storage(StorageError::io(
                            "commit",
                            std::io::Error::other(message.clone()),
                        ))));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(CommandError::Rejected("not decided".into())))).collect()
    }

    /// One attempt: every decision in `pending` in one transaction, committed. On a refusal,
    /// its position in `pending` and why; `None` for a failed commit.
    fn try_decide_all(
        &self,
        decisions: &mut [Decision<K>],
        keys: &[Option<IdempotencyKey>],
        pending: &[usize],
    ) -> Result<Vec<Decided<K::Event>>, Refusal> {
        let txn = self.db.begin_write().during("begin_write").map_err(|e| (Some(0), e.into()))?;
        let mut decided = Vec::with_capacity(pending.len());
        let mut refused = None;
        {
            let mut emitter = Emitter::<K::Event>::open(&txn).map_err(|e| (Some(0), e.into()))?;
            let mut key_tables = match keys.iter().any(Option::is_some) {
                true => Some(crate::idempotency::KeyTables::open(&txn).map_err(|e| (Some(0), e.into()))?),
                false => None,
            };
            for (position, index) in pending.iter().enumerate() {
                let key = keys.get(*index).and_then(Option::as_ref);
                let outcome = decide_one::<K>(&txn, &mut emitter, key_tables.as_mut().zip(key), &mut decisions[*index]);
                match outcome {
                    Ok(one) => decided.push(one),
                    Err(error) => {
                        refused = Some((position, error));
                        break;
                    }
                }
            }
        }
        if let Some((position, error)) = refused {
            let _ = txn.abort();
            return Err((Some(position), error));
        }
        let committed = txn.commit().during("commit");
        self.file.committed();
        committed.map_err(|e| (None, e.into()))?;
        Ok(decided)
    }

    /// Deletes published outbox rows.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<(), StorageError> {
        let removed = outbox::remove(&self.db, keys);
        self.file.committed();
        removed
    }

    /// Deletes up to `limit` idempotency keys stored longer ago than `retention`. Returns how
    /// many went.
    pub fn prune_idempotency(&self, retention: Duration, limit: usize) -> Result<u64, StorageError> {
        let cutoff = engine::unix_ms().saturating_sub(retention.as_millis() as u64);
        let pruned = crate::idempotency::prune(&self.db, cutoff, limit);
        self.file.committed();
        pruned
    }

    /// Deletes up to `limit` inbox records older than `horizon`. Returns how many went.
    pub fn prune_inbox(&self, horizon: Duration, limit: usize) -> Result<u64, StorageError> {
        let cutoff = engine::unix_ms().saturating_sub(horizon.as_millis() as u64);
        let pruned = engine::prune_inbox(&self.db, cutoff, limit);
        self.file.committed();
        pruned
    }
}

/// One decision in a group's transaction: the replay of its idempotency key when the key was
/// seen before, else the decision, which must record exactly one event (stored with its key).
fn decide_one<K: ContextKind>(
    txn: &WriteTransaction,
    emitter: &mut Emitter<'_, K::Event>,
    keyed: Option<(&mut crate::idempotency::KeyTables<'_>, &IdempotencyKey)>,
    decision: &mut Decision<K>,
) -> Result<Decided<K::Event>, CommandError> {
    if let Some((tables, key)) = &keyed {
        if let Some(replay) = tables.replay::<K::Event>(key)? {
            return replay.map(|event| Decided { event, replayed: true, position: None });
        }
    }
    let before = emitter.emitted.len();
    decision(txn, emitter)?;
    if emitter.emitted.len() != before + 1 {
        return Err(CommandError::Rejected(if emitter.emitted.len() == before {
            "the command changed nothing".into()
        } else {
            "a command must record exactly one event".into()
        }));
    }
    let event = emitter.emitted.pop().ok_or_else(|| CommandError::Rejected("the command changed nothing".into()))?;
    if let Some((tables, key)) = keyed {
        tables.store(key, &event)?;
    }
    Ok(Decided { event, replayed: false, position: None })
}

/// What the writer actor and the operator tools need of any context's file.
pub trait ContextDb: Send + Sync + 'static {
    /// The context's name.
    fn context(&self) -> &'static str;
    /// Inbox size, parked events and checkpoints.
    fn engine_stats(&self) -> Result<EngineStats, StorageError>;
    /// The first `limit` inbox entries.
    fn inbox(&self, limit: usize) -> Result<Vec<(EventId, u64)>, StorageError>;
    /// The last stream sequence committed for `consumer` (0 when none).
    fn checkpoint(&self, consumer: &str) -> Result<u64, StorageError>;
    /// Its checkpoint row, `None` when it has none (0 is a position: the start).
    fn checkpoint_entry(&self, consumer: &str) -> Result<Option<u64>, StorageError>;
    /// Entities waiting for a missing version: (aggregate type, id, current version, lowest
    /// parked version).
    fn gaps(&self) -> Result<Vec<(String, String, u64, u64)>, StorageError>;
    /// Unpublished events.
    fn outbox_len(&self) -> Result<u64, StorageError>;
    /// Every table with its row count.
    fn table_sizes(&self) -> Result<Vec<(String, u64)>, StorageError>;
}

impl<K: ContextKind> ContextDb for ContextFile<K> {
    fn context(&self) -> &'static str {
        K::NAME
    }

    fn engine_stats(&self) -> Result<EngineStats, StorageError> {
        engine::stats(&self.db)
    }

    fn table_sizes(&self) -> Result<Vec<(String, u64)>, StorageError> {
        engine::table_sizes(&self.db)
    }

    fn inbox(&self, limit: usize) -> Result<Vec<(EventId, u64)>, StorageError> {
        engine::inbox_entries(&self.db, limit)
    }

    fn checkpoint(&self, consumer: &str) -> Result<u64, StorageError> {
        engine::checkpoint(&self.db, consumer)
    }

    fn checkpoint_entry(&self, consumer: &str) -> Result<Option<u64>, StorageError> {
        engine::checkpoint_entry(&self.db, consumer)
    }

    fn gaps(&self) -> Result<Vec<(String, String, u64, u64)>, StorageError> {
        engine::gaps(&self.db)
    }

    fn outbox_len(&self) -> Result<u64, StorageError> {
        outbox::len(&self.db)
    }
}

/// Starts writing a file's dirty pages to disk, without waiting for it. A rebuild's scratch file
/// commits without fsync, so the kernel would otherwise hold its writes and flush them in bursts
/// of hundreds of MB (at its 30 s expiry, or at the next sync), and every fsync on the same disk
/// waits behind a burst: `carrier bench --scale` saw a 4 KiB fsync of an unrelated file take up
/// to 123 ms during rebuilds, and commands (each one fsync) stall as long. Started after every
/// batch, the writes go out as they are made.
#[allow(unsafe_code)]
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range takes a file descriptor this function borrows for the call
        // and plain integers; SYNC_FILE_RANGE_WRITE only starts writeback and changes no data.
        // A failure (a file system without it, say) only leaves the writeback to the kernel.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}
