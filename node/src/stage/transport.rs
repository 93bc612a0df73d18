//! How a driver reaches the stages of a plan. The shard host is the real transport (its own
//! stages in this process, the others over the network); the ring driver's tests script one to
//! exercise recovery without a swarm.

use async_trait::async_trait;
use exo_protocol::{ActivationRequest, ActivationResponse, NodeId};

#[async_trait]
pub trait StageTransport: Send + Sync {
    /// This node's peer id, as plans name it.
    fn local(&self) -> NodeId;
    /// Sends a frame to the stage it names and returns the ring's answer (an error naming the
    /// peer when that stage, or one after it, cannot be reached).
    async fn send(&self, req: ActivationRequest) -> ActivationResponse;
}
