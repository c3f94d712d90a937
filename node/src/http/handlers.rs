//! Thin handlers: each pulls what it needs out of the request, calls one registry service and
//! shapes the spec's response (status, `Location`, `Range`, `Docker-Content-Digest`, …).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};

use super::AppState;
use crate::auth::Need;
use crate::oci::{self, Action, Digest, Endpoint, ErrorCode, RegistryError, RepoName};
use crate::registry::blobs::{parse_range, range_not_satisfiable, Unsatisfiable};
use crate::registry::uploads::{parse_content_range, UploadStatus};

/// The query string, decoded once.
#[derive(Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
    /// Every value of a repeated key, in order.
    pub fn all(&self, k: &str) -> Vec<String> {
        self.0.iter().filter(|(key, _)| key == k).map(|(_, v)| v.clone()).collect()
    }
    fn n(&self) -> Result<Option<u32>> {
        self.get("n")
            .map(|n| n.parse().map_err(|_| RegistryError::new(ErrorCode::Unsupported, format!("invalid n={n:?}"))))
            .transpose()
    }
    fn digest(&self) -> Result<Option<Digest>> {
        self.get("digest").map(str::parse).transpose()
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn header_u64(h: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn body_stream(
    body: Body,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    body.into_data_stream().map_err(|e| std::io::Error::other(format!("upload body: {e}")))
}

/// Serves an authorized request; `owner` is who opens upload sessions (a user or an address),
/// `origin` the request as a notification event names it.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    st: &AppState,
    ep: Endpoint,
    method: &Method,
    q: &Query,
    h: &HeaderMap,
    body: Body,
    owner: &str,
    origin: afreg_replication::EventOrigin,
) -> Result<Response> {
    let reg = &st.registry;
    if let (&Method::POST | &Method::PUT | &Method::PATCH, Some(repo)) = (method, ep.repo()) {
        if let Some((up, _)) = reg.mirror.upstream_for(repo) {
            return Err(RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "{repo} is a pull-through mirror of {} ({}): it takes no pushes; push to the upstream",
                    up.cfg.name, up.cfg.url
                ),
            ));
        }
    }
    match (ep, method.clone()) {
        // end-1: GET /v2/
        (Endpoint::Base, _) => Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response()),

        // GET /v2/_catalog?n=<integer>&last=<last>
        // (no end-N: the catalog is distribution's, not in the spec's table)
        (Endpoint::Catalog, _) => {
            let n = page_size(q, reg.cfg.storage.max_page_entries)?;
            let page = reg.catalog(Some(n), q.get("last")).await?;
            let link = page.more.then(|| next_link("/v2/_catalog", Some(n), page.items.last()));
            Ok(json_page(serde_json::json!({"repositories": page.items}), link))
        }

        // end-8a: GET /v2/<name>/tags/list
        // end-8b: GET /v2/<name>/tags/list?n=<integer>&last=<tagname>
        (Endpoint::Tags(repo), _) => {
            let n = page_size(q, reg.cfg.storage.max_page_entries)?;
            let page = reg.tags(&repo, Some(n), q.get("last")).await?;
            let link = page.more.then(|| next_link(&format!("/v2/{repo}/tags/list"), Some(n), page.items.last()));
            Ok(json_page(serde_json::json!({"name": repo.as_str(), "tags": page.items}), link))
        }

        // end-3: GET /v2/<name>/manifests/<reference>
        // end-3: HEAD /v2/<name>/manifests/<reference>
        (Endpoint::Manifest(repo, r), Method::GET | Method::HEAD) => {
            let get = method == Method::GET;
            let (m, stale) = match reg.mirror.upstream_for(&repo) {
                Some((up, name)) => reg.mirrored_manifest(&up, &name, &repo, &r, get, origin.clone()).await?,
                None => (reg.get_manifest(&repo, &r, get).await?, None),
            };
            let mut resp = if method == Method::GET {
                Body::from(m.body.clone()).into_response()
            } else {
                Body::empty().into_response()
            };
            let hs = resp.headers_mut();
            hs.insert(header::CONTENT_TYPE, hv(oci::manifest::served_type(&m.media_type)));
            hs.insert(header::CONTENT_LENGTH, HeaderValue::from(m.size as u64));
            hs.insert(oci::DOCKER_CONTENT_DIGEST, hv(&m.digest));
            hs.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
            if let Some(warning) = stale {
                hs.insert(header::WARNING, HeaderValue::from_static(warning));
            }
            metrics::counter!("afreg_sent_bytes_total").increment(if method == Method::GET {
                m.size as u64
            } else {
                0
            });
            if method == Method::GET && reg.pulls.wanted() {
                let tag = match &r {
                    oci::Reference::Tag(t) => t.to_string(),
                    oci::Reference::Digest(_) => String::new(),
                };
                let (digest, media_type) = (m.digest.clone(), m.media_type.clone());
                reg.pulls.record(pulled(reg, &repo, digest, tag, media_type, m.size, m.size, true, origin));
            }
            Ok(resp)
        }
        // end-7: PUT /v2/<name>/manifests/<reference>
        (Endpoint::Manifest(repo, r), Method::PUT) => {
            let max = reg.cfg.storage.max_manifest_bytes;
            let too_big =
                || RegistryError::new(ErrorCode::TooLarge, format!("manifest is larger than the limit of {max} bytes"));
            let mut body = body.into_data_stream();
            let mut bytes = Vec::new();
            while let Some(frame) = body.next().await {
                let frame = frame.map_err(|e| {
                    RegistryError::new(ErrorCode::ManifestInvalid, format!("reading the manifest: {e}")).with_source(e)
                })?;
                if bytes.len() + frame.len() > max {
                    // Read on (bounded) before answering, so the client gets the 413 rather
                    // than a connection closed under its upload.
                    discard(body, DRAIN_LIMIT).await;
                    return Err(too_big());
                }
                bytes.extend_from_slice(&frame);
            }
            let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let put = reg.put_manifest(&repo, &r, ct, &bytes, origin).await?;
            let mut resp = StatusCode::CREATED.into_response();
            let hs = resp.headers_mut();
            hs.insert(header::LOCATION, hv(&format!("/v2/{repo}/manifests/{}", put.digest)));
            hs.insert(oci::DOCKER_CONTENT_DIGEST, hv(put.digest.as_str()));
            if let Some(s) = put.subject {
                hs.insert(oci::OCI_SUBJECT, hv(s.as_str()));
            }
            Ok(resp)
        }
        // end-9: DELETE /v2/<name>/manifests/<reference>
        (Endpoint::Manifest(repo, r), Method::DELETE) => {
            reg.delete_manifest(&repo, &r, origin).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }

        // end-2: GET /v2/<name>/blobs/<digest>
        // end-2: HEAD /v2/<name>/blobs/<digest>
        (Endpoint::Blob(repo, d), Method::GET | Method::HEAD) => {
            get_blob(st, &repo, &d, method == Method::GET, h, origin).await
        }
        // end-10: DELETE /v2/<name>/blobs/<digest>
        (Endpoint::Blob(repo, d), Method::DELETE) => {
            reg.delete_blob(&repo, &d, origin).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }

        // end-4a: POST /v2/<name>/blobs/uploads/
        // end-4b: POST /v2/<name>/blobs/uploads/?digest=<digest>
        // end-11: POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other_name>
        (Endpoint::UploadStart(repo), _) => start_upload(st, &repo, q, h, body, owner, origin).await,
        // end-13: GET /v2/<name>/blobs/uploads/<reference>
        (Endpoint::Upload(repo, id), Method::GET) => {
            Ok(upload_accepted(&repo, &reg.upload_status(&repo, &id).await?, StatusCode::NO_CONTENT))
        }
        // end-5: PATCH /v2/<name>/blobs/uploads/<reference>
        (Endpoint::Upload(repo, id), Method::PATCH) => {
            let cr = content_range(h)?;
            let status =
                reg.upload_chunk(&repo, &id, cr, header_u64(h, header::CONTENT_LENGTH), body_stream(body)).await?;
            Ok(upload_accepted(&repo, &status, StatusCode::ACCEPTED))
        }
        // end-6: PUT /v2/<name>/blobs/uploads/<reference>?digest=<digest>
        (Endpoint::Upload(repo, id), Method::PUT) => {
            let digest = q.digest()?.ok_or_else(|| {
                RegistryError::new(ErrorCode::DigestInvalid, "the digest query parameter is required")
            })?;
            let cr = content_range(h)?;
            let length = header_u64(h, header::CONTENT_LENGTH);
            reg.finish_upload(&repo, &id, &digest, cr, length, body_stream(body), origin).await?;
            Ok(blob_created(&repo, &digest))
        }
        // DELETE /v2/<name>/blobs/uploads/<reference>
        // (no end-N: cancelling an upload is distribution's, not in the spec's table)
        (Endpoint::Upload(repo, id), Method::DELETE) => {
            reg.cancel_upload(&repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }

        // end-12a: GET /v2/<name>/referrers/<digest>
        // end-12b: GET /v2/<name>/referrers/<digest>?artifactType=<artifactType>
        (Endpoint::Referrers(repo, d), _) => {
            let filter = q.get("artifactType").filter(|t| !t.is_empty());
            let n = page_size(q, reg.cfg.storage.max_page_entries)?;
            let (body, more) = reg.referrers(&repo, &d, filter, n, q.get("last")).await?;
            let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, oci::manifest::OCI_INDEX)], body).into_response();
            if filter.is_some() {
                resp.headers_mut().insert(oci::OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
            }
            if let Some(last) = more {
                let mut link = next_link(&format!("/v2/{repo}/referrers/{d}"), Some(n), Some(&last));
                if let Some(t) = filter {
                    // The next page keeps the filter: `…&artifactType=…>; rel="next"`.
                    let t = url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
                    link = link.replacen(">; rel=", &format!("&artifactType={t}>; rel="), 1);
                }
                resp.headers_mut().insert(header::LINK, hv(&link));
            }
            Ok(resp)
        }

        // No spec line: a method the endpoint does not serve (`v2` refuses these before
        // dispatch; this arm keeps the match total).
        (ep, m) => {
            Err(RegistryError::new(ErrorCode::MethodNotAllowed, format!("{m} is not supported on {}", ep.route())))
        }
    }
}

