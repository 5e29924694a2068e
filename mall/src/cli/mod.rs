//! The mall's own subcommands, composed into the `carrier` binary: [`demo`] (the order story,
//! every cache checked), [`bench`] (Carrier's hot paths against the raw limit, on the mall's
//! stores and baskets) and [`scale`] (`carrier run` at a million products).

mod baselines;
pub mod bench;
pub mod demo;
pub mod scale;
