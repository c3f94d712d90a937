//! Validated newtypes for the strings the OCI API carries: repository names, tags, references
//! and digests. They are parsed once, at the edge; nothing after the router re-checks strings.

use std::fmt;
use std::str::FromStr;

use once_cell::sync::Lazy;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::{ErrorCode, RegistryError};

static REPO_RE: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap());
static TAG_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

/// Longest repository name accepted, as distribution does.
pub const MAX_REPO_NAME: usize = 255;

/// A repository name such as `library/ubuntu`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_REPO_NAME || !REPO_RE.is_match(s) {
            return Err(RegistryError::new(ErrorCode::NameInvalid, format!("invalid repository name {s:?}")));
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl TryFrom<String> for RepoName {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<RepoName> for String {
    fn from(r: RepoName) -> String {
        r.0
    }
}
impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag such as `v1.2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !TAG_RE.is_match(s) {
            return Err(RegistryError::new(ErrorCode::TagInvalid, format!("invalid tag {s:?}")));
        }
        Ok(Tag(s.to_owned()))
    }
}
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The digest algorithms the registry computes and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest `algorithm:hex`, lower-case hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or("")
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Builds a digest from raw hash output.
    pub fn from_hash(alg: Algorithm, hash: &[u8]) -> Digest {
        Digest(format!("{}:{}", alg.name(), hex::encode(hash)))
    }
}

impl FromStr for Digest {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| RegistryError::new(ErrorCode::DigestInvalid, format!("invalid digest {s:?}: {why}"));
        let (alg, hex) = s.split_once(':').ok_or_else(|| invalid("expected algorithm:hex"))?;
        let alg = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            a if !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)) =>
            {
                return Err(RegistryError::new(
                    ErrorCode::Unsupported,
                    format!("unsupported digest algorithm {a:?}: use sha256 or sha512"),
                ))
            }
            _ => return Err(invalid("malformed algorithm")),
        };
        if hex.len() != alg.hex_len() || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid(&format!("{} needs {} lower-case hex characters", alg.name(), alg.hex_len())));
        }
        Ok(Digest(s.to_owned()))
    }
}
impl TryFrom<String> for Digest {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["a", "a/b", "library/ubuntu", "a.b_c__d-e--f/g0", "x/y/z"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a_", "a..b", "-a", &"a".repeat(256)] {
            let e = bad.parse::<RepoName>().unwrap_err();
            assert_eq!(e.code, ErrorCode::NameInvalid, "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_v1.0-rc".parse::<Tag>().is_ok());
        assert!(".x".parse::<Tag>().is_err());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!("a".repeat(128).parse::<Tag>().is_ok());
    }

    #[test]
    fn digests() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        let d: Digest = format!("sha512:{}", "0".repeat(128)).parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!("sha256:abc".parse::<Digest>().unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(format!("sha256:{}", "A".repeat(64)).parse::<Digest>().unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!("md5:abcd".parse::<Digest>().unwrap_err().code, ErrorCode::Unsupported);
        assert_eq!("nocolon".parse::<Digest>().unwrap_err().code, ErrorCode::DigestInvalid);
    }

    #[test]
    fn references() {
        assert!(matches!("v1".parse::<Reference>().unwrap(), Reference::Tag(_)));
        assert!(matches!(format!("sha256:{}", "b".repeat(64)).parse::<Reference>().unwrap(), Reference::Digest(_)));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }
}
