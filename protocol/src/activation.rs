//! Activation frames: what one shard sends the next.
//!
//! The node that takes a request (the driver) sends token ids to the first stage of its plan.
//! Each stage runs its layers and forwards the hidden states to the next stage as a new request,
//! awaiting that stage's reply; the last stage samples and replies with only the token id, which
//! travels back down the chain to the driver. A frame may ask for a token after each of its
//! positions (`logits_from`), and a frame behind a stage's KV cache rolls that cache back to
//! its position first: together they verify speculative drafts and drop the rejected ones.

use serde::{Deserialize, Serialize};

use crate::{shard::Plan, NodeId, PROTOCOL_VERSION};

/// Largest activation frame a node accepts (a 4096-wide f32 hidden state for 4096 prompt
/// tokens is 64 MiB; longer prompts are sent in chunks).
pub const MAX_FRAME_BYTES: usize = 80 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRequest {
    pub v: u16,
    /// Chosen by the driver; with `driver` it names the request's KV cache on every stage.
    pub request_id: u64,
    /// Peer id of the driving node.
    pub driver: NodeId,
    pub plan: Plan,
    /// Index in `plan.stages` of the stage this frame is for.
    pub stage: u32,
    /// Sequence position of the frame's first token. Position 0 starts a fresh KV cache.
    pub position: u32,
    /// Token ids of the positions this frame covers: the first stage embeds them, the last
    /// stage feeds its repetition penalty with them.
    pub tokens: Vec<u32>,
    pub payload: Payload,
    /// Applied by the last stage.
    pub sampling: SamplingParams,
    /// When set, the last stage samples a token after each position from the `i`-th token of
    /// the frame on and replies [`Outcome::Tokens`]: how a driver verifies speculative drafts
    /// in one pass. Unset, it samples after the last position only ([`Outcome::Token`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_from: Option<u32>,
}

impl ActivationRequest {
    pub fn new(
        request_id: u64,
        driver: impl Into<NodeId>,
        plan: Plan,
        position: u32,
        tokens: Vec<u32>,
        payload: Payload,
        sampling: SamplingParams,
    ) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            request_id,
            driver: driver.into(),
            plan,
            stage: 0,
            position,
            tokens,
            payload,
            sampling,
            logits_from: None,
        }
    }

    /// The same request with logits (a sampled token) for every position from `from` on.
    pub fn with_logits_from(mut self, from: Option<u32>) -> Self {
        self.logits_from = from;
        self
    }

    /// The name of this request's state (its KV cache) on every stage.
    pub fn key(&self) -> RequestKey {
        RequestKey {
            driver: self.driver.clone(),
            request_id: self.request_id,
        }
    }

    /// The same request addressed to the next stage, carrying `payload`.
    pub fn next_stage(&self, payload: Payload) -> Self {
        Self {
            stage: self.stage + 1,
            payload,
            ..self.clone()
        }
    }
}

/// A request as every stage knows it: the driver's peer id and the id it chose. Written
/// `driver/request_id`, the form shard runners and logs key requests by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub driver: NodeId,
    pub request_id: u64,
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.driver, self.request_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// The request's `tokens`, for the first stage.
    Tokens,
    /// Hidden states `[batch, seq, hidden]` for a later stage.
    Hidden(TensorFrame),
    /// The request is over: free its KV cache on this stage and pass the release on.
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorDType {
    F32,
    F16,
    BF16,
}

impl TensorDType {
    pub fn size(self) -> usize {
        match self {
            TensorDType::F32 => 4,
            TensorDType::F16 | TensorDType::BF16 => 2,
        }
    }
}

/// A tensor as raw little-endian bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorFrame {
    pub dtype: TensorDType,
    pub shape: Vec<u32>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for TensorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TensorFrame({:?} {:?}, {} bytes)",
            self.dtype,
            self.shape,
            self.data.len()
        )
    }
}

impl TensorFrame {
    /// Checks that the byte length matches dtype and shape (a peer could send anything).
    pub fn validate(&self) -> Result<(), FrameError> {
        let elems = self
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
            .ok_or(FrameError::ShapeOverflow)?;
        let want = elems
            .checked_mul(self.dtype.size())
            .ok_or(FrameError::ShapeOverflow)?;
        if want != self.data.len() {
            return Err(FrameError::Length {
                dtype: self.dtype,
                shape: self.shape.clone(),
                want,
                got: self.data.len(),
            });
        }
        Ok(())
    }
}

/// Why a [`TensorFrame`] cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("tensor shape overflows")]
    ShapeOverflow,
    #[error("tensor {dtype:?} {shape:?} needs {want} bytes, frame has {got}")]
    Length {
        dtype: TensorDType,
        shape: Vec<u32>,
        want: usize,
        got: usize,
    },
}

/// Sampling settings, applied by the last stage of the ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the repetition penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: u32,
    pub seed: u64,
    /// Return the log-probability of each sampled token.
    pub logprobs: bool,
    /// Also return this many most likely alternatives (at most 20).
    pub top_logprobs: u8,
    /// The tokens this step may sample (a grammar's mask computed by the driver); `None`
    /// allows every token. Per step: it is the one field that changes between frames.
    pub allowed: Option<TokenMask>,
}

/// A set of token ids as a little-endian bitset: bit `id % 8` of byte `id / 8`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMask {
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
}

impl TokenMask {
    /// From 32-bit words (bit `id % 32` of word `id / 32`), as grammar engines keep them.
    pub fn from_words(words: &[u32]) -> Self {
        Self {
            bits: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        }
    }

    /// Ids past the mask's end are not allowed.
    pub fn allows(&self, id: u32) -> bool {
        self.bits
            .get((id / 8) as usize)
            .is_some_and(|b| b & (1 << (id % 8)) != 0)
    }

    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }
}

impl std::fmt::Debug for TokenMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenMask({} allowed)", self.count())
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            logprobs: false,
            top_logprobs: 0,
            allowed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }
}

/// A sampled token and, when asked, its log-probability and the top alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: Option<f32>,
    #[serde(default)]
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Malformed frame, wrong stage, position out of sync.
    BadRequest,
    /// The stage could not load its layers (missing model, out of memory).
    Load,
    /// A forward pass failed.
    Compute,
    /// The next peer in the ring could not be reached or did not answer in time.
    Unreachable,
    /// The stage has reached a limit (concurrent requests, KV memory).
    Busy,
    ContextFull,
    /// The stage no longer holds the request's KV cache (it restarted, or the cache expired):
    /// the driver replays the request from position 0.
    CacheMissing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Token(TokenOut),
    /// The token sampled after each position from the frame's `logits_from` on.
    Tokens(Vec<TokenOut>),
    Released,
    Error {
        kind: ErrorKind,
        /// The stage that failed.
        peer: NodeId,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationResponse {
    pub v: u16,
    pub outcome: Outcome,
}

impl ActivationResponse {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            outcome,
        }
    }
    pub fn error(kind: ErrorKind, peer: impl Into<NodeId>, message: impl Into<String>) -> Self {
        Self::new(Outcome::Error {
            kind,
            peer: peer.into(),
            message: message.into(),
        })
    }
}
