//! exo-p2p's node: the libp2p mesh, the shard host, the ring driver and the commands of the
//! `exo-p2p` binary.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod files;
pub mod generate;
pub mod host;
pub mod identity;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod network;
pub mod node;
pub mod perplexity;
pub mod private_swarm;
pub mod relay;
pub mod ring;
pub mod run;
pub mod serve;
pub mod sysinfo;
pub mod threads;
pub mod topology;
