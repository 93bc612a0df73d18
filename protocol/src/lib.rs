//! Wire types shared by every exo-p2p node.
//!
//! Everything that crosses the network is a CBOR value (cbor4ii + serde) carrying an explicit
//! version, decoded with a size limit. Tensors travel as raw little-endian bytes with dtype and
//! shape, never float by float. [`chat`] holds the chat vocabulary the API, node and engine
//! share.

pub mod activation;
pub mod capability;
pub mod chat;
pub mod codec;
pub mod files;
pub mod node_id;
pub mod partition;
pub mod shard;

pub use activation::{
    ActivationRequest, ActivationResponse, ErrorKind, FrameError, Outcome, Payload, RequestKey,
    SamplingParams, TensorDType, TensorFrame, TokenMask, TokenOut, MAX_FRAME_BYTES,
};
pub use capability::{CapabilityRecord, FileOffer, LoadedShard, ModelOffer};
pub use chat::{ChatMessage, ToolCall};
pub use codec::{decode, encode, CodecError};
pub use files::{
    FileRequest, FileRequestBody, FileResponse, FileResponseBody, LfsPointer, ListedFile,
    RepoListing, MAX_CHUNK_BYTES,
};
pub use node_id::NodeId;
pub use partition::{partition, PartitionError, RingNode};
pub use shard::{LayerRange, Plan, PlanError, Stage};

/// Version of every message type defined in this crate. A peer speaking another version is
/// rejected with [`CodecError::Version`] instead of being misread.
pub const PROTOCOL_VERSION: u16 = 1;
