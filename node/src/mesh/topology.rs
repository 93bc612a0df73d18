//! What this node knows of the mesh: every node's latest capability record, how we are
//! connected to it, and the ring a request for a model would use now.

use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use exo_protocol::{partition, CapabilityRecord, ModelOffer, PartitionError, Plan, RingNode};
use serde_json::json;

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
    pub local: String,
    pub nodes: BTreeMap<String, NodeEntry>,
}

impl Topology {
    pub fn new(local: String) -> Self {
        Self {
            local,
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
        peer != self.local && self.nodes.remove(peer).is_some()
    }

    /// Drops remote records not refreshed within `ttl`; returns the peers removed.
    pub fn expire(&mut self, ttl: std::time::Duration) -> Vec<String> {
        let local = self.local.clone();
        let stale: Vec<String> = self
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
        exclude: &HashSet<String>,
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

    /// `GET /v1/topology`.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .values()
            .map(|e| {
                let r = &e.record;
                json!({
                    "peer_id": r.peer_id,
                    "addrs": r.addrs,
                    "memory_total": r.memory_total,
                    "memory_available": r.memory_available,
                    "compute_score": r.compute_score,
                    "cpu": r.cpu,
                    "gpu": r.gpu,
                    "models": r.models.iter().map(|m| json!({
                        "id": m.id, "n_layers": m.n_layers, "bytes": m.bytes, "arch": m.arch,
                    })).collect::<Vec<_>>(),
                    "loaded": r.loaded.iter().map(|l| json!({
                        "model": l.model,
                        "layers": {"start": l.layers.start, "end": l.layers.end, "n_layers": l.layers.n_layers},
                    })).collect::<Vec<_>>(),
                    "files": r.files.iter().map(|f| json!({
                        "repo": f.repo, "file": f.file, "size": f.size, "sha256": f.sha256,
                    })).collect::<Vec<_>>(),
                    "api_port": r.api_port,
                    "version": r.software,
                    "connection": e.connection.as_str(),
                    "last_seen_ms": e.seen.elapsed().as_millis() as u64,
                })
            })
            .collect();
        let rings: serde_json::Map<String, serde_json::Value> = self
            .models()
            .keys()
            .filter_map(|m| {
                let plan = self.plan(m).ok()?;
                let stages: Vec<_> = plan
                    .stages
                    .iter()
                    .map(|s| json!({"peer_id": s.peer, "start": s.layers.start, "end": s.layers.end}))
                    .collect();
                Some((m.clone(), json!(stages)))
            })
            .collect();
        json!({"peer_id": self.local, "nodes": nodes, "rings": rings})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: &str, mem: u64, models: &[&str]) -> CapabilityRecord {
        let mut r = CapabilityRecord::new(peer.into());
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
        let mut t = Topology::new("a".into());
        t.upsert(record("a", 8, &["m"]), Connection::Local);
        t.upsert(record("b", 8, &["m"]), Connection::Direct);
        t.upsert(record("c", 8, &["other"]), Connection::Direct);
        let plan = t.plan("m").unwrap();
        assert_eq!(plan.stages.len(), 2);
        assert!(t.plan("missing").is_err());
        let without_b = t
            .plan_excluding("m", &HashSet::from(["b".to_string()]))
            .unwrap();
        assert_eq!(without_b.stages.len(), 1);
        let json = t.to_json();
        assert_eq!(json["rings"]["m"][1]["end"], 24);
        assert_eq!(json["nodes"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn plans_that_do_not_fit_in_memory_are_refused() {
        let mut t = Topology::new("a".into());
        let mut a = record("a", 100, &["m"]);
        a.models[0].bytes = 150;
        t.upsert(a, Connection::Local);
        t.upsert(record("b", 100, &["m"]), Connection::Direct);
        assert!(t.plan("m").is_ok());
        let err = t
            .plan_excluding("m", &HashSet::from(["b".to_string()]))
            .unwrap_err();
        assert!(err.to_string().contains("not enough memory"), "{err}");
    }

    #[test]
    fn stale_records_expire_but_not_our_own() {
        let mut t = Topology::new("a".into());
        t.upsert(record("a", 8, &["m"]), Connection::Local);
        t.upsert(record("b", 8, &["m"]), Connection::Direct);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let gone = t.expire(std::time::Duration::from_millis(10));
        assert_eq!(gone, ["b"]);
        assert!(t.nodes.contains_key("a"));
    }

    #[test]
    fn older_records_do_not_replace_newer_ones() {
        let mut t = Topology::new("a".into());
        let mut r = record("b", 8, &["m"]);
        r.seq = 5;
        t.upsert(r.clone(), Connection::Direct);
        r.seq = 3;
        r.memory_total = 1;
        t.upsert(r, Connection::Direct);
        assert_eq!(t.nodes["b"].record.memory_total, 8);
    }
}
