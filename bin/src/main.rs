//! `carrier`: the MallBots mall's eight contexts and seed 003's central inventory on Carrier's
//! command line, plus the mall's own `demo` (the order story, every cache checked) and `bench`
//! (the cache path against the raw consume loop), and `central` (the central inventory with its
//! HTTP API), `store-node`, and `whisko` (seed 004: event-sourced users and payments with
//! their projections, event bus and HTTP API).
//!
//! A binary of a user's own contexts is the same few lines with its own list (see
//! `examples/inventory`).

mod mall;
mod storenodes;
mod whisko;

use std::process::ExitCode;

/// The mall's subcommands beside Carrier's own.
#[derive(clap::Subcommand)]
enum MallCommand {
    /// Run the single-node demo: every context, the order story, and every cache checked.
    Demo(mall::demo::DemoArgs),
    /// Measure the cache path against a raw consume-and-ack loop over the same messages.
    Bench(mall::bench::BenchArgs),
    /// Run seed 003's central inventory: its context (`cmd.central`, `query.central`, the stream
    /// CENTRAL) and its HTTP API.
    Central(storenodes::central::CentralArgs),
    /// Run one of seed 003's store nodes: a local cache of the central inventory, fed by its
    /// stream, with its HTTP API (reads from the cache, writes proxied to the central).
    StoreNode(storenodes::store_node::StoreNodeArgs),
    /// Run seed 004's Whisko: users and payments event-sourced on JetStream (`cmd.users`,
    /// `cmd.billing`), their projections (`query.user_views`, `query.payment_views`), the event
    /// bus's mail handlers, and the HTTP API.
    Whisko(whisko::serve::WhiskoArgs),
}

fn main() -> ExitCode {
    // The mall's eight contexts and seed 003's central inventory (`carrier central` runs it with
    // its HTTP API; `carrier run` runs it bare, on NATS).
    let mut contexts = carrier_mall::contexts();
    contexts.extend(carrier_storenodes::contexts());
    contexts.extend(carrier_whisko::contexts());
    carrier_cli::main_with(contexts, |command: MallCommand, _app| {
        Box::pin(async move {
            match command {
                MallCommand::Demo(args) => mall::demo::main(args).await,
                MallCommand::Bench(args) => mall::bench::main(args).await,
                MallCommand::Central(args) => storenodes::central::main(args).await,
                MallCommand::StoreNode(args) => storenodes::store_node::main(args).await,
                MallCommand::Whisko(args) => whisko::serve::main(args).await,
            }
        })
    })
}
