//! exo-p2p's node: the libp2p mesh, the shard host, the ring driver and the commands of the
//! `exo-p2p` binary.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod driver;
pub mod files;
pub mod identity;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod models;
pub mod network;
pub mod node;
pub mod private_swarm;
pub mod stage;
pub mod sysinfo;
pub mod threads;

// The modules' old top-level paths, while code written against them is merged.
pub use commands::{bench, perplexity, relay, run, serve};
pub use driver::{generate, local, ring};
pub use mesh::topology;
pub use stage::host;
