//! Seed 003's store nodes' subcommands, composed into the `carrier` binary: `carrier central` runs the central inventory
//! (its context and its HTTP API), `carrier store-node` one store's cache of it and its HTTP API. The contexts and the HTTP APIs live beside, in this crate,
//! built on Carrier's public API; this is only their process: flags, environment, start and stop.

pub mod bench;
pub mod central;
pub mod demo;
pub mod store_node;
