//! Carrier: event-carried state transfer between bounded contexts, on NATS JetStream and redb.
//!
//! Services that own data publish domain events; other bounded contexts keep local caches and
//! read models of them, fed by durable consumers, applying each event once. A context is
//! declared once, and everything else (its actors, streams, durables, dead letters, dashboard,
//! metrics, command line and AsyncAPI document) is derived from the declaration:
//!
//! ```no_run
//! use carrier::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, carrier::schemars::JsonSchema)]
//! # pub struct ItemListed { pub id: String }
//! # impl Validate for ItemListed {}
//! # domain_events! {
//! #     /// The catalogue's events.
//! #     enum CatalogEvent, context "catalog", stream "CATALOG", subjects "catalog.>";
//! #     ItemListed => "item", "catalog.item.listed";
//! # }
//! # struct Shelf;
//! # impl ContextKind for Shelf { const NAME: &'static str = "shelf"; type Event = NoEvents; }
//! # impl Reacts<CatalogEvent> for Shelf {
//! #     type Tables<'txn> = ();
//! #     fn open<'txn>(_: &'txn WriteTransaction) -> Result<(), StorageError> { Ok(()) }
//! #     fn react(_: &mut (), _: &mut Emitter<'_, NoEvents>, _: &Envelope, _: &CatalogEvent) -> Result<(), ReactError> { Ok(()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     carrier::main(vec![BoundedContext::of::<Shelf>().consume::<CatalogEvent>().build()])
//! }
//! ```
//!
//! - [`prelude`]: the names a context of your own is written with: declare it
//!   ([`BoundedContext`](prelude::BoundedContext)), its events
//!   ([`domain_events!`](prelude::domain_events), [`Validate`](prelude::Validate)), what it keeps
//!   ([`ContextKind`](prelude::ContextKind), [`Rows`](prelude::Rows)), decides
//!   ([`Decides`](prelude::Decides)), reacts to ([`Reacts`](prelude::Reacts)), caches
//!   ([`Adopts`](prelude::Adopts)) and handles ([`HandlerError`](prelude::HandlerError)).
//! - [`main`] and [`main_with`]: your binary's command line (`run`, `command`, `query`,
//!   `publish`, `inspect`, `dlq`, `status`, `rebuild`, `consumer`, `asyncapi`, `config`) and
//!   dashboard, named after it.
//! - [`messages`], [`storage`], [`actors`], [`cli`]: the crates behind it, for what the prelude
//!   leaves out (the wire framings, the engine's protocol, the runtime's parts, the event store).
//!
//! Your crate also depends on `serde` and `schemars` for the derives of its own types
//! (`carrier::schemars` is the same crate Carrier uses).

pub use carrier_actors as actors;
pub use carrier_cli as cli;
pub use carrier_messages as messages;
pub use carrier_storage as storage;

pub use carrier_cli::{main, main_with};
/// The schema derive Carrier's AsyncAPI document reads (`#[derive(JsonSchema)]`).
pub use carrier_messages::schemars;

/// What a context of your own is written with; `use carrier::prelude::*;`.
pub mod prelude {
    pub use carrier_actors::{Aggregate, EventStore};
    pub use carrier_actors::{BoundedContext, CarrierSystem, ContextHandle, Position, SystemConfig};
    pub use carrier_actors::{EventBus, HandlerError};
    pub use carrier_messages::Entity;
    pub use carrier_messages::{
        check, domain_events, Causality, Decoded, DomainEvent, Envelope, Found, NoEvents, QueryReply, Validate,
        ValidationError,
    };
    pub use carrier_storage::{
        Adopts, CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, ReactError, Reacts, ReadTransaction,
        Resyncs, Rows, RowsMut, StorageError, WriteTransaction,
    };
}
