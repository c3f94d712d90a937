//! The `/v2/` path router, `afreg_node::oci::router::parse`, on what the HTTP layer hands it:
//! the path after `/v2/`, percent-decoded (lossily, as `http::v2` does), and the raw input.
//!
//! Checks, for any path:
//! - a parsed endpoint re-serializes to the path it came from (`<name>/blobs/uploads` may also
//!   have lost or kept its trailing `/`), and that path parses to the same endpoint again;
//! - its repository name, reference and digest re-parse on their own to equal values, and an
//!   upload id is one non-empty path segment;
//! - every refusal is a client error (4xx) with one of the codes a path can earn: a path never
//!   makes the router answer 5xx.
#![no_main]

use afreg_node::oci::router::{parse, Endpoint};
use afreg_node::oci::{Digest, ErrorCode, Reference, RepoName};
use libfuzzer_sys::fuzz_target;

/// The paths (after `/v2/`) that mean `ep`; the first is the canonical one.
fn paths(ep: &Endpoint) -> Vec<String> {
    match ep {
        Endpoint::Base => vec![String::new()],
        Endpoint::Catalog => vec!["_catalog".into()],
        Endpoint::Tags(r) => vec![format!("{r}/tags/list")],
        Endpoint::Manifest(r, reference) => vec![format!("{r}/manifests/{reference}")],
        Endpoint::Blob(r, d) => vec![format!("{r}/blobs/{d}")],
        Endpoint::UploadStart(r) => vec![format!("{r}/blobs/uploads/"), format!("{r}/blobs/uploads")],
        Endpoint::Upload(r, id) => vec![format!("{r}/blobs/uploads/{id}")],
        Endpoint::Referrers(r, d) => vec![format!("{r}/referrers/{d}")],
    }
}

fn check(rest: &str) {
    match parse(rest) {
        Ok(ep) => {
            let forms = paths(&ep);
            assert!(forms.iter().any(|p| p == rest), "{rest:?} parsed to {ep:?}, which is written {forms:?}");
            for p in &forms {
                assert_eq!(parse(p).as_ref().ok(), Some(&ep), "{p:?} does not parse back to {ep:?}");
            }
            if let Some(r) = ep.repo() {
                assert_eq!(r.as_str().parse::<RepoName>().as_ref().ok(), Some(r));
            }
            match &ep {
                Endpoint::Manifest(_, reference) => {
                    let again: Reference = reference.to_string().parse().expect("a parsed reference re-parses");
                    assert_eq!(&again, reference);
                }
                Endpoint::Blob(_, d) | Endpoint::Referrers(_, d) => {
                    assert_eq!(d.as_str().parse::<Digest>().as_ref().ok(), Some(d));
                }
                Endpoint::Upload(_, id) => assert!(!id.is_empty() && !id.contains('/'), "upload id {id:?}"),
                _ => {}
            }
            // The label is one of a fixed set (metrics never get a label per path).
            assert!(["base", "catalog", "tags", "manifest", "blob", "upload_start", "upload", "referrers"]
                .contains(&ep.route()));
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{rest:?} answered {}", e.status());
            assert!(
                matches!(
                    e.code,
                    ErrorCode::EndpointUnknown
                        | ErrorCode::NameInvalid
                        | ErrorCode::TagInvalid
                        | ErrorCode::DigestInvalid
                        | ErrorCode::Unsupported
                ),
                "{rest:?}: {:?}",
                e.code
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // What `http::v2` does with the request path: decode, then drop leading slashes.
    let decoded = percent_encoding::percent_decode(data).decode_utf8_lossy();
    check(decoded.trim_start_matches('/'));
    if let Ok(raw) = std::str::from_utf8(data) {
        check(raw);
    }
});
