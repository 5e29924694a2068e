//! `inventory`: Carrier's command line for this crate's contexts.

fn main() -> std::process::ExitCode {
    carrier::main(carrier_example_inventory::contexts())
}
