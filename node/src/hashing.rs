//! Incremental digests of the bytes that stream through the node, in the algorithm a client
//! named. Cloneable, so a chunk can be hashed speculatively and kept only if it lands.

use sha2::Digest as _;

use crate::oci::{Algorithm, Digest};

#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_hash(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_hash(Algorithm::Sha512, &h.finalize()),
        }
    }
}

/// The sha256 of `b`, as a digest.
pub fn sha256(b: &[u8]) -> Digest {
    Digest::from_hash(Algorithm::Sha256, &sha2::Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn incremental_equals_whole() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), sha256(b"hello world"));
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"");
        assert!(h.finish().as_str().starts_with("sha512:cf83e1357eefb8bd"));
    }
}
