//! `carrier`: the MallBots mall's eight contexts on Carrier's command line, plus the mall's own
//! `demo` (the order story, every cache checked) and `bench` (the cache path against the raw
//! consume loop).
//!
//! A binary of a user's own contexts is the same few lines with its own list (see
//! `examples/inventory`).

mod mall;

use std::process::ExitCode;

/// The mall's subcommands beside Carrier's own.
#[derive(clap::Subcommand)]
enum MallCommand {
    /// Run the single-node demo: every context, the order story, and every cache checked.
    Demo(mall::demo::DemoArgs),
    /// Measure the cache path against a raw consume-and-ack loop over the same messages.
    Bench(mall::bench::BenchArgs),
}

fn main() -> ExitCode {
    carrier_cli::main_with(carrier_mall::contexts(), |command: MallCommand, app| {
        Box::pin(async move {
            match command {
                MallCommand::Demo(args) => mall::demo::main(args, app).await,
                MallCommand::Bench(args) => mall::bench::main(args).await,
            }
        })
    })
}
