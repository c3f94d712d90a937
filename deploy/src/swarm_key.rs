//! The private IPFS network of a cluster: one pre-shared key (`swarm.key`) in every region's
//! Kubo. A peer without it fails the libp2p handshake, so no stranger can connect to a region's
//! Kubo, ask it for a blob by CID, or learn what it holds. `afreg up` generates one per local
//! cluster; an operator generates one for a deployment (`afreg swarm-key generate`) and the
//! SDL carries it to every region's Kubo.

use std::path::Path;

/// The first two lines of a `swarm.key` file (libp2p's PSK v1 format, hex-encoded key).
const HEADER: &str = "/key/swarm/psk/1.0.0/\n/base16/\n";

/// A private network's 32-byte pre-shared key. Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmKey(…)")
    }
}

/// A `swarm.key` that is not one.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("not a swarm key: want the lines `/key/swarm/psk/1.0.0/`, `/base16/` and 64 hex characters")]
    Format,
}

impl SwarmKey {
    /// A new random key.
    pub fn generate() -> SwarmKey {
        SwarmKey(rand::random())
    }

    /// From the 64 hex characters of the key (as the SDL carries it), or a whole `swarm.key`.
    pub fn parse(text: &str) -> Result<SwarmKey, SwarmKeyError> {
        let text = text.trim();
        let hex_part = text.strip_prefix(HEADER).unwrap_or(text).trim();
        let bytes = hex::decode(hex_part).map_err(|_| SwarmKeyError::Format)?;
        Ok(SwarmKey(bytes.try_into().map_err(|_| SwarmKeyError::Format)?))
    }

    /// The 64 hex characters of the key.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The contents of a `swarm.key` file.
    pub fn file_text(&self) -> String {
        format!("{HEADER}{}\n", self.hex())
    }

    pub fn read(path: &Path) -> Result<SwarmKey, SwarmKeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SwarmKeyError::Io { path: path.to_owned(), source })?;
        SwarmKey::parse(&text)
    }

    /// Writes the key to a new file only its owner can read.
    pub fn write_new(&self, path: &Path) -> Result<(), SwarmKeyError> {
        afreg_config::write_private(path, &self.file_text())
            .map_err(|source| SwarmKeyError::Io { path: path.to_owned(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_from_its_file_and_from_its_hex() {
        let k = SwarmKey::generate();
        assert_eq!(SwarmKey::parse(&k.file_text()).unwrap(), k);
        assert_eq!(SwarmKey::parse(&k.hex()).unwrap(), k);
        assert!(k.file_text().starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert_eq!(k.hex().len(), 64);
        assert_ne!(SwarmKey::generate(), k);
        assert!(!format!("{k:?}").contains(&k.hex()), "Debug must not show the key");
        assert!(SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base16/\nabcd").is_err());
        assert!(SwarmKey::parse("zz").is_err());
    }
}
