//! Carrier's actors: one supervised ractor group per bounded context, and the JetStream bus.
//!
//! - [`system`]: [`CarrierSystem::start`] builds the whole tree from a [`SystemConfig`].
//! - [`supervisor`]: the restarting [`Supervisor`](supervisor::Supervisor) and the shared
//!   [`SupervisionTree`](supervisor::SupervisionTree) of actor states.
//! - [`consumer`]: the generic consumer actor that feeds a cache actor in batches.
//! - [`stores`]: the stores context (owner and outbox relay).
//! - [`baskets`]: the baskets context (cache and its consumer).
//! - [`bus`]: the only module that touches `async-nats`.
//! - [`nats_server`]: a local `nats-server` child process for the demo and tests.
//! - [`flow`]: the MallBots-style flow log; [`faults`]: failure injection for drills.

pub mod baskets;
pub mod bus;
pub mod cache;
pub mod commands;
pub mod consumer;
pub mod context;
pub mod customers;
pub mod depot;
pub mod fallback;
pub mod faults;
pub mod flow;
pub mod mall;
pub mod metrics;
pub mod nats_server;
pub mod notifications;
pub mod observe;
pub mod ordering;
pub mod payments;
pub mod rebuild;
mod relay;
pub mod responder;
pub mod search;
mod serve;
pub mod stores;
pub mod supervisor;
pub mod system;
pub mod telemetry;
pub mod verify;
pub mod workload;

pub use context::{BoundedContext, SourceStream, UnknownContext};
pub use system::{CarrierSystem, Health, StartError, SystemConfig};