/// How much of a refused body the node reads and drops so that the client sees the answer.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

async fn discard(mut body: axum::body::BodyDataStream, limit: usize) {
    let mut n = 0;
    while let Some(Ok(frame)) = body.next().await {
        n += frame.len();
        if n > limit {
            return;
        }
    }
}

fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
    match h.get(header::CONTENT_RANGE).map(|v| v.to_str().unwrap_or("")) {
        None => Ok(None),
        Some(v) => parse_content_range(v)
            .map(Some)
            .ok_or_else(|| RegistryError::new(ErrorCode::UploadRangeInvalid, format!("malformed Content-Range {v:?}"))),
    }
}

/// A `GET` served, as [`crate::pulls`] counts it (with the request only if pull events are
/// sent from here).
#[allow(clippy::too_many_arguments)]
fn pulled(
    reg: &crate::registry::Registry,
    repo: &RepoName,
    digest: String,
    tag: String,
    media_type: String,
    size: i64,
    bytes: i64,
    manifest: bool,
    origin: afreg_replication::EventOrigin,
) -> crate::pulls::Pull {
    crate::pulls::Pull {
        at: chrono::Utc::now(),
        repository: repo.to_string(),
        digest,
        tag,
        media_type,
        size,
        bytes,
        manifest,
        origin: reg.pulls.events.then_some(origin),
    }
}

