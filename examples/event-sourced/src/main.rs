//! `event-sourced`: Carrier's command line for this crate's contexts.

fn main() -> std::process::ExitCode {
    carrier::main(carrier_example_event_sourced::contexts())
}
