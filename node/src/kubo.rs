//! The Kubo RPC client: the only code that talks to IPFS. Blob bytes stream through it in both
//! directions without being held whole in memory; short calls carry timeouts, and `pin/add`
//! always passes Kubo's own `timeout=` because it otherwise waits forever for absent content.
//! Blob bytes are read through Kubo's HTTP gateway when `kubo.gateway_url` is set (the
//! default): the same reader as `cat`, without its 4 KiB flushes, and with `Range`.
//! Every stream is bounded too: no byte for `timeout_secs` ends it with an error, in either
//! direction, so a stalled client or a block no peer has never holds a request for ever.
//!
//! It also keeps Kubo's disk in check: bytes are added pinned (so Kubo's GC can never take
//! them before the upload path decides), every unpin marks the repository as holding garbage,
//! and [`Kubo::collect_garbage`] runs Kubo's `repo/gc` when there is some.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::config::KuboConfig;
use crate::oci::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum KuboError {
    #[error("IPFS (Kubo) is unreachable: {0}")]
    Unreachable(String),
    #[error("IPFS (Kubo) timed out during {0}")]
    Timeout(&'static str),
    #[error("IPFS (Kubo) {cmd} failed: {message}")]
    Api { cmd: &'static str, message: String },
    #[error("reading the upload body failed: {0}")]
    Body(String),
    #[error("no swarm address to dial")]
    NoAddress,
}

impl From<KuboError> for RegistryError {
    fn from(e: KuboError) -> Self {
        let err = match &e {
            KuboError::Unreachable(_) | KuboError::Timeout(_) => RegistryError::unavailable("blob storage", &e),
            KuboError::Api { message, .. } if message.contains("deadline") || message.contains("timeout") => {
                RegistryError::unavailable("blob storage", &e)
            }
            KuboError::Body(_) => RegistryError::new(crate::oci::ErrorCode::BlobUploadInvalid, e.to_string()),
            KuboError::Api { .. } | KuboError::NoAddress => RegistryError::internal(&e),
        };
        err.with_source(e)
    }
}

/// What `add` reports for the root of the DAG it built.
#[derive(Debug, Clone)]
pub struct Added {
    pub cid: String,
}

#[derive(Clone)]
pub struct Kubo {
    http: reqwest::Client,
    base: String,
    /// `kubo.gateway_url` without its trailing slash; `None`: read through the RPC `cat`.
    gateway: Option<String>,
    timeout: Duration,
    pin_timeout: Duration,
    gc_timeout: Duration,
    chunker: String,
    /// Set when something was unpinned or an add failed: `repo/gc` has work to do.
    garbage: Arc<AtomicBool>,
}

#[derive(Deserialize)]
struct ApiErr {
    #[serde(rename = "Message")]
    message: String,
}

fn classify(cmd: &'static str, e: reqwest::Error) -> KuboError {
    if e.is_timeout() {
        KuboError::Timeout(cmd)
    } else if e.is_connect() {
        KuboError::Unreachable(e.to_string())
    } else if e.is_body() || e.is_request() {
        // The request body (our client's upload) failed, or the connection broke mid-way.
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            if s.to_string().contains("upload body") {
                return KuboError::Body(s.to_string());
            }
            src = s.source();
        }
        KuboError::Unreachable(e.to_string())
    } else {
        KuboError::Unreachable(e.to_string())
    }
}

fn observe(cmd: &'static str, started: Instant) {
    metrics::histogram!("afreg_kubo_call_seconds", "cmd" => cmd).record(started.elapsed().as_secs_f64());
}

impl Kubo {
    pub fn new(cfg: &KuboConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        Self {
            http,
            base: cfg.api_url.trim_end_matches('/').to_owned(),
            gateway: Some(cfg.gateway_url.trim_end_matches('/').to_owned()).filter(|g| !g.is_empty()),
            timeout: Duration::from_secs(cfg.timeout_secs),
            pin_timeout: Duration::from_secs(cfg.pin_timeout_secs),
            gc_timeout: Duration::from_secs(cfg.gc_timeout_secs),
            chunker: cfg.chunker.clone(),
            garbage: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Notes that Kubo's repository holds unpinned blocks for its GC to remove.
    pub fn mark_garbage(&self) {
        self.garbage.store(true, Ordering::Relaxed);
    }

    /// Runs Kubo's `repo/gc` if something was unpinned since the last run; returns how many
    /// blocks it removed (`None`: nothing to do). Bounded by `gc_timeout_secs`. Kubo itself
    /// keeps GC apart from pins and pinned adds (its GC lock), so no block a pin or an upload
    /// in progress needs is removed.
    pub async fn collect_garbage(&self) -> Result<Option<u64>, KuboError> {
        if !self.garbage.swap(false, Ordering::Relaxed) {
            return Ok(None);
        }
        let started = Instant::now();
        let r = self.call("repo/gc", &[("quiet", "true")], self.gc_timeout).await;
        match r {
            Ok(body) => {
                observe("repo/gc", started);
                Ok(Some(body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64))
            }
            Err(e) => {
                self.mark_garbage();
                Err(e)
            }
        }
    }

    fn url(&self, cmd: &str) -> String {
        format!("{}/api/v0/{cmd}", self.base)
    }

    async fn check(cmd: &'static str, resp: reqwest::Response) -> Result<reqwest::Response, KuboError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiErr>(&text)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("HTTP {status}: {text}"));
        Err(KuboError::Api { cmd, message })
    }

    /// A short RPC call with the configured timeout; returns the body.
    async fn call(&self, cmd: &'static str, query: &[(&str, &str)], timeout: Duration) -> Result<Bytes, KuboError> {
        let started = Instant::now();
        let resp =
            self.http.post(self.url(cmd)).query(query).timeout(timeout).send().await.map_err(|e| classify(cmd, e))?;
        let resp = Self::check(cmd, resp).await?;
        let body = resp.bytes().await.map_err(|e| classify(cmd, e))?;
        observe(cmd, started);
        Ok(body)
    }

    /// Kubo's peer id; used by readiness checks.
    pub async fn id(&self) -> Result<String, KuboError> {
        #[derive(Deserialize)]
        struct Id {
            #[serde(rename = "ID")]
            id: String,
        }
        let b = self.call("id", &[], Duration::from_secs(3)).await?;
        serde_json::from_slice::<Id>(&b).map(|i| i.id).map_err(|e| KuboError::Api { cmd: "id", message: e.to_string() })
    }

    /// Kubo's peer id and the swarm addresses it announces (what other regions dial).
    pub async fn identity(&self) -> Result<(String, Vec<String>), KuboError> {
        #[derive(Deserialize)]
        struct Id {
            #[serde(rename = "ID")]
            id: String,
            #[serde(rename = "Addresses", default)]
            addresses: Option<Vec<String>>,
        }
        let b = self.call("id", &[], Duration::from_secs(3)).await?;
        let id = serde_json::from_slice::<Id>(&b).map_err(|e| KuboError::Api { cmd: "id", message: e.to_string() })?;
        // Without the `/p2p/<id>` suffix: the region list stores it once, as the peer id.
        let suffix = format!("/p2p/{}", id.id);
        let addrs =
            id.addresses.unwrap_or_default().into_iter().map(|a| a.trim_end_matches(&suffix).to_owned()).collect();
        Ok((id.id, addrs))
    }

    /// Pins with an explicit timeout (the cross-region pinner's, not the upload path's).
    pub async fn pin_add_within(&self, cid: &str, timeout: Duration) -> Result<(), KuboError> {
        let t = format!("{}ms", timeout.as_millis().max(1));
        self.call(
            "pin/add",
            &[("arg", cid), ("recursive", "true"), ("timeout", t.as_str())],
            timeout + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    /// Keeps Kubo connected to a peer (`swarm/peering/add` reconnects after drops) and dials
    /// it now. `addr` ends with `/p2p/<peer id>`.
    pub async fn peer_with(&self, addr: &str) -> Result<(), KuboError> {
        match self.call("swarm/peering/add", &[("arg", addr)], self.timeout).await {
            Ok(_) => {}
            Err(KuboError::Api { message, .. }) if message.contains("already") => {}
            Err(e) => return Err(e),
        }
        self.call("swarm/connect", &[("arg", addr)], self.timeout).await.map(|_| ())
    }

    /// Streams `body` into `add` as CIDv1 with raw leaves, pinned: Kubo's GC cannot take the
    /// bytes before the caller has checked the digest and recorded who needs them; the caller
    /// releases the pin of bytes it rejects. A client that sends nothing for `timeout_secs`
    /// fails the add (the body error), and so does a Kubo that stops reading (a timeout).
    pub async fn add<S>(&self, body: S) -> Result<Added, KuboError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let r = self.add_inner(body).await;
        if r.is_err() {
            // Kubo may have stored some blocks of the failed add, unpinned.
            self.mark_garbage();
        }
        r
    }

    async fn add_inner<S>(&self, body: S) -> Result<Added, KuboError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let started = Instant::now();
        // When the body last handed Kubo a chunk, and whether Kubo is waiting on the client
        // now: a stalled client is the body's own idle bound's to end (a body error, not a
        // timeout, so that it is answered 400 as the client's fault); Kubo not asking
        // for the next chunk for `timeout` is a stalled Kubo (503).
        let progress = Arc::new(AtomicU64::new(0));
        let on_client = Arc::new(AtomicBool::new(false));
        let (seen, waiting) = (progress.clone(), on_client.clone());
        let body = futures::stream::unfold(
            Box::pin(idle_bounded(body, self.timeout, std::io::ErrorKind::UnexpectedEof, "the upload body stalled")),
            move |mut s| {
                let (seen, waiting) = (seen.clone(), waiting.clone());
                async move {
                    waiting.store(true, Ordering::Relaxed);
                    let item = s.next().await;
                    waiting.store(false, Ordering::Relaxed);
                    seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    item.map(|i| (i, s))
                }
            },
        );
        let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(body))
            .file_name("blob")
            .mime_str("application/octet-stream")
            .expect("static mime");
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .http
            .post(self.url("add"))
            .query(&[
                ("cid-version", "1"),
                ("raw-leaves", "true"),
                ("chunker", self.chunker.as_str()),
                ("pin", "true"),
                ("quieter", "true"),
                ("progress", "false"),
            ])
            .multipart(form)
            .send();
        // Watchdog: Kubo must take a byte (or answer) every `timeout`.
        tokio::pin!(resp);
        let resp = loop {
            tokio::select! {
                r = &mut resp => break r.map_err(|e| classify("add", e))?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let idle = started.elapsed().saturating_sub(Duration::from_millis(progress.load(Ordering::Relaxed)));
                    if idle > self.timeout && !on_client.load(Ordering::Relaxed) {
                        return Err(KuboError::Timeout("add (Kubo took no bytes)"));
                    }
                }
            }
        };
        let resp = Self::check("add", resp).await?;
        let text = tokio::time::timeout(self.timeout, resp.text())
            .await
            .map_err(|_| KuboError::Timeout("add"))?
            .map_err(|e| classify("add", e))?;
        #[derive(Deserialize)]
        struct Line {
            #[serde(rename = "Hash")]
            hash: Option<String>,
            #[serde(rename = "Message")]
            message: Option<String>,
        }
        let mut cid = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let l: Line = serde_json::from_str(line)
                .map_err(|e| KuboError::Api { cmd: "add", message: format!("{e}: {line}") })?;
            if let Some(m) = l.message {
                return Err(KuboError::Api { cmd: "add", message: m });
            }
            if l.hash.is_some() {
                cid = l.hash;
            }
        }
        observe("add", started);
        cid.map(|cid| Added { cid }).ok_or(KuboError::Api { cmd: "add", message: "no CID in the response".into() })
    }

    /// Streams `length` bytes (or all, if `None`) of `cid` from `offset`: through the gateway
    /// if there is one, else the RPC `cat`. The first byte must come within `timeout_secs`,
    /// and so must every next one.
    pub async fn cat(
        &self,
        cid: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, KuboError> {
        let stream = match &self.gateway {
            Some(gw) => self.gateway_get(gw, cid, offset, length).await?.left_stream(),
            None => self.rpc_cat(cid, offset, length).await?.right_stream(),
        };
        Ok(idle_bounded(stream, self.timeout, std::io::ErrorKind::TimedOut, "IPFS (Kubo) stalled sending the blob"))
    }

    /// `GET {gateway}/ipfs/{cid}`, with a `Range` for part of it. Kubo answers 504 when it
    /// cannot retrieve the content within its `Gateway.RetrievalTimeout`: that is a timeout
    /// (503 to the client), as is a gateway that does not answer in time.
    async fn gateway_get(
        &self,
        gw: &str,
        cid: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, KuboError> {
        const CMD: &str = "gateway GET";
        let started = Instant::now();
        let mut req = self.http.get(format!("{gw}/ipfs/{cid}"));
        let ranged = offset > 0 || length.is_some();
        if ranged {
            let range = match length {
                Some(0) => return Ok(futures::stream::empty().left_stream()),
                Some(l) => format!("bytes={offset}-{}", offset + l - 1),
                None => format!("bytes={offset}-"),
            };
            req = req.header(reqwest::header::RANGE, range);
        }
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| KuboError::Timeout(CMD))?
            .map_err(|e| classify(CMD, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::GATEWAY_TIMEOUT {
            return Err(KuboError::Timeout("gateway retrieval (the content was not found in time)"));
        }
        let expected = if ranged { reqwest::StatusCode::PARTIAL_CONTENT } else { reqwest::StatusCode::OK };
        if status != expected {
            let text = resp.text().await.unwrap_or_default();
            return Err(KuboError::Api {
                cmd: CMD,
                message: format!("HTTP {status} (expected {expected}): {}", text.trim()),
            });
        }
        observe(CMD, started);
        Ok(resp.bytes_stream().map_err(std::io::Error::other).right_stream())
    }

    async fn rpc_cat(
        &self,
        cid: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, KuboError> {
        let started = Instant::now();
        let mut q = vec![("arg", cid.to_owned()), ("offset", offset.to_string())];
        if let Some(l) = length {
            q.push(("length", l.to_string()));
        }
        let send = self.http.post(self.url("cat")).query(&q).send();
        let resp = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| KuboError::Timeout("cat"))?
            .map_err(|e| classify("cat", e))?;
        let resp = Self::check("cat", resp).await?;
        observe("cat", started);
        Ok(resp.bytes_stream().map_err(std::io::Error::other))
    }

    /// Stores a dag-pb block, pinned (recursively, under Kubo's GC lock, so its children must
    /// be here already); returns its CID.
    pub async fn block_put(&self, block: Vec<u8>) -> Result<String, KuboError> {
        const CMD: &str = "block/put";
        let started = Instant::now();
        let part = reqwest::multipart::Part::bytes(block).file_name("block");
        let resp = self
            .http
            .post(self.url(CMD))
            .query(&[("cid-codec", "dag-pb"), ("mhtype", "sha2-256"), ("pin", "true")])
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| classify(CMD, e))?;
        let body = Self::check(CMD, resp).await?.bytes().await.map_err(|e| classify(CMD, e))?;
        #[derive(Deserialize)]
        struct Put {
            #[serde(rename = "Key")]
            key: String,
        }
        observe(CMD, started);
        serde_json::from_slice::<Put>(&body)
            .map(|p| p.key)
            .map_err(|e| KuboError::Api { cmd: CMD, message: e.to_string() })
    }

    /// The raw leaves under `cid`, in file order (`refs`, recursive and not deduplicated, so a
    /// leaf that repeats is listed each time).
    pub async fn raw_leaves(&self, cid: &str) -> Result<Vec<String>, KuboError> {
        #[derive(Deserialize)]
        struct Ref {
            #[serde(rename = "Ref")]
            r: String,
            #[serde(rename = "Err", default)]
            err: String,
        }
        let body = self.call("refs", &[("arg", cid), ("recursive", "true"), ("unique", "false")], self.timeout).await?;
        let mut out = Vec::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r: Ref =
                serde_json::from_slice(line).map_err(|e| KuboError::Api { cmd: "refs", message: e.to_string() })?;
            if !r.err.is_empty() {
                return Err(KuboError::Api { cmd: "refs", message: r.err });
            }
            if crate::unixfs::is_raw(&r.r) {
                out.push(r.r);
            }
        }
        Ok(out)
    }

    /// Pins `cid` recursively, fetching missing blocks from connected peers, bounded by the
    /// pin timeout (passed to Kubo so that it stops the work too).
    pub async fn pin_add(&self, cid: &str) -> Result<(), KuboError> {
        let t = format!("{}s", self.pin_timeout.as_secs());
        self.call(
            "pin/add",
            &[("arg", cid), ("recursive", "true"), ("timeout", t.as_str())],
            self.pin_timeout + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    /// Makes sure `cid` has a recursive pin: asks first, and pins only a CID that has none
    /// (the upload path's CIDs were pinned by their own `add` a moment before). `pin/ls` of
    /// one CID answers from the pin set (about 1.5 ms on loopback), where `pin/add` of a CID
    /// that is already pinned still walks its DAG and flushes the pin set (5–10 ms).
    pub async fn ensure_pinned(&self, cid: &str) -> Result<(), KuboError> {
        if self.is_pinned(cid).await? {
            return Ok(());
        }
        self.pin_add(cid).await
    }

    /// Removes a recursive pin; a CID that is not pinned is not an error.
    pub async fn pin_rm(&self, cid: &str) -> Result<(), KuboError> {
        match self.call("pin/rm", &[("arg", cid), ("recursive", "true")], self.timeout).await {
            Ok(_) => {
                self.mark_garbage();
                Ok(())
            }
            Err(KuboError::Api { message, .. }) if message.contains("not pinned") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every CID with a recursive pin.
    pub async fn pinned(&self) -> Result<Vec<String>, KuboError> {
        #[derive(Deserialize)]
        struct Ls {
            #[serde(rename = "Keys", default)]
            keys: std::collections::HashMap<String, serde_json::Value>,
        }
        let b = self.call("pin/ls", &[("type", "recursive"), ("quiet", "true")], self.timeout).await?;
        let ls: Ls =
            serde_json::from_slice(&b).map_err(|e| KuboError::Api { cmd: "pin/ls", message: e.to_string() })?;
        Ok(ls.keys.into_keys().collect())
    }

    /// Whether `cid` carries a recursive pin.
    pub async fn is_pinned(&self, cid: &str) -> Result<bool, KuboError> {
        match self.call("pin/ls", &[("arg", cid), ("type", "recursive")], self.timeout).await {
            Ok(_) => Ok(true),
            Err(KuboError::Api { message, .. }) if message.contains("not pinned") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// `stream`, ended with an error of `kind` (`what`) when its next item takes longer than
/// `idle`. The clock runs only while the consumer waits for an item, so a slow reader is
/// never blamed on the stream.
pub fn idle_bounded<S>(
    stream: S,
    idle: Duration,
    kind: std::io::ErrorKind,
    what: &'static str,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    futures::stream::unfold(Some(Box::pin(stream)), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((Err(std::io::Error::new(kind, format!("{what}: no bytes for {idle:?}"))), None)),
        }
    })
}

/// The CID Kubo gives a blob that fits in one raw-leaf chunk: `b` + base32(0x01 0x55 0x12 0x20 ‖ sha256).
pub fn raw_cid_for_sha256(hash: &[u8; 32]) -> String {
    crate::unixfs::cid_v1(crate::unixfs::RAW, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[tokio::test]
    async fn a_stalled_stream_ends_with_an_error_after_the_idle_timeout() {
        let parts = futures::stream::iter(vec![Ok(Bytes::from_static(b"a"))]).chain(futures::stream::pending());
        let mut s = Box::pin(idle_bounded(parts, Duration::from_millis(200), std::io::ErrorKind::TimedOut, "test"));
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"a"));
        let t = Instant::now();
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(s.next().await.is_none(), "the stream ends after its error");
    }

    #[test]
    fn raw_cid_matches_kubo() {
        let h: [u8; 32] = sha2::Sha256::digest(b"hello world").into();
        assert_eq!(raw_cid_for_sha256(&h), "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e");
    }
}
