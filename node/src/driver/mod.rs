//! The driving side of a request: the generation loop and the steppers it runs over (a ring of
//! shards in this process, or the mesh's ring with recovery).

pub mod generate;
pub mod local;
pub mod ring;
