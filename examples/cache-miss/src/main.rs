//! `cache-miss`: Carrier's command line for this crate's contexts.

fn main() -> std::process::ExitCode {
    carrier::main(carrier_example_cache_miss::contexts())
}
