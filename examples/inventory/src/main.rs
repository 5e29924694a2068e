//! `inventory`: Carrier's command line for this crate's contexts.

fn main() -> std::process::ExitCode {
    carrier_cli::main(carrier_example_inventory::contexts())
}
