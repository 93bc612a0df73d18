//! What this node knows of the mesh: every node's latest capability record, how we are
//! connected to it, and the ring a request for a model would use now.

use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use exo_protocol::{
    partition, CapabilityRecord, FileOffer, LoadedShard, ModelOffer, NodeId, PartitionError, Plan,
    RingNode,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error(
        "not enough memory for {model}: its weights need {} MiB, the {nodes} node(s) serving it offer {} MiB",
        need >> 20,
        have >> 20
    )]
    NotEnoughMemory {
        model: String,
        nodes: usize,
        need: u64,
        have: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// This node.
    Local,
    /// A direct TCP or QUIC connection.
    Direct,
    /// Only through a relay.
    Relayed,
    /// Known through gossip, not connected.
    None,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Local => "self",
            Connection::Direct => "direct",
            Connection::Relayed => "relayed",
            Connection::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub record: CapabilityRecord,
    pub seen: Instant,
    pub connection: Connection,
}

#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub local: NodeId,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
}

impl Topology {
    pub fn new(local: impl Into<NodeId>) -> Self {
        Self {
            local: local.into(),
            nodes: BTreeMap::new(),
        }
    }

    /// Stores a record; returns true when the node is new.
    pub fn upsert(&mut self, record: CapabilityRecord, connection: Connection) -> bool {
        let now = Instant::now();
        match self.nodes.get_mut(&record.peer_id) {
            Some(e) => {
                if record.seq >= e.record.seq {
                    e.record = record;
                }
                e.seen = now;
                if e.connection != Connection::Local {
                    e.connection = connection;
                }
                false
            }
            None => {
                self.nodes.insert(
                    record.peer_id.clone(),
                    NodeEntry {
                        record,
                        seen: now,
                        connection,
                    },
                );
                true
            }
        }
    }

    pub fn set_connection(&mut self, peer: &str, connection: Connection) {
        if let Some(e) = self.nodes.get_mut(peer) {
            if e.connection != Connection::Local {
                e.connection = connection;
            }
        }
    }

    pub fn remove(&mut self, peer: &str) -> bool {
        self.local != *peer && self.nodes.remove(peer).is_some()
    }

    /// Drops remote records not refreshed within `ttl`; returns the peers removed.
    pub fn expire(&mut self, ttl: std::time::Duration) -> Vec<NodeId> {
        let local = self.local.clone();
        let stale: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(p, e)| **p != local && e.seen.elapsed() > ttl)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &stale {
            self.nodes.remove(p);
        }
        stale
    }

    /// Nodes that can serve `model`.
    pub fn serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a NodeEntry> + 'a {
        self.nodes.values().filter(move |e| e.record.serves(model))
    }

    pub fn offer(&self, model: &str) -> Option<&ModelOffer> {
        self.nodes
            .values()
            .flat_map(|e| e.record.models.iter())
            .find(|m| m.id == model)
    }

    /// Every model some node serves, with its description.
    pub fn models(&self) -> BTreeMap<String, ModelOffer> {
        let mut out = BTreeMap::new();
        for e in self.nodes.values() {
            for m in &e.record.models {
                out.entry(m.id.clone()).or_insert_with(|| m.clone());
            }
        }
        out
    }

    /// The ring a request for `model` would use now: every node serving it, weighted by memory.
    pub fn plan(&self, model: &str) -> Result<Plan, PlanError> {
        self.plan_excluding(model, &HashSet::new())
    }

    /// The ring without the nodes in `exclude` (lost mid-request). Each node must have the
    /// memory for its share of the weights.
    pub fn plan_excluding(
        &self,
        model: &str,
        exclude: &HashSet<NodeId>,
    ) -> Result<Plan, PlanError> {
        let offer = self
            .offer(model)
            .ok_or_else(|| PartitionError::NoNodes(model.to_string()))?;
        let nodes: Vec<RingNode> = self
            .serving(model)
            .filter(|e| !exclude.contains(&e.record.peer_id))
            .map(|e| RingNode {
                peer: e.record.peer_id.clone(),
                memory: e.record.memory_total,
            })
            .collect();
        let plan = partition(model, offer.n_layers, &nodes)?;
        for stage in &plan.stages {
            let need = offer.shard_bytes(&stage.layers);
            let have = nodes
                .iter()
                .find(|n| n.peer == stage.peer)
                .map_or(0, |n| n.memory);
            if need > have {
                return Err(PlanError::NotEnoughMemory {
                    model: model.to_string(),
                    nodes: nodes.len(),
                    need: offer.bytes,
                    have: nodes.iter().map(|n| n.memory).sum(),
                });
            }
        }
        Ok(plan)
    }

    /// `GET /v1/topology`: this node, every node it knows, and the ring each model would use.
    pub fn view(&self) -> TopologyView<'_> {
        let nodes = self
            .nodes
            .values()
            .map(|e| {
                let r = &e.record;
                NodeView {
                    peer_id: &r.peer_id,
                    addrs: &r.addrs,
                    memory_total: r.memory_total,
                    memory_available: r.memory_available,
                    compute_score: r.compute_score,
                    cpu: &r.cpu,
                    gpu: r.gpu.as_deref(),
                    models: r
                        .models
                        .iter()
                        .map(|m| ModelView {
                            id: &m.id,
                            n_layers: m.n_layers,
                            bytes: m.bytes,
                            arch: &m.arch,
                        })
                        .collect(),
                    loaded: &r.loaded,
                    files: &r.files,
                    api_port: r.api_port,
                    version: &r.software,
                    connection: e.connection.as_str(),
                    last_seen_ms: e.seen.elapsed().as_millis() as u64,
                }
            })
            .collect();
        let rings = self
            .models()
            .into_keys()
            .filter_map(|m| {
                let plan = self.plan(&m).ok()?;
                let stages = plan
                    .stages
                    .into_iter()
                    .map(|s| RingStageView {
                        peer_id: s.peer,
                        start: s.layers.start,
                        end: s.layers.end,
                    })
                    .collect();
                Some((m, stages))
            })
            .collect();
        TopologyView {
            peer_id: &self.local,
            nodes,
            rings,
        }
    }
}

