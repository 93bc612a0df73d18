//! [`NodeId`]: a node as plans, records and frames name it.

use std::{borrow::Borrow, fmt};

use serde::{Deserialize, Serialize};

/// A node's libp2p peer id in its text form (`12D3KooW...`). On the wire it is the plain
/// string it wraps, so records and frames of nodes that predate the type decode unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last six characters: enough to tell a ring's nodes apart in a log line.
    pub fn short(&self) -> &str {
        let cut = self.0.len().saturating_sub(6);
        self.0.get(cut..).unwrap_or(&self.0)
    }

    /// The id in another form, e.g. libp2p's `PeerId`.
    pub fn parse<T: std::str::FromStr>(&self) -> Result<T, T::Err> {
        self.0.parse()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self(id.to_string())
    }
}

impl From<&NodeId> for NodeId {
    fn from(id: &NodeId) -> Self {
        id.clone()
    }
}

/// Maps keyed by node can be looked up with a `&str`.
impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, CapabilityRecord};

    /// A record as nodes wrote it when peer ids were plain strings.
    #[derive(Serialize, Deserialize)]
    struct OldRecord {
        v: u16,
        peer_id: String,
    }

    #[test]
    fn travels_as_the_plain_string() {
        let record = CapabilityRecord::new("12D3KooWabcdef123456");
        let old: OldRecord = codec::decode(&codec::encode(&record).unwrap(), 1 << 16).unwrap();
        assert_eq!(old.peer_id, "12D3KooWabcdef123456");
        let back: CapabilityRecord =
            codec::decode(&codec::encode(&record).unwrap(), 1 << 16).unwrap();
        assert_eq!(back.peer_id, "12D3KooWabcdef123456");
        assert_eq!(back.peer_id.short(), "123456");
        assert_eq!(NodeId::new("ab").short(), "ab");
    }
}
