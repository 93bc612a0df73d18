//! Private swarms: the IPFS `swarm.key` pre-shared key (only nodes holding it can connect),
//! and invite tokens that carry the key plus the relay and bootstrap addresses to join with.

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use libp2p::{pnet::PreSharedKey, Multiaddr};
use serde::{Deserialize, Serialize};

use crate::identity::write_private;

const TOKEN_PREFIX: &str = "exo1_";

pub fn generate_key() -> PreSharedKey {
    PreSharedKey::new(rand::random())
}

pub fn write_key(path: &Path, key: &PreSharedKey) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private(path, key.to_key_file().as_bytes())
}

pub fn read_key(path: &Path) -> Result<PreSharedKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read swarm key {}", path.display()))?;
    text.parse().map_err(|e| {
        anyhow::anyhow!(
            "{} is not a swarm key (IPFS swarm.key format): {e:?}",
            path.display()
        )
    })
}

/// Everything a node needs to join a private swarm across the internet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    /// The swarm key, base16.
    pub key: String,
    pub relays: Vec<String>,
    pub bootstrap: Vec<String>,
}

impl Invite {
    pub fn new(key: &PreSharedKey, relays: &[Multiaddr], bootstrap: &[Multiaddr]) -> Self {
        let file = key.to_key_file();
        let hex = file.lines().nth(2).unwrap_or_default().trim().to_string();
        Self {
            key: hex,
            relays: relays.iter().map(|a| a.to_string()).collect(),
            bootstrap: bootstrap.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn to_token(&self) -> String {
        let json = serde_json::to_vec(self).expect("invite serializes");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn from_token(token: &str) -> Result<Self> {
        let Some(body) = token.trim().strip_prefix(TOKEN_PREFIX) else {
            bail!("not an exo-p2p invite token (they start with `{TOKEN_PREFIX}`)");
        };
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .context("the invite token is damaged (bad base64)")?;
        serde_json::from_slice(&json).context("the invite token is damaged")
    }

    pub fn psk(&self) -> Result<PreSharedKey> {
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", self.key)
            .parse()
            .map_err(|e| anyhow::anyhow!("the invite's swarm key is invalid: {e:?}"))
    }

    pub fn relay_addrs(&self) -> Result<Vec<Multiaddr>> {
        parse_addrs(&self.relays)
    }

    pub fn bootstrap_addrs(&self) -> Result<Vec<Multiaddr>> {
        parse_addrs(&self.bootstrap)
    }
}

fn parse_addrs(v: &[String]) -> Result<Vec<Multiaddr>> {
    v.iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("bad address `{a}` in invite"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_and_tokens_round_trip() {
        let dir = std::env::temp_dir().join(format!("exo-psk-{}", std::process::id()));
        let key = generate_key();
        let path = dir.join("swarm.key");
        write_key(&path, &key).unwrap();
        let back = read_key(&path).unwrap();
        assert_eq!(
            back.fingerprint().to_string(),
            key.fingerprint().to_string()
        );

        let relay: Multiaddr =
            "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWGsGPo2JpC5Qq1fATqH6cyTJCAH4zApp15NmkQVuDtYBU"
                .parse()
                .unwrap();
        let invite = Invite::new(
            &key,
            std::slice::from_ref(&relay),
            std::slice::from_ref(&relay),
        );
        let token = invite.to_token();
        assert!(token.starts_with("exo1_"));
        let parsed = Invite::from_token(&token).unwrap();
        assert_eq!(parsed, invite);
        assert_eq!(parsed.relay_addrs().unwrap(), [relay]);
        assert_eq!(
            parsed.psk().unwrap().fingerprint().to_string(),
            key.fingerprint().to_string()
        );
        assert!(Invite::from_token("exo1_!!!").is_err());
        assert!(Invite::from_token("hello").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
