//! Carrier's storage: one redb file per bounded context, written by that context's actor alone.
//!
//! Everything here is synchronous; actors call it from `spawn_blocking`.
//!
//! - [`engine`]: what every consuming context shares: the inbox of applied event ids, the last
//!   applied version of each entity, events parked until the version before them arrives, and the
//!   consumer checkpoints. [`engine::apply_batch`] applies a delivered batch in one transaction.
//! - [`context`]: a consuming context's file ([`ContextFile`]): its tables, the engine's and an
//!   outbox; it [`Reacts`] to other contexts' events and decides its own commands.
//! - [`Rows`]: a typed `id → CBOR` table, what a context's own tables are.
//! - [`command`]: [`CommandError`], why a command was refused.
//! - [`idempotency`]: commands sent again with the same key answered with the first one's event.
//! - [`inspect`]: any file's tables and rows as JSON, opened read-only (`carrier inspect`).
//! - [`outbox`]: the outbox table any owning context writes in the same transaction as its state.
//!
//! `docs/storage.md` describes the tables and the dedup protocol.

mod error;
mod rows;

pub mod command;
pub mod context;
pub mod engine;
pub mod handlers;
pub mod idempotency;
pub mod inspect;
pub mod outbox;
pub mod rebuild;

pub use command::CommandError;
pub use context::{
    Adopts, ContextDb, ContextFile, ContextKind, Decides, Decision, Emitter, FileWriter, Follows, Reacts, Resyncs,
    DEFAULT_CACHE_BYTES,
};
pub use engine::{Adopted, BatchOutcome, Disposition, Inbound, Projection};
pub use error::{ReactError, RedbResultExt, StorageError};
pub use idempotency::{Decided, IdempotencyKey};
/// The redb transactions a context's own table code works in, so that it needs no redb
/// dependency of its own.
pub use redb::{ReadTransaction, WriteTransaction};
pub use rows::{Rows, RowsMut};
