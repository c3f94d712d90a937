//! Repository names, tags, digests and references (`afreg_node::oci::names`), the strings every
//! `/v2/` path and several query parameters carry.
//!
//! Checks, for any input string:
//! - `RepoName`, `Tag` and `Digest` accept exactly what a hand-written reading of the
//!   distribution-spec grammar accepts (the parsers use regexes and byte checks; this is a
//!   second, independent implementation), and reject with their own error code;
//! - an accepted value re-serializes (`Display`, `as_str`, serde) to the input, and parses again
//!   to an equal value;
//! - a digest's hex has its algorithm's length (64 for sha256, 128 for sha512), is lower-case,
//!   and `Digest::from_hash` of its bytes gives the same digest;
//! - a `Reference` is a digest exactly when the input has a `:`, and displays as the input.
#![no_main]

use afreg_node::oci::names::MAX_REPO_NAME;
use afreg_node::oci::{Algorithm, Digest, ErrorCode, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(c: &[u8]) -> bool {
    if c.is_empty() || !alnum(c[0]) || !alnum(c[c.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < c.len() {
        if alnum(c[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < c.len() && !alnum(c[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn repo_ok(s: &str) -> bool {
    s.len() <= MAX_REPO_NAME && s.split('/').all(|c| component_ok(c.as_bytes()))
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn tag_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn lower_hex(h: &str) -> bool {
    h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn digest_ok(s: &str) -> Option<Algorithm> {
    let (alg, hex) = s.split_once(':')?;
    let (alg, len) = match alg {
        "sha256" => (Algorithm::Sha256, 64),
        "sha512" => (Algorithm::Sha512, 128),
        _ => return None,
    };
    (hex.len() == len && lower_hex(hex)).then_some(alg)
}

fn check_repo(s: &str) {
    match s.parse::<RepoName>() {
        Ok(r) => {
            assert!(repo_ok(s), "RepoName accepted {s:?}, which the grammar does not");
            assert_eq!(r.as_str(), s);
            assert_eq!(r.to_string(), s);
            assert_eq!(s.parse::<RepoName>().unwrap(), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), r);
        }
        Err(e) => {
            assert!(!repo_ok(s), "RepoName rejected {s:?}, which the grammar allows");
            assert_eq!(e.code, ErrorCode::NameInvalid);
            // serde goes through the same check.
            assert!(serde_json::from_value::<RepoName>(serde_json::Value::String(s.to_owned())).is_err());
        }
    }
}

fn check_tag(s: &str) {
    match s.parse::<Tag>() {
        Ok(t) => {
            assert!(tag_ok(s), "Tag accepted {s:?}, which the grammar does not");
            assert_eq!(t.as_str(), s);
            assert_eq!(t.to_string(), s);
        }
        Err(e) => {
            assert!(!tag_ok(s), "Tag rejected {s:?}, which the grammar allows");
            assert_eq!(e.code, ErrorCode::TagInvalid);
        }
    }
}

fn check_digest(s: &str) {
    match s.parse::<Digest>() {
        Ok(d) => {
            let alg = digest_ok(s).unwrap_or_else(|| panic!("Digest accepted {s:?}, which the grammar does not"));
            assert_eq!(d.algorithm(), alg);
            let want = match alg {
                Algorithm::Sha256 => 64,
                Algorithm::Sha512 => 128,
            };
            assert_eq!(d.hex().len(), want, "{s:?}");
            assert!(lower_hex(d.hex()));
            assert_eq!(format!("{}:{}", alg.name(), d.hex()), s);
            assert_eq!(d.as_str(), s);
            assert_eq!(d.to_string(), s);
            let raw = hex::decode(d.hex()).expect("the hex of a digest decodes");
            assert_eq!(Digest::from_hash(alg, &raw), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        }
        Err(e) => {
            assert!(digest_ok(s).is_none(), "Digest rejected {s:?}, which the grammar allows");
            assert!(matches!(e.code, ErrorCode::DigestInvalid | ErrorCode::Unsupported), "{s:?}: {:?}", e.code);
            assert!(e.status().is_client_error());
        }
    }
}

fn check_reference(s: &str) {
    match s.parse::<Reference>() {
        Ok(r) => {
            assert_eq!(matches!(r, Reference::Digest(_)), s.contains(':'));
            assert_eq!(r.to_string(), s);
        }
        Err(e) => assert!(matches!(e.code, ErrorCode::TagInvalid | ErrorCode::DigestInvalid | ErrorCode::Unsupported)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    check_repo(s);
    check_tag(s);
    check_digest(s);
    check_reference(s);
});
