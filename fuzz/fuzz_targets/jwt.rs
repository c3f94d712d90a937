//! Bearer token verification, `auth::Keys::verify(token)`: every `/v2/` request with a token
//! goes through it before any other check.
//!
//! One `Keys` (a fresh 2048-bit key in a temporary directory) is built per process, with a
//! second region's key registered as a peer, and each issues one genuine token. The first byte
//! of the input picks what the rest is:
//! - 0: the whole token;
//! - 1, 2, 3: a JSON text that replaces, base64url-encoded, the header, the claims or the
//!   signature of a genuine token (`alg` swaps, `kid` tricks, widened `access`, ...);
//! - other: a raw segment put in place of one part of a genuine token, chosen by the byte.
//!
//! Checks: nothing verifies unless it is, byte for byte in its signed part, a token these keys
//! issued, and then its claims are the ones issued. A refusal is one of the `TokenError`s.
#![no_main]

use std::sync::OnceLock;

use afreg_node::auth::tokens::TokenError;
use afreg_node::auth::{Claims, Keys};
use afreg_node::config::AuthConfig;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    keys: Keys,
    /// Tokens that may verify: `keys`' own and the peer's, with their claims.
    genuine: Vec<(String, Claims)>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cfg = |file: &str| AuthConfig {
            signing_key: dir.path().join(file),
            // Long-lived, so the genuine tokens stay valid for a whole run.
            token_ttl_secs: 10 * 365 * 24 * 3600,
            ..AuthConfig::default()
        };
        let keys = Keys::load_or_create(&cfg("region-a.pem")).expect("signing key");
        let peer = Keys::load_or_create(&cfg("region-b.pem")).expect("peer signing key");
        keys.set_peer_keys([peer.jwk_json().as_str()]);
        let access = vec![afreg_node::auth::Access {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        }];
        let genuine = vec![keys.issue("alice", access.clone()), peer.issue("bob", access)];
        for (t, _) in &genuine {
            keys.verify(t).expect("a genuine token verifies");
        }
        Fixture { keys, genuine, _dir: dir }
    })
}

/// `header.payload`: what the signature covers.
fn signed_part(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(s, _)| s)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(rest) = std::str::from_utf8(rest) else { return };
    let base = &f.genuine[usize::from(mode) % f.genuine.len()].0;
    let token = match mode {
        0 => rest.to_owned(),
        1..=3 => {
            let mut parts: Vec<String> = base.split('.').map(str::to_owned).collect();
            parts[usize::from(mode) - 1] = URL_SAFE_NO_PAD.encode(rest);
            parts.join(".")
        }
        _ => {
            let mut parts: Vec<String> = base.split('.').map(str::to_owned).collect();
            parts[usize::from(mode) % 3] = rest.to_owned();
            parts.join(".")
        }
    };
    match f.keys.verify(&token) {
        Ok(claims) => {
            let (_, issued) = f
                .genuine
                .iter()
                .find(|(t, _)| signed_part(t) == signed_part(&token))
                .unwrap_or_else(|| panic!("a token these keys never issued verified: {token:?} -> {claims:?}"));
            assert_eq!(format!("{claims:?}"), format!("{issued:?}"));
        }
        Err(
            TokenError::Expired
            | TokenError::OtherService
            | TokenError::UnknownIssuer
            | TokenError::BadSignature
            | TokenError::NotYetValid
            | TokenError::Invalid(_),
        ) => {}
    }
});
