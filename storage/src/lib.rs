//! Carrier's storage: one redb file per bounded context, written by that context's actor alone.
//!
//! Everything here is synchronous; actors call it from `spawn_blocking`.
//!
//! Its modules are private; everything is named from the root:
//! - **A context** is a [`ContextKind`] (its name and the events it publishes) with its own
//!   [`Rows`] tables. It [`Decides`] commands (or refuses them with a [`CommandError`]),
//!   [`Reacts`] to other contexts' events (or refuses one with a [`ReactError`]), keeps a cache
//!   of another context's entities ([`Adopts`], [`Resyncs`]) and [`Follows`] its own stream on
//!   a standby. What it emits goes through the [`Emitter`] into its outbox, in the transaction
//!   of the change.
//! - **Its file**: [`ContextFile`] for reading, [`FileWriter`] for the one writer; failures are
//!   [`StorageError`]s.
//! - **The engine** shared by every consuming context: the inbox of applied event ids, the last
//!   applied version of each entity, events parked until the version before them arrives, and the
//!   consumer checkpoints. A batch of [`Inbound`] events is applied in one transaction, each with
//!   its [`Disposition`] in the [`BatchOutcome`].
//! - [`Decided`]: a command's answer; a command sent again with the same [`IdempotencyKey`] is
//!   answered with the first one's event.
//! - [`HandlerFile`]: an event bus's record of what its handlers did.
//! - [`CacheSet`], [`SwapCursor`]: rebuilds, swapped in blue/green.
//! - [`dump_tables`]: any file's tables and rows as JSON, opened read-only (`carrier inspect`).
//!
//! `docs/storage.md` describes the tables and the dedup protocol.

mod command;
mod context;
mod engine;
mod error;
mod handlers;
mod idempotency;
mod inspect;
mod outbox;
mod rebuild;
mod rows;

// A context: what it keeps, decides, reacts to and caches, and its file.
pub use command::CommandError;
pub use context::{
    Adopts, ContextDb, ContextFile, ContextKind, Decides, Decision, Emitter, FileWriter, Follows, Reacts, Resyncs,
    DEFAULT_CACHE_BYTES, SCRATCH_SYNC_EVERY,
};
pub use error::{ReactError, RedbResultExt, StorageError};
/// The redb transactions a context's own table code works in, so that it needs no redb
/// dependency of its own.
pub use redb::{ReadTransaction, WriteTransaction};
pub use rows::{Rows, RowsMut};

// The engine: applying batches of events exactly once, in version order.
pub use engine::{Adopted, BatchOutcome, Disposition, EngineStats, Inbound, Projection};
// Commands sent again with the same key.
pub use idempotency::{Decided, IdempotencyKey, DEFAULT_RETENTION as IDEMPOTENCY_RETENTION};
// An event bus's file: what its handlers did.
pub use handlers::{HandleFailure, Handled, HandlerFile};
// Rebuilds: a replayed copy of a context's tables, swapped in blue/green.
pub use rebuild::{Behind, CacheSet, SwapCursor, SwapStep, SwappedTable, SWAP_ROWS};
// Any file's tables as JSON, opened read-only (`carrier inspect`).
pub use inspect::{dump as dump_tables, repair as repair_file, FileState, TableDump};
