//! `carrier-chaos`: the chaos checker's binary. `carrier-chaos check --seed 7` runs one seeded
//! run and prints one line; every other subcommand is Carrier's, for the workload's `tally`
//! read model (`carrier-chaos run --contexts tally` is what the checker starts as instances).

use std::process::ExitCode;

/// The checker, beside Carrier's own subcommands.
#[derive(clap::Subcommand)]
enum ChaosCommand {
    /// One run: publish the seed's events, inject its faults, count every event on every
    /// instance and on the stream, print one line (PASS or FAIL) and exit non-zero on FAIL.
    Check(carrier_chaos::Plan),
}

fn main() -> ExitCode {
    carrier::main_with(carrier_chaos::contexts(), |command: ChaosCommand, _app| {
        Box::pin(async move {
            let ChaosCommand::Check(plan) = command;
            let program = std::env::current_exe()?;
            let report = carrier_chaos::run(&plan, &program).await?;
            println!("{report}");
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        })
    })
}
