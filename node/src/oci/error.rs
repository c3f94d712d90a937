//! The one place where failures become HTTP responses: the spec's error codes, their statuses,
//! and the `{"errors":[…]}` body. Every layer below returns a `RegistryError` or converts into
//! one here; dependencies that are down map to 503 with a reason.
//!
//! # One mapping
//!
//! An [`ErrorCode`] says what went wrong, as finely as the answer needs, and `ErrorCode::spec`
//! is the one `match` that gives each the `code` string clients see and the HTTP status it is
//! answered with. A [`RegistryError`]'s status is its code's ([`RegistryError::status`]); nothing
//! sets one otherwise, so no other module picks the status of an error.
//!
//! Most variants are the spec's codes one for one. distribution-spec v1.1's code table
//! (code-1 … code-14) gives no statuses, and its endpoint table gives failure statuses without
//! codes (end-5's 416, end-7's 413, end-9's and end-10's 405). So where one code goes out with
//! more than one status, each status has a variant of its own that serializes as that code:
//!
//! | variant                | `code` in the body    | status |
//! |------------------------|-----------------------|--------|
//! | `SizeInvalid`          | `SIZE_INVALID`        | 400    |
//! | `TooLarge`             | `SIZE_INVALID`        | 413    |
//! | `BlobUploadInvalid`    | `BLOB_UPLOAD_INVALID` | 400    |
//! | `UploadRangeInvalid`   | `BLOB_UPLOAD_INVALID` | 416    |
//! | `BlobUnknown`          | `BLOB_UNKNOWN`        | 404    |
//! | `RangeNotSatisfiable`  | `BLOB_UNKNOWN`        | 416    |
//! | `Unsupported`          | `UNSUPPORTED`         | 400    |
//! | `MethodNotAllowed`     | `UNSUPPORTED`         | 405    |
//! | `NameUnknown`          | `NAME_UNKNOWN`        | 404    |
//! | `EndpointUnknown`      | `NAME_UNKNOWN`        | 404    |
//! | `ManifestInvalid`      | `MANIFEST_INVALID`    | 400    |
//! | `TagInvalid`           | `MANIFEST_INVALID`    | 400    |
//!
//! (`EndpointUnknown` and `TagInvalid` keep their code's status: they let the node tell a path
//! that is no endpoint from an unknown repository, and a malformed tag, which reads answer as
//! MANIFEST_UNKNOWN, from a malformed manifest.)
//!
//! A few answers carry a body of their own rather than the spec's (`/readyz`, `/status`, the
//! internal local-status): they still take their failure status from here, as
//! `ErrorCode::Unavailable.status()`.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong: the error codes of distribution-spec v1.1, plus `UNAVAILABLE` (503) and
/// `UNKNOWN` (500), which distribution uses for failures that are not the client's, and the
/// variants that give a spec code another status (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A tag that is not `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; reported as MANIFEST_INVALID,
    /// the spec having no code of its own for it.
    TagInvalid,
    /// A manifest or blob over this node's size limit: SIZE_INVALID, 413.
    TooLarge,
    /// An upload chunk whose `Content-Range` is malformed or not where the session stands:
    /// BLOB_UPLOAD_INVALID, 416.
    UploadRangeInvalid,
    /// A blob `Range` that cannot be served: BLOB_UNKNOWN, 416.
    RangeNotSatisfiable,
    /// A method the endpoint does not serve: UNSUPPORTED, 405.
    MethodNotAllowed,
    /// A path under `/v2/` that is no endpoint: NAME_UNKNOWN, 404.
    EndpointUnknown,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    /// The one table: the `code` the client sees and the status it is answered with.
    fn spec(self) -> (&'static str, StatusCode) {
        use ErrorCode::*;
        use StatusCode as S;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", S::NOT_FOUND),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", S::BAD_REQUEST),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", S::NOT_FOUND),
            DigestInvalid => ("DIGEST_INVALID", S::BAD_REQUEST),
            ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", S::BAD_REQUEST),
            ManifestInvalid => ("MANIFEST_INVALID", S::BAD_REQUEST),
            ManifestUnknown => ("MANIFEST_UNKNOWN", S::NOT_FOUND),
            NameInvalid => ("NAME_INVALID", S::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", S::NOT_FOUND),
            SizeInvalid => ("SIZE_INVALID", S::BAD_REQUEST),
            Unauthorized => ("UNAUTHORIZED", S::UNAUTHORIZED),
            Denied => ("DENIED", S::FORBIDDEN),
            Unsupported => ("UNSUPPORTED", S::BAD_REQUEST),
            TooManyRequests => ("TOOMANYREQUESTS", S::TOO_MANY_REQUESTS),
            TagInvalid => ("MANIFEST_INVALID", S::BAD_REQUEST),
            TooLarge => ("SIZE_INVALID", S::PAYLOAD_TOO_LARGE),
            UploadRangeInvalid => ("BLOB_UPLOAD_INVALID", S::RANGE_NOT_SATISFIABLE),
            RangeNotSatisfiable => ("BLOB_UNKNOWN", S::RANGE_NOT_SATISFIABLE),
            MethodNotAllowed => ("UNSUPPORTED", S::METHOD_NOT_ALLOWED),
            EndpointUnknown => ("NAME_UNKNOWN", S::NOT_FOUND),
            Unavailable => ("UNAVAILABLE", S::SERVICE_UNAVAILABLE),
            Unknown => ("UNKNOWN", S::INTERNAL_SERVER_ERROR),
        }
    }

    /// The spec's code string, as the body's `code`.
    pub fn as_str(self) -> &'static str {
        self.spec().0
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        self.spec().1
    }
}

