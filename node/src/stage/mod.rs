//! The stage side of a ring: this node's shards, answering the activation frames addressed to it.

pub mod host;