/// The body of `GET /v1/topology`.
#[derive(Debug, Serialize)]
pub struct TopologyView<'a> {
    /// This node.
    pub peer_id: &'a NodeId,
    pub nodes: Vec<NodeView<'a>>,
    /// The ring a request for each model would use now.
    pub rings: BTreeMap<String, Vec<RingStageView>>,
}

#[derive(Debug, Serialize)]
pub struct NodeView<'a> {
    pub peer_id: &'a NodeId,
    pub addrs: &'a [String],
    pub memory_total: u64,
    pub memory_available: u64,
    pub compute_score: f32,
    pub cpu: &'a str,
    pub gpu: Option<&'a str>,
    pub models: Vec<ModelView<'a>>,
    pub loaded: &'a [LoadedShard],
    pub files: &'a [FileOffer],
    pub api_port: Option<u16>,
    /// The node's software version.
    pub version: &'a str,
    /// `self`, `direct`, `relayed` or `none`.
    pub connection: &'static str,
    pub last_seen_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelView<'a> {
    pub id: &'a str,
    pub n_layers: u32,
    pub bytes: u64,
    pub arch: &'a str,
}

#[derive(Debug, Serialize)]
pub struct RingStageView {
    pub peer_id: NodeId,
    pub start: u32,
    pub end: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: &str, mem: u64, models: &[&str]) -> CapabilityRecord {
        let mut r = CapabilityRecord::new(peer);
        r.memory_total = mem;
        r.models = models
            .iter()
            .map(|m| ModelOffer {
                id: m.to_string(),
                n_layers: 24,
                bytes: 1,
                arch: "qwen2".into(),
                layer_bytes: vec![],
            })
            .collect();
        r
    }

    #[test]
    fn plan_covers_nodes_serving_the_model() {
        let mut t = Topology::new("a");
        t.upsert(record("a", 8, &["m"]), Connection::Local);
        t.upsert(record("b", 8, &["m"]), Connection::Direct);
        t.upsert(record("c", 8, &["other"]), Connection::Direct);
        let plan = t.plan("m").unwrap();
        assert_eq!(plan.stages.len(), 2);
        assert!(t.plan("missing").is_err());
        let without_b = t
            .plan_excluding("m", &HashSet::from([NodeId::new("b")]))
            .unwrap();
        assert_eq!(without_b.stages.len(), 1);
        let json = serde_json::to_value(t.view()).unwrap();
        assert_eq!(json["rings"]["m"][1]["end"], 24);
        assert_eq!(json["nodes"].as_array().unwrap().len(), 3);
        // The shape the web page and users' scripts read.
        assert_eq!(json["peer_id"], "a");
        assert_eq!(json["rings"]["m"][0]["peer_id"], "a");
        let a = &json["nodes"][0];
        assert_eq!(
            (&a["peer_id"], &a["connection"]),
            (&"a".into(), &"self".into())
        );
        assert_eq!(a["models"][0]["id"], "m");
        assert_eq!(a["models"][0]["n_layers"], 24);
        assert!(a["models"][0].get("layer_bytes").is_none());
        for key in [
            "addrs",
            "memory_total",
            "loaded",
            "files",
            "api_port",
            "version",
            "last_seen_ms",
        ] {
            assert!(a.get(key).is_some(), "{key} missing from {a}");
        }
    }

    #[test]
    fn plans_that_do_not_fit_in_memory_are_refused() {
        let mut t = Topology::new("a");
        let mut a = record("a", 100, &["m"]);
        a.models[0].bytes = 150;
        t.upsert(a, Connection::Local);
        t.upsert(record("b", 100, &["m"]), Connection::Direct);
        assert!(t.plan("m").is_ok());
        let err = t
            .plan_excluding("m", &HashSet::from([NodeId::new("b")]))
            .unwrap_err();
        assert!(err.to_string().contains("not enough memory"), "{err}");
    }

    #[test]
    fn stale_records_expire_but_not_our_own() {
        let mut t = Topology::new("a");
        t.upsert(record("a", 8, &["m"]), Connection::Local);
        t.upsert(record("b", 8, &["m"]), Connection::Direct);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let gone = t.expire(std::time::Duration::from_millis(10));
        assert_eq!(gone, ["b"]);
        assert!(t.nodes.contains_key("a"));
    }

    #[test]
    fn older_records_do_not_replace_newer_ones() {
        let mut t = Topology::new("a");
        let mut r = record("b", 8, &["m"]);
        r.seq = 5;
        t.upsert(r.clone(), Connection::Direct);
        r.seq = 3;
        r.memory_total = 1;
        t.upsert(r, Connection::Direct);
        assert_eq!(t.nodes["b"].record.memory_total, 8);
    }
}