async fn get_blob(
    st: &AppState,
    repo: &RepoName,
    d: &Digest,
    with_body: bool,
    h: &HeaderMap,
    origin: afreg_replication::EventOrigin,
) -> Result<Response> {
    let blob = match st.registry.blob_meta(repo, d).await {
        Err(e) if e.code == ErrorCode::BlobUnknown => match st.registry.mirror.upstream_for(repo) {
            Some((up, name)) => {
                match st.registry.mirrored_blob(up, name, repo, d, with_body, origin.clone()).await? {
                    Some(b) => return Ok(mirrored_blob(&st.registry, repo, d, b, origin)),
                    // Stored by another request while this one waited.
                    None => st.registry.blob_meta(repo, d).await?,
                }
            }
            None => return Err(e),
        },
        r => r?,
    };
    let size = blob.size as u64;
    let range = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => match parse_range(r, size) {
            Ok(r) => r,
            Err(Unsatisfiable) => {
                let mut resp = range_not_satisfiable().into_response();
                resp.headers_mut().insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                return Ok(resp);
            }
        },
        None => None,
    };
    let len = range.map(|r| r.end - r.start + 1).unwrap_or(size);
    let mut resp = if with_body {
        let stream = st.registry.blob_stream(d, &blob, range).await?;
        blob_pull(&st.registry, repo, d, blob.size, len as i64, stream, origin).into_response()
    } else {
        Body::empty().into_response()
    };
    let hs = resp.headers_mut();
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert(oci::DOCKER_CONTENT_DIGEST, hv(d.as_str()));
    hs.insert(header::ETAG, hv(&format!("\"{d}\"")));
    if let Some(r) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(header::CONTENT_RANGE, hv(&format!("bytes {}-{}/{size}", r.start, r.end)));
    }
    Ok(resp)
}

/// The body of a blob pull of `len` bytes (of `size`), counted as it streams and recorded
/// for the usage figures and pull events.
fn blob_pull<S>(
    reg: &crate::registry::Registry,
    repo: &RepoName,
    d: &Digest,
    size: i64,
    len: i64,
    stream: S,
    origin: afreg_replication::EventOrigin,
) -> Body
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Send + 'static,
{
    if reg.pulls.wanted() {
        let media_type = "application/octet-stream".to_owned();
        reg.pulls.record(pulled(reg, repo, d.to_string(), String::new(), media_type, size, len, false, origin));
    }
    Body::from_stream(stream.inspect(|b| {
        if let Ok(b) = b {
            metrics::counter!("afreg_sent_bytes_total").increment(b.len() as u64);
        }
    }))
}

