//! The cluster secret: the shared bearer token of every internal endpoint (Raft RPCs,
//! forwarded writes, pin status, membership). It never appears in logs or `Debug` output.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The cluster secret, shared by every region.
#[derive(Clone)]
pub struct ClusterSecret(Arc<String>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

/// A secret anyone could guess.
#[derive(Debug, thiserror::Error)]
#[error("the cluster secret must be at least 16 characters")]
pub struct SecretTooShort;

impl ClusterSecret {
    /// Refuses secrets too short to resist guessing.
    pub fn new(secret: impl Into<String>) -> Result<Self, SecretTooShort> {
        let s = secret.into();
        if s.trim().len() < 16 {
            return Err(SecretTooShort);
        }
        Ok(ClusterSecret(Arc::new(s.trim().to_owned())))
    }

    /// The secret itself, to send as a bearer token.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries the secret. Compares digests, so the
    /// time taken does not depend on how much of the secret a guess got right.
    pub fn verify(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else { return false };
        let (a, b) = (Sha256::digest(token.trim().as_bytes()), Sha256::digest(self.0.as_bytes()));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_exact_bearer_secret() {
        let s = ClusterSecret::new("0123456789abcdef-secret").unwrap();
        assert!(s.verify(Some("Bearer 0123456789abcdef-secret")));
        assert!(!s.verify(Some("Bearer 0123456789abcdef-secreT")));
        assert!(!s.verify(Some("Basic 0123456789abcdef-secret")));
        assert!(!s.verify(None));
        assert_eq!(format!("{s:?}"), "ClusterSecret(***)");
        assert!(ClusterSecret::new("short").is_err());
    }
}
