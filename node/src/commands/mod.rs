//! The `exo-p2p` subcommands, one module each.

pub mod bench;
pub mod perplexity;
pub mod relay;
pub mod run;
pub mod serve;
