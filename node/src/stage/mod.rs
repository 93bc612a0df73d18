//! The stage side of a ring: this node's shards, answering the activation frames addressed to it,
//! and the transport a driver sends its frames through.

pub mod host;
pub mod transport;
