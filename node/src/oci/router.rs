//! Parses a request path under `/v2/` into an [`Endpoint`]. Repository names have any number
//! of segments, so axum cannot route them; the suffix (`manifests/…`, `blobs/…`, …) is matched
//! from the right instead, and the server dispatches on the result with one flat `match`.

use axum::http::Method;

use super::error::{ErrorCode, RegistryError};
use super::names::{Digest, Reference, RepoName};

/// Every endpoint of distribution-spec v1.1, with its path parameters validated; each
/// variant names the lines of the spec's endpoint table (end-N) it serves. `handlers::handle`
/// has one arm per spec line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// end-1: `GET /v2/`
    Base,
    /// `GET /v2/_catalog` (distribution's; not in the spec's table)
    Catalog,
    /// end-8a, end-8b: `GET /v2/<name>/tags/list`
    Tags(RepoName),
    /// end-3 (`GET|HEAD`), end-7 (`PUT`), end-9 (`DELETE`): `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// end-2 (`GET|HEAD`), end-10 (`DELETE`): `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// end-4a, end-4b, end-11: `POST /v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// end-13 (`GET`), end-5 (`PATCH`), end-6 (`PUT`), and `DELETE` (distribution's):
    /// `/v2/<name>/blobs/uploads/<reference>`
    Upload(RepoName, String),
    /// end-12a, end-12b: `GET /v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// The label used for metrics and logs: one per route, never per repository.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags(r)
            | Endpoint::Manifest(r, _)
            | Endpoint::Blob(r, _)
            | Endpoint::UploadStart(r)
            | Endpoint::Upload(r, _)
            | Endpoint::Referrers(r, _) => Some(r),
        }
    }

    /// Whether `method` is one this endpoint serves.
    pub fn allows(&self, method: &Method) -> bool {
        let m = method;
        match self {
            Endpoint::Base | Endpoint::Catalog | Endpoint::Tags(_) | Endpoint::Referrers(..) => {
                m == Method::GET || m == Method::HEAD
            }
            Endpoint::Manifest(..) => [Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(m),
            Endpoint::Blob(..) => [Method::GET, Method::HEAD, Method::DELETE].contains(m),
            Endpoint::UploadStart(_) => m == Method::POST,
            Endpoint::Upload(..) => [Method::GET, Method::PATCH, Method::PUT, Method::DELETE].contains(m),
        }
    }
}

fn not_found(path: &str) -> RegistryError {
    RegistryError::new(ErrorCode::EndpointUnknown, format!("no such endpoint: /v2/{path}"))
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Endpoint, RegistryError> {
    if rest.is_empty() {
        return Ok(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, RegistryError> {
        if n <= k {
            return Err(not_found(rest));
        }
        segs[..n - k].join("/").parse()
    };
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Endpoint::Tags(name(2)?));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let id = segs[n - 1];
        let repo = name(3)?;
        return Ok(if id.is_empty() { Endpoint::UploadStart(repo) } else { Endpoint::Upload(repo, id.to_owned()) });
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Endpoint::UploadStart(name(2)?));
    }
    if n >= 3 {
        let last = segs[n - 1];
        match segs[n - 2] {
            "manifests" => return Ok(Endpoint::Manifest(name(2)?, last.parse()?)),
            "blobs" => return Ok(Endpoint::Blob(name(2)?, last.parse()?)),
            "referrers" => return Ok(Endpoint::Referrers(name(2)?, last.parse()?)),
            _ => {}
        }
    }
    Err(not_found(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> String {
        format!("sha256:{}", "c".repeat(64))
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse("").unwrap(), Endpoint::Base);
        assert_eq!(parse("_catalog").unwrap(), Endpoint::Catalog);
        assert_eq!(parse("a/b/tags/list").unwrap(), Endpoint::Tags("a/b".parse().unwrap()));
        assert!(
            matches!(parse("a/manifests/latest").unwrap(), Endpoint::Manifest(r, Reference::Tag(_)) if r.as_str() == "a")
        );
        assert!(matches!(
            parse(&format!("x/y/z/manifests/{}", d())).unwrap(),
            Endpoint::Manifest(_, Reference::Digest(_))
        ));
        assert!(matches!(parse(&format!("a/blobs/{}", d())).unwrap(), Endpoint::Blob(..)));
        assert_eq!(parse("a/b/blobs/uploads/").unwrap(), Endpoint::UploadStart("a/b".parse().unwrap()));
        assert_eq!(parse("a/b/blobs/uploads").unwrap(), Endpoint::UploadStart("a/b".parse().unwrap()));
        assert_eq!(parse("a/blobs/uploads/123").unwrap(), Endpoint::Upload("a".parse().unwrap(), "123".into()));
        assert!(matches!(parse(&format!("a/referrers/{}", d())).unwrap(), Endpoint::Referrers(..)));
    }

    #[test]
    fn repo_names_may_contain_keywords() {
        assert!(matches!(parse("blobs/manifests/v1").unwrap(), Endpoint::Manifest(r, _) if r.as_str() == "blobs"));
        assert!(matches!(parse("tags/list/tags/list").unwrap(), Endpoint::Tags(r) if r.as_str() == "tags/list"));
        assert!(
            matches!(parse("manifests/blobs/uploads/").unwrap(), Endpoint::UploadStart(r) if r.as_str() == "manifests")
        );
    }

    #[test]
    fn rejects_bad_parts_with_spec_codes() {
        assert_eq!(parse("UPPER/manifests/v1").unwrap_err().code, ErrorCode::NameInvalid);
        assert_eq!(parse("a/manifests/.bad").unwrap_err().code, ErrorCode::TagInvalid);
        assert_eq!(parse("a/blobs/sha256:zz").unwrap_err().code, ErrorCode::DigestInvalid);
        for path in ["a/whatever/x", "manifests/v1"] {
            let e = parse(path).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND, "{path}");
            assert_eq!(e.code.as_str(), "NAME_UNKNOWN", "{path}");
        }
    }
}
