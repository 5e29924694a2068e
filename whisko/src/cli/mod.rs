//! Seed 004's Whisko's subcommands, composed into the `carrier` binary: `carrier whisko` runs its contexts, its event bus
//! and its HTTP API in one process; `carrier demo --story whisko` tells its story;
//! `carrier bench --whisko` measures its write path and aggregate loads. The contexts, the bus's
//! handlers and the HTTP API live beside, in this crate, built on Carrier's public API; this is only
//! their process.

pub mod bench;
pub mod demo;
pub mod serve;
