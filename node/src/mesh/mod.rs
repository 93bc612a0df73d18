//! What this node knows of the mesh: the nodes' capability records and the rings they form.

pub mod topology;
