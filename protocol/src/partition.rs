//! Ring partitioning: contiguous layer ranges weighted by each node's memory.
//!
//! exo's ring-memory-weighted rule: order the nodes by memory (largest first), then by peer id,
//! so every node computes the same ring from the same topology; give each a share of the layers
//! proportional to its memory (largest remainder first, ties in ring order) and at least one layer.

use crate::{
    shard::{LayerRange, Plan, Stage},
    NodeId,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingNode {
    pub peer: NodeId,
    pub memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("no node serves model {0}")]
    NoNodes(String),
    #[error("model {0} has no layers")]
    NoLayers(String),
}

/// Splits `n_layers` layers of `model` over `nodes`. With more nodes than layers, the nodes with
/// the least memory are left out.
pub fn partition(model: &str, n_layers: u32, nodes: &[RingNode]) -> Result<Plan, PartitionError> {
    if nodes.is_empty() {
        return Err(PartitionError::NoNodes(model.to_string()));
    }
    if n_layers == 0 {
        return Err(PartitionError::NoLayers(model.to_string()));
    }
    let mut ring: Vec<&RingNode> = nodes.iter().collect();
    ring.sort_by(|a, b| b.memory.cmp(&a.memory).then_with(|| a.peer.cmp(&b.peer)));
    ring.dedup_by(|a, b| a.peer == b.peer);
    ring.truncate(n_layers as usize);

    let counts = allocate(n_layers, &ring.iter().map(|n| n.memory).collect::<Vec<_>>());
    let mut start = 0;
    let stages = ring
        .iter()
        .zip(counts)
        .map(|(node, count)| {
            let layers = LayerRange::new(start, start + count, n_layers);
            start += count;
            Stage {
                peer: node.peer.clone(),
                layers,
            }
        })
        .collect();
    Ok(Plan {
        model: model.to_string(),
        stages,
    })
}

/// Largest-remainder apportionment of `n` layers by `weights`, every share at least 1.
/// Requires `1 <= weights.len() <= n`.
fn allocate(n: u32, weights: &[u64]) -> Vec<u32> {
    let k = weights.len();
    let total: u128 = weights.iter().map(|&w| w.max(1) as u128).sum();
    // Exact integer arithmetic: quota_i = n * w_i / total, as floor plus remainder.
    let quotas: Vec<(u32, u128)> = weights
        .iter()
        .map(|&w| {
            let num = n as u128 * w.max(1) as u128;
            ((num / total) as u32, num % total)
        })
        .collect();
    let mut counts: Vec<u32> = quotas.iter().map(|q| q.0).collect();
    let left = n - counts.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..k).collect();
    by_remainder.sort_by(|&a, &b| quotas[b].1.cmp(&quotas[a].1).then(a.cmp(&b)));
    for &i in by_remainder.iter().cycle().take(left as usize) {
        counts[i] += 1;
    }
    // Every node gets at least one layer, taken from the node with the most layers.
    for i in 0..k {
        if counts[i] == 0 {
            let donor = (0..k)
                .max_by_key(|&j| (counts[j], std::cmp::Reverse(j)))
                .unwrap();
            counts[donor] -= 1;
            counts[i] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(mems: &[u64]) -> Vec<RingNode> {
        mems.iter()
            .enumerate()
            .map(|(i, &memory)| RingNode {
                peer: format!("peer{i:02}").into(),
                memory,
            })
            .collect()
    }

    #[test]
    fn equal_memory_splits_evenly_in_peer_order() {
        let plan = partition("m", 24, &nodes(&[8, 8, 8])).unwrap();
        let got: Vec<_> = plan
            .stages
            .iter()
            .map(|s| (s.peer.as_str(), s.layers.start, s.layers.end))
            .collect();
        assert_eq!(
            got,
            [("peer00", 0, 8), ("peer01", 8, 16), ("peer02", 16, 24)]
        );
    }

    #[test]
    fn larger_memory_goes_first_and_gets_more() {
        let plan = partition("m", 18, &nodes(&[1 << 30, 2 << 30])).unwrap();
        assert_eq!(plan.stages[0].peer, "peer01");
        assert_eq!(plan.stages[0].layers.len(), 12);
        assert_eq!(plan.stages[1].layers.len(), 6);
    }

    #[test]
    fn tiny_node_still_gets_a_layer() {
        let plan = partition("m", 10, &nodes(&[1000, 1, 1])).unwrap();
        assert!(plan.stages.iter().all(|s| !s.layers.is_empty()));
        plan.validate().unwrap();
    }

    #[test]
    fn more_nodes_than_layers_drops_the_smallest() {
        let plan = partition("m", 2, &nodes(&[5, 9, 7])).unwrap();
        let peers: Vec<_> = plan.stages.iter().map(|s| s.peer.as_str()).collect();
        assert_eq!(peers, ["peer01", "peer02"]);
    }

    #[test]
    fn errors_on_empty_input() {
        assert!(partition("m", 4, &[]).is_err());
        assert!(partition("m", 0, &nodes(&[1])).is_err());
    }

    proptest! {
        #[test]
        fn ranges_are_contiguous_cover_and_proportional(
            n_layers in 1u32..200,
            mems in proptest::collection::vec(1u64..1u64 << 40, 1..12),
        ) {
            let ns = nodes(&mems);
            let plan = partition("m", n_layers, &ns).unwrap();
            prop_assert!(plan.validate().is_ok());
            prop_assert_eq!(plan.stages.len(), mems.len().min(n_layers as usize));
            // Order: memory descending, then peer id.
            let mem_of = |p: &NodeId| ns.iter().find(|n| n.peer == *p).unwrap().memory;
            for w in plan.stages.windows(2) {
                let (a, b) = (mem_of(&w[0].peer), mem_of(&w[1].peer));
                prop_assert!(a > b || (a == b && w[0].peer < w[1].peer));
            }
            let used: Vec<u64> = plan.stages.iter().map(|s| mem_of(&s.peer)).collect();
            let total: f64 = used.iter().map(|&m| m as f64).sum();
            let quotas: Vec<f64> = used.iter().map(|&m| n_layers as f64 * m as f64 / total).collect();
            // When the at-least-one-layer rule does not bind, each share is within one layer
            // of its memory proportion.
            if quotas.iter().all(|&q| q >= 1.0) {
                for (s, q) in plan.stages.iter().zip(&quotas) {
                    prop_assert!((s.layers.len() as f64 - q).abs() < 1.0 + 1e-9,
                        "{} layers for quota {}", s.layers.len(), q);
                }
            }
            // Same input in another order gives the same plan.
            let mut shuffled = ns.clone();
            shuffled.reverse();
            prop_assert_eq!(partition("m", n_layers, &shuffled).unwrap(), plan);
        }
    }
}
