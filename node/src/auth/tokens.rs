//! RS256 tokens per the Docker token spec: the signing key (a PEM file, created if missing),
//! token issue and verification, and the JWKS document that publishes the public key.
//! Verified tokens are remembered until they expire, so a client's every request after the
//! first costs a lookup rather than an RSA signature check.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::config::AuthConfig;

/// One `access` entry: what the token grants on one resource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The other regions' public keys by `kid`, from the replicated region list, so a token
    /// one region issued is accepted in all of them.
    peers: std::sync::RwLock<std::collections::HashMap<String, DecodingKey>>,
    /// Tokens that verified, by their text, while `nbf <= now < exp`; emptied when the peers'
    /// keys change. Only tokens with a good signature get in, so strangers cannot fill it.
    verified: quick_cache::sync::Cache<String, std::sync::Arc<Claims>>,
    kid: String,
    n: String,
    e: String,
    validation: Validation,
    issuer: String,
    service: String,
    ttl: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {why}")]
    Load { path: String, why: String },
}

/// How many verified tokens are remembered (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 16_384;

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Keys {
    /// Loads the signing key named in the config, generating a 2048-bit one if the file
    /// does not exist yet.
    pub fn load_or_create(cfg: &AuthConfig) -> Result<Keys, KeyError> {
        let path = &cfg.signing_key;
        let err = |why: String| KeyError::Load { path: path.display().to_string(), why };
        if !path.exists() {
            generate(path).map_err(|e| err(format!("could not create: {e}")))?;
            tracing::info!(event = "signing_key_created", path = %path.display(), "created a new token signing key");
        }
        let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_pem(cfg, &pem)
    }

    /// The keys of a PEM RSA private key (PKCS#8 or PKCS#1).
    pub fn from_pem(cfg: &AuthConfig, pem: &str) -> Result<Keys, KeyError> {
        let path = &cfg.signing_key;
        let err = |why: String| KeyError::Load { path: path.display().to_string(), why };
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|e| err(format!("not an RSA private key in PEM: {e}")))?;
        let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| err(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(pkcs8.as_bytes()).map_err(|e| err(e.to_string()))?;
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| err(e.to_string()))?;
        // RFC 7638 thumbprint as the key id.
        let thumb = sha2::Sha256::digest(format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#).as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(thumb);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&cfg.service]);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Keys {
            encoding,
            decoding,
            peers: Default::default(),
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
            kid,
            n,
            e,
            validation,
            issuer: cfg.issuer.clone(),
            service: cfg.service.clone(),
            ttl: cfg.token_ttl_secs,
        })
    }

    pub fn ttl(&self) -> u64 {
        self.ttl
    }
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Signs a token for `sub` with the given grants.
    pub fn issue(&self, sub: &str, access: Vec<Access>) -> (String, Claims) {
        let iat = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.service.clone(),
            exp: iat + self.ttl,
            nbf: iat.saturating_sub(1),
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).expect("RS256 signing cannot fail");
        (token, claims)
    }

    /// Replaces the other regions' verification keys with these JWKs (JSON text, as in the
    /// region list); unreadable ones are skipped.
    pub fn set_peer_keys<'a>(&self, jwks: impl IntoIterator<Item = &'a str>) {
        let mut map = std::collections::HashMap::new();
        for j in jwks {
            let Ok(jwk) = serde_json::from_str::<serde_json::Value>(j) else { continue };
            let (Some(kid), Some(n), Some(e)) = (jwk["kid"].as_str(), jwk["n"].as_str(), jwk["e"].as_str()) else {
                continue;
            };
            if kid == self.kid {
                continue;
            }
            if let Ok(k) = DecodingKey::from_rsa_components(n, e) {
                map.insert(kid.to_owned(), k);
            }
        }
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = map;
        // A token signed by a key that left must not outlive it here.
        self.verified.clear();
    }

    /// This region's public key as one JWK, in JSON text (what it announces to the others).
    pub fn jwk_json(&self) -> String {
        self.jwks()["keys"][0].to_string()
    }

    /// Checks signature (by this region's key, or another region's by `kid`), expiry,
    /// not-before, audience and issuer.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let t = now();
        if let Some(c) = self.verified.get(token) {
            if c.nbf <= t && t < c.exp {
                return Ok((*c).clone());
            }
        }
        let claims = self.verify_signed(token)?;
        if claims.nbf <= t && t < claims.exp {
            self.verified.insert(token.to_owned(), std::sync::Arc::new(claims.clone()));
        }
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let key = match kid.as_deref() {
            Some(k) if k != self.kid => peers.get(k).unwrap_or(&self.decoding),
            _ => &self.decoding,
        };
        jsonwebtoken::decode::<Claims>(token, key, &self.validation).map(|d| d.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => TokenError::OtherService,
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            k => TokenError::Invalid(format!("{k:?}")),
        })
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": self.n, "e": self.e}]})
    }
}

