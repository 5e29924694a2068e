//! The mall's own subcommands.

pub mod bench;
pub mod demo;
pub mod scale;
