//! Carrier's actors: one supervised ractor group per bounded context, and the JetStream bus.
//!
//! What a user needs:
//! - [`BoundedContext`] ([`context`]): a context declared once; a list of them is the system.
//! - [`CarrierSystem`] and [`SystemConfig`] ([`system`]): start the list, find a running
//!   context's [`ContextHandle`] by type, watch its [`Health`], shut it down.
//! - [`ContextHandle`] ([`cache`]): execute commands on a context's writer, read its file,
//!   look up cached entities.
//!
//! The machinery, for reading the code:
//! - [`cache`]: the writer actor (the only writer of a context's file), the handle, the builder
//!   that assembles a context's supervisor, and cache rebuilds.
//! - [`consumer`]: the durable consumer actor that feeds the writer in batches; [`bus`]: the
//!   only module that touches `async-nats`; `relay`: the outbox relay.
//! - [`commands`], [`responder`]: commands and queries over request/reply.
//! - [`fallback`]: asking an owner for what a cache lacks, with timeout, breaker and negative
//!   cache; [`resync`]: replacing a cache wholesale with its owner's snapshot (a full sync).
//! - [`supervisor`]: the restarting [`Supervisor`](supervisor::Supervisor) and the shared
//!   [`SupervisionTree`](supervisor::SupervisionTree).
//! - [`observe`], [`metrics`], [`telemetry`]: what operators see; [`rebuild`]: rebuild progress.
//! - [`flow`]: the MallBots-style flow log; [`faults`]: failure injection for drills;
//!   [`nats_server`]: a local `nats-server` child process.
//!
//! The mall (seed 001) is a user of this crate, in `carrier-mall`: the machinery here knows no
//! context by name.

pub mod bus;
pub mod cache;
pub mod commands;
pub mod consumer;
pub mod context;
pub mod event_bus;
pub mod event_store;
pub mod fallback;
pub mod faults;
pub mod fence;
pub mod flow;
pub mod handlers;
pub mod instance;
pub mod metrics;
pub mod nats_options;
pub mod nats_server;
pub mod observe;
pub mod offsets;
pub mod rebuild;
mod relay;
pub mod responder;
pub mod resync;
mod serve;
pub mod standby;
mod start_error;
pub mod supervisor;
pub mod system;
pub mod telemetry;

pub use cache::{ContextHandle, ExecuteError};
pub use context::{BoundedContext, SourceStream, UnknownContext};
pub use event_store::{Position, PositionWait};
pub use nats_options::NatsOptions;
pub use system::{CarrierSystem, Health, StartError, SystemConfig};