/// A failure as the client will see it.
#[derive(Debug, Clone)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    /// `WWW-Authenticate` challenge sent with 401s.
    pub challenge: Option<String>,
    /// `Retry-After` (seconds) of a 429 or 503; 503s default to 5.
    pub retry_after: Option<u64>,
    /// The failure behind this one, for [`std::error::Error::source`]; what the client reads
    /// is `message` alone (which usually quotes it).
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), challenge: None, retry_after: None, source: None }
    }
    /// The status the error is answered with: its code's.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    /// Keeps `source` as the cause of this error; the message is unchanged.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    /// 429 TOOMANYREQUESTS, to be retried after `secs`.
    pub fn too_many_requests(message: impl Into<String>, secs: u64) -> Self {
        Self { retry_after: Some(secs), ..Self::new(ErrorCode::TooManyRequests, message) }
    }
    pub fn unavailable(what: &str, why: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Unavailable, format!("{what} is unavailable: {why}"))
    }
    pub fn internal(why: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Unknown, format!("internal error: {why}"))
    }
    pub fn blob_unknown(d: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::BlobUnknown, format!("blob {d} is not known to this repository"))
    }
    pub fn manifest_unknown(r: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::ManifestUnknown, format!("manifest {r} is not known to this repository"))
    }
    pub fn upload_unknown() -> Self {
        Self::new(ErrorCode::BlobUploadUnknown, "upload session is not known (finished, cancelled or expired)")
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}
#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body { errors: [Entry { code: self.code.as_str(), message: &self.message }] })
            .unwrap_or_default();
        let status = self.status();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        let retry_after = self.retry_after.or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        let err = match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                RegistryError::unavailable("the metadata database (PostgreSQL)", &e)
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                RegistryError::unavailable("the metadata database (PostgreSQL)", &e)
            }
            // lock_not_available: a lock wait passed its bound (`lock_timeout`).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => RegistryError::unavailable(
                "the metadata database (PostgreSQL)",
                format!("a lock stayed busy past its bound: {e}"),
            ),
            _ => RegistryError::internal(format!("database: {e}")),
        };
        err.with_source(e)
    }
}

impl From<afreg_replication::ClusterError> for RegistryError {
    fn from(e: afreg_replication::ClusterError) -> Self {
        use afreg_replication::ClusterError as C;
        let err = match &e {
            C::Refused(why) => RegistryError::internal(format!("the cluster refused the write: {why}")),
            e => RegistryError::unavailable("the registry cluster (a quorum of regions)", e),
        };
        err.with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_shape_and_status() {
        let r = RegistryError::new(ErrorCode::DigestInvalid, "bad").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad");
    }

    #[test]
    fn unavailable_is_503_with_retry() {
        let r = RegistryError::unavailable("kubo", "connection refused").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
    }

    /// Every code's status and body `code`, as clients see them: the statuses the handlers used
    /// to set by hand (413, 416, 405, 404, 401) now come from the table, with the same codes.
    #[tokio::test]
    async fn each_code_keeps_its_status_and_spec_code() {
        use ErrorCode::*;
        let table = [
            (BlobUnknown, 404, "BLOB_UNKNOWN"),
            (BlobUploadInvalid, 400, "BLOB_UPLOAD_INVALID"),
            (BlobUploadUnknown, 404, "BLOB_UPLOAD_UNKNOWN"),
            (DigestInvalid, 400, "DIGEST_INVALID"),
            (ManifestBlobUnknown, 400, "MANIFEST_BLOB_UNKNOWN"),
            (ManifestInvalid, 400, "MANIFEST_INVALID"),
            (ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (NameInvalid, 400, "NAME_INVALID"),
            (NameUnknown, 404, "NAME_UNKNOWN"),
            (SizeInvalid, 400, "SIZE_INVALID"),
            (Unauthorized, 401, "UNAUTHORIZED"),
            (Denied, 403, "DENIED"),
            (Unsupported, 400, "UNSUPPORTED"),
            (TooManyRequests, 429, "TOOMANYREQUESTS"),
            (TagInvalid, 400, "MANIFEST_INVALID"),
            (TooLarge, 413, "SIZE_INVALID"),
            (UploadRangeInvalid, 416, "BLOB_UPLOAD_INVALID"),
            (RangeNotSatisfiable, 416, "BLOB_UNKNOWN"),
            (MethodNotAllowed, 405, "UNSUPPORTED"),
            (EndpointUnknown, 404, "NAME_UNKNOWN"),
            (Unavailable, 503, "UNAVAILABLE"),
            (Unknown, 500, "UNKNOWN"),
        ];
        for (code, status, s) in table {
            let e = RegistryError::new(code, "m");
            assert_eq!(e.status().as_u16(), status, "{code:?}");
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status, "{code:?}");
            let b = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["errors"][0]["code"], s, "{code:?}");
        }
    }

    #[test]
    fn a_wrapped_failure_stays_the_source_and_the_message_is_unchanged() {
        let io = std::io::Error::other("disk on fire");
        let e = RegistryError::unavailable("blob storage", &io).with_source(io);
        assert_eq!(e.message, "blob storage is unavailable: disk on fire");
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "disk on fire");
        let e = RegistryError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(std::error::Error::source(&e).unwrap().downcast_ref::<sqlx::Error>().is_some());
    }
}
