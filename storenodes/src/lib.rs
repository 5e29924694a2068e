//! Seed 003's store nodes, built on Carrier's public API as a user would build them:
//!
//! - [`central`]: the central inventory, the owner of products and stock. Its commands decide
//!   in one redb transaction with their outbox row and idempotency key; its events go to the
//!   stream `CENTRAL`; [`central::http`] is its HTTP API (`carrier central`).
//! - [`node`]: a store node, one store's local cache of the central inventory: a read model of
//!   `CENTRAL` with gap repair and full sync from the central's snapshot; [`node::http`] is its
//!   HTTP API (`carrier store-node`): reads from the cache, writes proxied to the central.
//! - [`cli`]: its subcommands (`central`, `store-node`, the inventory demo and the store-node
//!   bench), composed into the `carrier` binary.
//! - [`http`]: what the HTTP APIs share (JSON errors naming the field, API keys compared in
//!   constant time, prices as decimal numbers kept in cents).

pub mod central;
pub mod cli;
pub use carrier_http as http;
pub mod node;

/// The contexts of seed 003 a binary declares beside its own, so that its operator tools
/// (`carrier command central ...`, `inspect`, `dlq`, `asyncapi`) know them.
pub fn contexts() -> Vec<carrier_actors::BoundedContext> {
    vec![central::context(), node::context()]
}
