//! Carrier's storage: one redb file per bounded context, written by that context's actor alone.
//!
//! Everything here is synchronous; actors call it from `spawn_blocking`.
//!
//! - [`engine`]: what every consuming context shares: the inbox of applied event ids, the last
//!   applied version of each entity, events parked until the version before them arrives, and the
//!   consumer checkpoints. [`engine::apply_batch`] applies a delivered batch in one transaction.
//! - [`baskets`]: the baskets context's caches of stores and products ([`BasketsDb`]).
//! - [`StoresCacheDb`]: what every cache of the stores context's data offers its actor.
//! - [`depot`]: the depot context's caches of stores and products ([`DepotDb`]).
//! - [`customers`]: the customers context's own state ([`CustomersDb`]).
//! - [`stores`]: the stores context's own state and its outbox ([`StoresDb`]).
//! - [`outbox`]: the outbox table any owning context writes in the same transaction as its state.
//!
//! `docs/storage.md` describes the tables and the dedup protocol.

mod error;
mod rows;

pub mod baskets;
pub mod cache;
pub mod customers;
pub mod depot;
pub mod engine;
pub mod outbox;
pub mod owner;
pub mod stores;

pub use baskets::BasketsDb;
pub use cache::{CacheKind, StoresCacheDb, StoresCacheFile};
pub use customers::CustomersDb;
pub use depot::DepotDb;
pub use engine::{Adopted, BatchOutcome, Disposition, Inbound, Projection};
pub use error::StorageError;
pub use owner::{CommandError, OwnerFile, OwnerKind};
pub use stores::StoresDb;