/// A blob answered from the pull-through cache's upstream while it is stored.
fn mirrored_blob(
    reg: &crate::registry::Registry,
    repo: &RepoName,
    d: &Digest,
    b: crate::registry::mirror::MirroredBlob,
    origin: afreg_replication::EventOrigin,
) -> Response {
    let mut resp = match b.body {
        Some(body) => {
            let size = b.length.unwrap_or(0) as i64;
            blob_pull(reg, repo, d, size, size, body, origin).into_response()
        }
        None => Body::empty().into_response(),
    };
    let hs = resp.headers_mut();
    if let Some(n) = b.length {
        hs.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    hs.insert(oci::DOCKER_CONTENT_DIGEST, hv(d.as_str()));
    resp
}

async fn start_upload(
    st: &AppState,
    repo: &RepoName,
    q: &Query,
    h: &HeaderMap,
    body: Body,
    owner: &str,
    origin: afreg_replication::EventOrigin,
) -> Result<Response> {
    let reg = &st.registry;
    // end-11: POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other_name>
    if let Some(mount) = q.get("mount") {
        let digest: Digest = mount.parse()?;
        if let Some(from) = q.get("from") {
            let from: RepoName = from.parse()?;
            // Mount only what the caller may read; otherwise fall back to a plain upload.
            if st.auth.authorize(h, &Need::Repo(from.clone(), Action::Pull)).is_ok()
                && reg.mount(repo, &from, &digest, origin.clone()).await?
            {
                return Ok(blob_created(repo, &digest));
            }
        }
    } else if let Some(digest) = q.digest()? {
        // end-4b: POST /v2/<name>/blobs/uploads/?digest=<digest>
        let length = header_u64(h, header::CONTENT_LENGTH);
        reg.upload_monolithic(repo, &digest, length, body_stream(body), origin).await?;
        return Ok(blob_created(repo, &digest));
    }
    // end-4a: POST /v2/<name>/blobs/uploads/
    let status = reg.start_upload(repo, owner).await?;
    Ok(upload_accepted(repo, &status, StatusCode::ACCEPTED))
}

fn blob_created(repo: &RepoName, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let hs = resp.headers_mut();
    hs.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{d}")));
    hs.insert(oci::DOCKER_CONTENT_DIGEST, hv(d.as_str()));
    resp
}

fn upload_accepted(repo: &RepoName, s: &UploadStatus, status: StatusCode) -> Response {
    let mut resp = status.into_response();
    let hs = resp.headers_mut();
    hs.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/uploads/{}", s.id)));
    hs.insert(header::RANGE, hv(&format!("0-{}", s.size.saturating_sub(1))));
    hs.insert(oci::DOCKER_UPLOAD_UUID, hv(&s.id.to_string()));
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    resp
}

/// The page size of a list: the client's `n`, at most `max`; `max` when absent.
fn page_size(q: &Query, max: u32) -> Result<u32> {
    Ok(q.n()?.unwrap_or(max).min(max))
}

fn next_link(path: &str, n: Option<u32>, last: Option<&String>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        q.append_pair("n", &n.to_string());
    }
    if let Some(l) = last {
        q.append_pair("last", l);
    }
    format!("<{path}?{}>; rel=\"next\"", q.finish())
}

fn json_page(v: serde_json::Value, link: Option<String>) -> Response {
    let mut resp = axum::Json(v).into_response();
    if let Some(l) = link {
        resp.headers_mut().insert(header::LINK, hv(&l));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link("/v2/a/tags/list", Some(2), Some(&"b".to_string())),
            "</v2/a/tags/list?n=2&last=b>; rel=\"next\""
        );
    }

    #[test]
    fn needs() {
        let r: RepoName = "a".parse().unwrap();
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(
            super::super::need(&Endpoint::Blob(r.clone(), d.clone()), &Method::GET),
            Need::Repo(r.clone(), Action::Pull)
        );
        assert_eq!(
            super::super::need(&Endpoint::Blob(r.clone(), d), &Method::DELETE),
            Need::Repo(r.clone(), Action::Delete)
        );
        assert_eq!(
            super::super::need(&Endpoint::Upload(r.clone(), "x".into()), &Method::GET),
            Need::Repo(r.clone(), Action::Push)
        );
        assert_eq!(super::super::need(&Endpoint::UploadStart(r.clone()), &Method::POST), Need::Repo(r, Action::Push));
    }
}
