//! Carrier's actors: one supervised ractor group per bounded context, and the JetStream bus.
//!
//! Its modules are private (but [`metrics`] and [`telemetry`], two namespaces); everything else
//! is named from the root.
//!
//! What a user needs:
//! - [`BoundedContext`]: a context declared once ([`ContextDecl`], [`AggregateDecl`],
//!   [`HandlersDecl`]); a list of them is the system ([`BoundedContext::select`],
//!   [`BoundedContext::asyncapi`]).
//! - [`CarrierSystem`] and [`SystemConfig`]: start the list, find a running context's
//!   [`ContextHandle`] by type, watch its [`Health`], shut it down.
//! - [`ContextHandle`]: execute commands on a context's writer ([`ExecuteError`]), read its
//!   file, look up cached entities ([`LookupError`]; a miss asks the owner's [`Fallback`]).
//! - [`Aggregate`] and [`EventStore`]: event-sourced contexts, and the [`Position`] a command's
//!   event was published at, which a query can wait for ([`PositionWait`]).
//! - [`EventBus`] and [`HandlerError`]: handlers run for events, exactly once for what they
//!   write in the bus's file.
//!
//! What the command line and operators use:
//! - [`Bus`]: the only part that touches `async-nats` ([`Delivery`], [`DeadLetter`],
//!   [`dead_letter_stream`], [`dead_letter_header`]).
//! - [`Observer`] and its [`Snapshot`]: what the dashboard and `status` show, and the actions
//!   they take ([`Reposition`], [`ActionError`]); [`RebuildProgress`]; [`ResyncError`].
//! - [`LocalNatsServer`]: a local `nats-server` child process; [`Faults`]: failure injection
//!   for drills; [`instance_id`]: the identity of a data directory.
//!
//! Inside (read the code in this order): `context/` (the declaration, its assembly, the writer
//! actor that alone writes a context's file, the port consumers hand batches through, and the
//! handle) → `consumer` (the durable consumer feeding the writer in batches) → `bus` → `relay`
//! (the outbox relay) → `commands`, `serve`
//! and `responder` (request/reply) → `fallback` and `resync` (asking an owner) → `fence`,
//! `instance` and `standby` (leases and takeover) → `supervisor` (restarts) → `observe`.
//!
//! The mall (seed 001) is a user of this crate, in `carrier-mall`: the machinery here knows no
//! context by name.

mod bus;
mod commands;
mod consumer;
mod context;
mod event_bus;
mod event_store;
mod fallback;
mod faults;
mod fence;
mod flow;
mod handlers;
mod instance;
pub mod metrics;
mod nats_options;
mod nats_server;
mod observe;
mod offsets;
mod rebuild;
mod relay;
mod responder;
mod resync;
mod serve;
mod standby;
mod start_error;
mod supervisor;
mod system;
pub mod telemetry;

// Declaring contexts and running them.
pub use context::{AggregateDecl, BoundedContext, ContextDecl, SourceStream, UnknownContext};
pub use context::{CacheSettings, ContextHandle, ExecuteError, InboxRetention, LookupError, Prefetches};
pub use handlers::HandlersDecl;
pub use nats_options::NatsOptions;
pub use start_error::StartError;
pub use system::{CarrierSystem, SystemConfig};

// Event sourcing: aggregates on their own subjects, positions to read one's writes at.
pub use event_store::{
    Aggregate, EventStore, EventStoreSettings, EventStoreStats, LoadError, Loaded, Position, PositionWait,
};

// The event bus: handlers run for events, exactly once for what they write.
pub use event_bus::{EventBus, EventBusError, EventBusSettings, HandlerError};

// NATS: the one place that touches async-nats, and its dead letters.
pub use bus::{dead_letter_header, dead_letter_stream, Bus, BusError, DeadLetter, Delivery};

// What operators see and do.
pub use commands::command_reply;
pub use consumer::ConsumerStats;
pub use context::instance_durable_name;
pub use fallback::{BreakerState, Fallback, FallbackError, FallbackStats};
pub use faults::{FaultSpecError, Faults};
pub use fence::LEASE_TTL;
pub use instance::{durable_suffix, instance_id, FENCE_AFTER};
pub use nats_server::{LocalNatsCluster, LocalNatsServer, NatsServerError};
pub use observe::{ActionError, ConsumerReport, Health, Observer, Snapshot};
pub use offsets::{Reposition, RepositionError, SeekTo, MAX_SKIP};
pub use rebuild::{RebuildError, RebuildProgress};
pub use resync::ResyncError;
pub use supervisor::NodeState;
