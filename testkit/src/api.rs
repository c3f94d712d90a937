//! A raw HTTP client of a node's registry API, for the tests that look at exact statuses,
//! headers and error bodies (bad input, outages): every response is read whole and carries the
//! request it answers (for assertion messages) and how long it took. Redirects are not
//! followed, so a test sees what the node answered.

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use crate::oci::OCI_MANIFEST;
use crate::sha256_digest;

/// A response, read whole.
pub struct Resp {
    /// `METHOD path` of the request.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `(code, message)` of the first entry of an OCI `{"errors":[…]}` body.
    pub fn error(&self) -> (String, String) {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{}: {} with a body that is not JSON ({e}): {:?}", self.what, self.status, self.text())
        });
        let first = &v["errors"][0];
        match (first["code"].as_str(), first["message"].as_str()) {
            (Some(c), Some(m)) => (c.to_owned(), m.to_owned()),
            _ => panic!("{}: {} without an OCI errors body: {v}", self.what, self.status),
        }
    }

    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}: expected {status}, got {}: {}", self.what, self.status, self.text());
        self
    }

    /// Asserts the status, a JSON body and the OCI error code; returns the error message.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        self.expect_status(status);
        let ct = self.header("content-type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "{}: error body has Content-Type {ct:?}", self.what);
        let (c, m) = self.error();
        assert_eq!(c, code, "{}: expected code {code}, got {c} ({m})", self.what);
        m
    }
}

/// The registry API of one node.
pub struct Api {
    pub client: Client,
    pub base: String,
}

impl Api {
    /// A client of the node at `base` (`http://HOST:PORT`); a request gives up after `timeout`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Api {
        let client = Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client");
        Api { client, base: base.into() }
    }

    /// `path` is absolute on the node (`/v2/...`) or a full URL.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends `METHOD path` as `f` shapes it; panics only when no answer comes.
    pub fn call(&self, method: Method, path: &str, f: impl FnOnce(RequestBuilder) -> RequestBuilder) -> Resp {
        let what = format!("{method} {path}");
        let started = Instant::now();
        let resp = f(self.client.request(method, self.url(path)))
            .send()
            .unwrap_or_else(|e| panic!("{what}: request failed after {:?}: {e:?}", started.elapsed()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}")).to_vec();
        Resp { what, status, headers, body, elapsed: started.elapsed() }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, |r| r)
    }

    /// A monolithic upload (`POST …/blobs/uploads/?digest=` with the bytes).
    pub fn post_blob(&self, repo: &str, data: &[u8]) -> Resp {
        let digest = sha256_digest(data);
        let data = data.to_vec();
        self.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), |r| {
            r.header("content-type", "application/octet-stream").body(data)
        })
    }

    /// Opens an upload session (`POST …/blobs/uploads/`); asserts 202 and returns its
    /// Location, a path on the node.
    pub fn start_upload(&self, repo: &str) -> String {
        let r = self.call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| r);
        r.expect_status(202);
        let loc = r.header("location").unwrap_or_else(|| panic!("{}: 202 without Location", r.what)).to_owned();
        assert!(loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")), "{}: Location {loc}", r.what);
        loc
    }

    /// `PUT` an OCI image manifest under `reference`.
    pub fn put_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> Resp {
        let body = body.to_vec();
        self.call(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"), |r| {
            r.header("content-type", OCI_MANIFEST).body(body)
        })
    }
}
