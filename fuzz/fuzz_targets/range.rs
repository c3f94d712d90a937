//! The byte-range headers: `Range` on blob `GET`s (`registry::blobs::parse_range`, resolved
//! against the blob's size) and `Content-Range` on upload `PATCH`/`PUT`s
//! (`registry::uploads::parse_content_range`).
//!
//! Input: the first line is the blob size in decimal; the rest is the header value, given to
//! both parsers.
//!
//! Checks, for any header and size:
//! - a resolved `Range` lies within the blob: `start <= end < size`, so the response's length
//!   `end - start + 1` is at most the size and cannot overflow;
//! - the whole blob (`Ok(None)`) is answered exactly when the unit is not `bytes` or several
//!   ranges are asked for; a single `bytes=` range is either resolved or unsatisfiable;
//! - an explicit `bytes=S-E` starts at S and ends at E, or at the last byte if E is past it;
//! - a parsed `Content-Range` has `start <= end` and a length `end - start + 1` that fits in a
//!   u64 (the upload code computes it);
//! - the `Content-Range` a 206 response carries for a resolved range parses back to it.
#![no_main]

use afreg_node::registry::blobs::{parse_range, Unsatisfiable};
use afreg_node::registry::uploads::parse_content_range;
use libfuzzer_sys::fuzz_target;

fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (size, header) = s.split_once('\n').unwrap_or((s, ""));
    let Ok(size) = size.trim().parse::<u64>() else { return };

    let spec = header.trim().strip_prefix("bytes=");
    match parse_range(header, size) {
        Ok(Some(r)) => {
            assert!(r.start <= r.end && r.end < size, "{header:?} on {size} bytes gave {r:?}");
            let len = r.end - r.start + 1;
            assert!(len <= size);
            let spec = spec.expect("only a bytes= range resolves");
            assert!(!spec.contains(','));
            let (a, b) = spec.split_once('-').expect("a resolved range has a '-'");
            if let (Some(a), Some(b)) = (digits(a.trim()), digits(b.trim())) {
                assert_eq!((r.start, r.end), (a, b.min(size - 1)), "{header:?} on {size} bytes");
            }
            let content_range = format!("bytes {}-{}/{size}", r.start, r.end);
            assert_eq!(parse_content_range(&content_range), Some((r.start, r.end)), "{content_range:?}");
        }
        Ok(None) => assert!(spec.is_none_or(|s| s.contains(',')), "{header:?}: a single bytes range was ignored"),
        Err(Unsatisfiable) => {
            assert!(spec.is_some_and(|s| !s.contains(',')), "{header:?}: refused, yet not a single bytes range")
        }
    }

    if let Some((start, end)) = parse_content_range(header) {
        assert!(start <= end, "{header:?} gave {start}-{end}");
        assert!(
            end.checked_sub(start).and_then(|n| n.checked_add(1)).is_some(),
            "{header:?}: the length of {start}-{end} overflows"
        );
    }
});
