//! The driving side of a request: the generation loop and the steppers it runs over (a ring of
//! shards in this process, or the mesh's ring with recovery) and the speculation it may use.

pub mod generate;
pub mod local;
pub mod ring;
pub mod speculate;