/// Why a bearer token is refused (the message goes into the 401's challenge and body).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token is for another service")]
    OtherService,
    #[error("token has an unknown issuer")]
    UnknownIssuer,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token is not valid yet")]
    NotYetValid,
    /// Malformed, or refused for another reason jsonwebtoken names.
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn generate(path: &Path) -> anyhow::Result<()> {
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, service: &str) -> AuthConfig {
        AuthConfig { signing_key: dir.join("k.pem"), service: service.into(), ..AuthConfig::default() }
    }

    #[test]
    fn verified_tokens_are_remembered_only_until_they_expire_and_only_if_they_verified() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(&cfg(dir.path(), "afreg")).unwrap();
        let (tok, _) = keys.issue("alice", vec![]);
        assert_eq!(keys.verify(&tok).unwrap().sub, "alice");
        assert!(keys.verified.get(&tok).is_some(), "a good token is remembered");
        assert_eq!(keys.verify(&tok).unwrap().sub, "alice");
        // A forged token never gets in.
        let dir2 = tempfile::tempdir().unwrap();
        let (forged, _) = Keys::load_or_create(&cfg(dir2.path(), "afreg")).unwrap().issue("mallory", vec![]);
        assert!(keys.verify(&forged).is_err() && keys.verify(&forged).is_err());
        assert!(keys.verified.get(&forged).is_none());
        // An entry past its expiry is not served: the token is checked again (and this one,
        // not a real token, fails).
        let mut stale = (*keys.verified.get(&tok).unwrap()).clone();
        stale.exp = now() - 1;
        keys.verified.insert("not.a.token".into(), std::sync::Arc::new(stale));
        assert!(keys.verify("not.a.token").is_err());
        // New peer keys empty it.
        keys.set_peer_keys([]);
        assert!(keys.verified.get(&tok).is_none());
    }

    #[test]
    fn issue_verify_and_reject() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(&cfg(dir.path(), "afreg")).unwrap();
        let access = vec![Access { kind: "repository".into(), name: "a/b".into(), actions: vec!["pull".into()] }];
        let (tok, _) = keys.issue("alice", access.clone());
        let c = keys.verify(&tok).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.access, access);
        // The same key file loads again with the same kid.
        let again = Keys::load_or_create(&cfg(dir.path(), "afreg")).unwrap();
        assert_eq!(again.kid, keys.kid);
        // Wrong audience.
        let other = Keys::load_or_create(&cfg(dir.path(), "other")).unwrap();
        assert_eq!(other.verify(&tok).unwrap_err(), TokenError::OtherService);
        // Forged: a different key.
        let dir2 = tempfile::tempdir().unwrap();
        let forger = Keys::load_or_create(&cfg(dir2.path(), "afreg")).unwrap();
        let (forged, _) = forger.issue("alice", vec![]);
        assert_eq!(keys.verify(&forged).unwrap_err(), TokenError::BadSignature);
        // Tampered payload.
        let mut parts: Vec<&str> = tok.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
        parts[1] = &payload;
        assert!(keys.verify(&parts.join(".")).is_err());
        // Another region's token verifies once its key is known, and only then.
        assert!(keys.verify(&forged).is_err());
        keys.set_peer_keys([forger.jwk_json().as_str()]);
        assert_eq!(keys.verify(&forged).unwrap().sub, "alice");
        keys.set_peer_keys([]);
        assert!(keys.verify(&forged).is_err());
    }
}
