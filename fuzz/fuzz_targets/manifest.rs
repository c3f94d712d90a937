//! Manifest and index reading, `afreg_node::oci::manifest::parse(body, content_type)`: what a
//! `PUT /v2/<name>/manifests/<reference>` body and its `Content-Type` go through before the
//! registry stores the manifest and links what it references.
//!
//! Input: the first line is the `Content-Type` (an empty line: no header), the rest the body.
//!
//! Checks, for any body and header:
//! - an accepted manifest's media type is one of the four manifest media types (it is served
//!   with it: a pushed `text/html` must never come back as one), and `served_type` keeps it;
//! - an image manifest lists its config and every layer, each once, as required or foreign
//!   blobs and has no children; an index lists every entry of `manifests` as a child and no
//!   blobs;
//! - it is JSON text: UTF-8 (RFC 8259 section 8.1) with the JSON grammar throughout, and an
//!   independent `serde_json::Value` read of it accepts it (but for what the grammar allows and
//!   `Value` does not: unpaired surrogate escapes and numbers beyond f64);
//! - every digest it returns (blobs, children, subject) is a valid digest and is the `digest`
//!   of a descriptor in the body;
//! - with a header and a `mediaType` both given, the two agree;
//! - parsing is deterministic and idempotent: the same body parsed again with the media type
//!   it was stored as gives the same result;
//! - every refusal is `MANIFEST_INVALID` with a 4xx status.
#![no_main]

use afreg_node::oci::manifest::{self, parse, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use afreg_node::oci::{Digest, ErrorCode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Every `"digest": "..."` string anywhere in the document.
fn digests(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "digest" {
                    if let Value::String(s) = x {
                        out.push(s.clone());
                    }
                }
                digests(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| digests(x, out)),
        _ => {}
    }
}

/// `text` with every `\uD800`-`\uDFFF` escape made `\u0020`. RFC 8259's grammar allows an
/// unpaired surrogate escape (section 8.2) and the registry leaves such strings alone where it
/// does not read them, but serde_json's `Value` refuses them; the replacement has the same
/// length and grammar, and no digest can contain either.
fn without_surrogate_escapes(text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    let mut i = 0;
    while i + 6 <= b.len() {
        let surrogate = b[i] == b'\\'
            && b[i + 1] == b'u'
            && b[i + 2].eq_ignore_ascii_case(&b'd')
            && matches!(b[i + 3].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')
            && b[i + 4].is_ascii_hexdigit()
            && b[i + 5].is_ascii_hexdigit();
        if surrogate {
            b[i + 2..i + 6].copy_from_slice(b"0020");
            i += 6;
        } else {
            i += 1;
        }
    }
    String::from_utf8(b).expect("only ASCII was replaced")
}

fn len_of(v: &Value, key: &str) -> usize {
    v.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(header) = std::str::from_utf8(header) else { return };
    let content_type = (!header.is_empty()).then_some(header);

    let parsed = parse(body, content_type);
    // Deterministic.
    assert_eq!(format!("{parsed:?}"), format!("{:?}", parse(body, content_type)));
    let p = match parsed {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ManifestInvalid, "{}", e.message);
            assert!(e.status().is_client_error());
            return;
        }
    };

    let kinds = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
    assert!(kinds.contains(&p.media_type.as_str()), "stored as {:?}", p.media_type);
    assert_eq!(manifest::served_type(&p.media_type), p.media_type);

    // Accepted means JSON text (UTF-8, RFC 8259): the whole document, not only what the
    // registry reads, has the grammar.
    let text = std::str::from_utf8(body).expect("an accepted manifest is UTF-8");
    serde_json::from_str::<serde::de::IgnoredAny>(text).expect("an accepted manifest is JSON text");
    // Then read it independently. serde_json's `Value` is stricter than the grammar in two ways
    // that the registry rightly tolerates in fields it does not read: unpaired surrogate
    // escapes (neutralised here) and numbers beyond f64 (such a document is not read further).
    let doc: Value = match serde_json::from_str(&without_surrogate_escapes(text)) {
        Ok(doc) => doc,
        Err(e) if e.to_string().starts_with("number out of range") => return,
        Err(e) => panic!("an accepted manifest is JSON, yet serde_json's Value refuses it: {e}"),
    };
    let essence = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| !c.is_empty());
    if let (Some(h), Some(m)) = (essence, doc.get("mediaType").and_then(Value::as_str)) {
        assert_eq!(h, m, "Content-Type and mediaType disagree, yet the manifest was accepted");
    }

    let mut in_body = vec![];
    digests(&doc, &mut in_body);
    let returned = p.blobs.iter().chain(&p.foreign_blobs).chain(&p.children).chain(p.subject.as_ref());
    for d in returned {
        assert!(d.as_str().parse::<Digest>().is_ok(), "{d} is not a valid digest");
        assert!(in_body.iter().any(|s| s == d.as_str()), "{d} is not a descriptor's digest in the body");
    }

    if p.media_type == OCI_MANIFEST || p.media_type == DOCKER_MANIFEST {
        assert!(p.children.is_empty());
        assert_eq!(p.blobs.len() + p.foreign_blobs.len(), 1 + len_of(&doc, "layers"), "config and every layer, once");
        let config = doc["config"]["digest"].as_str();
        assert_eq!(p.blobs.first().map(Digest::as_str), config, "the config is the first required blob");
    } else {
        assert!(p.blobs.is_empty() && p.foreign_blobs.is_empty());
        assert_eq!(p.children.len(), len_of(&doc, "manifests"), "every entry of an index is a child");
    }

    // Idempotent: what is stored parses again, with the type it is stored as, to the same.
    let again = parse(body, Some(&p.media_type)).expect("a stored manifest re-parses with its stored type");
    assert_eq!(again, p);
});
