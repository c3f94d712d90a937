//! The one place where failures become HTTP responses: the spec's error codes, their statuses,
//! and the `{"errors":[…]}` body. Every layer below returns a `RegistryError` or converts into
//! one here; dependencies that are down map to 503 with a reason.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The error codes of distribution-spec v1.1, plus `UNAVAILABLE` (503) and `UNKNOWN` (500),
/// which distribution uses for failures that are not the client's.
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
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid | TagInvalid => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            Unavailable => "UNAVAILABLE",
            Unknown => "UNKNOWN",
        }
    }

    pub fn default_status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => StatusCode::NOT_FOUND,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A failure as the client will see it.
#[derive(Debug, Clone)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    /// `WWW-Authenticate` challenge sent with 401s.
    pub challenge: Option<String>,
    /// `Retry-After` (seconds) of a 429 or 503; 503s default to 5.
    pub retry_after: Option<u64>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, status: code.default_status(), message: message.into(), challenge: None, retry_after: None }
    }
    /// 429 TOOMANYREQUESTS, to be retried after `secs`.
    pub fn too_many_requests(message: impl Into<String>, secs: u64) -> Self {
        Self { retry_after: Some(secs), ..Self::new(ErrorCode::TooManyRequests, message) }
    }
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
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
impl std::error::Error for RegistryError {}

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
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        let retry_after = self.retry_after.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
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
        }
    }
}

impl From<afreg_replication::ClusterError> for RegistryError {
    fn from(e: afreg_replication::ClusterError) -> Self {
        use afreg_replication::ClusterError as C;
        match e {
            C::Refused(why) => RegistryError::internal(format!("the cluster refused the write: {why}")),
            e => RegistryError::unavailable("the registry cluster (a quorum of regions)", e),
        }
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
}
