//! The one plain-HTTP OCI client of the drills, the tests, the chaos scenarios and the
//! benches: images built from random bytes, pushed and pulled with the blocking reqwest client,
//! every byte checked against its digest. An [`Endpoint`] is a region as a client reaches it:
//! its URL and, for a registry that wants them, the credentials its tokens are fetched with.

use std::io::Read as _;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::json;

/// `count` random bytes from the kernel.
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut buf = vec![0u8; count];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// A random lowercase hex string of `len` characters (handy for repository and tag names).
pub fn random_hex(len: usize) -> String {
    let mut s = hex::encode(random_bytes(len.div_ceil(2)));
    s.truncate(len);
    s
}

/// `sha256:<hex>` of some bytes: an OCI digest.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A region as the drill's clients reach it: its name, its public URL and, when its registry
/// wants them, a user's credentials (tokens are fetched from the region's own `/token`, which
/// only it can verify).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub credentials: Option<(String, String)>,
}

/// How long a client built by [`Endpoint::client`] keeps its token before fetching a new one:
/// well inside the shortest token lifetime a node allows (60 s).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(45);

impl Endpoint {
    /// An endpoint that needs no credentials.
    pub fn open(name: &str, url: &str) -> Endpoint {
        Endpoint { name: name.to_owned(), url: url.trim_end_matches('/').to_owned(), credentials: None }
    }

    /// A client with no proxy and this request timeout that sends a bearer token for every
    /// action on `repo`, when the endpoint has credentials. Rebuild it every
    /// [`TOKEN_REFRESH`]; `Err` when the region would not issue a token.
    pub fn client(&self, repo: &str, timeout: Duration) -> Result<Client, String> {
        let mut b = Client::builder().no_proxy().timeout(timeout);
        if let Some((user, password)) = &self.credentials {
            let plain =
                Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
            let what = format!("a token for {user} from {}", self.name);
            let r = plain
                .get(format!("{}/token?service=afreg&scope=repository:{repo}:pull,push,delete", self.url))
                .basic_auth(user, Some(password))
                .send()
                .map_err(|e| format!("{what}: {e}"))?;
            let status = r.status();
            let body: serde_json::Value = r.json().unwrap_or_default();
            let token = match body["token"].as_str() {
                Some(t) if status.is_success() => t.to_owned(),
                _ => return Err(format!("{what}: {status} {body}")),
            };
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            b = b.default_headers(headers);
        }
        b.build().map_err(|e| e.to_string())
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A client with no proxy and a 60 s timeout.
pub fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// An image pushed with plain HTTP requests.
#[derive(Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// An image of a small random config and one random layer of `layer_bytes`.
pub fn new_image(layer_bytes: usize) -> Image {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","id":"{}"}}"#, random_hex(8)).into_bytes();
    image_of(config, random_bytes(layer_bytes))
}

/// The image whose config and single layer are these bytes.
pub fn image_of(config: Vec<u8>, layer: Vec<u8>) -> Image {
    image_of_layers(config, vec![layer])
}

/// The image of this config and these layers, in order.
pub fn image_of_layers(config: Vec<u8>, layers: Vec<Vec<u8>>) -> Image {
    let descriptors: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(l), "size": l.len()}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let mut blobs = vec![(sha256_digest(&config), config)];
    blobs.extend(layers.into_iter().map(|l| (sha256_digest(&l), l)));
    Image { digest: sha256_digest(&manifest), manifest, blobs }
}

impl Image {
    pub fn digests(&self) -> Vec<&str> {
        self.blobs.iter().map(|b| b.0.as_str()).collect()
    }
}

/// How the body of a [`Refusal`] without an answer starts when the connection was refused.
pub const NOT_CONNECTED: &str = "not connected: ";

/// A refused request: status (0 when no answer came), `Retry-After`, body.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Refusal {
    fn of(r: reqwest::blocking::Response) -> Refusal {
        Refusal {
            status: r.status().as_u16(),
            retry_after: r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from),
            body: r.text().unwrap_or_default(),
        }
    }
    /// No answer: `body` starts with [`NOT_CONNECTED`] when the connection was never made (so
    /// nothing was sent).
    fn lost(e: reqwest::Error) -> Refusal {
        let body = if e.is_connect() { format!("{NOT_CONNECTED}{e}") } else { e.to_string() };
        Refusal { status: 0, retry_after: None, body }
    }
}

fn expect(
    r: Result<reqwest::blocking::Response, reqwest::Error>,
    status: u16,
) -> Result<reqwest::blocking::Response, Refusal> {
    let r = r.map_err(Refusal::lost)?;
    if r.status().as_u16() == status {
        Ok(r)
    } else {
        Err(Refusal::of(r))
    }
}

/// Uploads one blob monolithically (`POST …/blobs/uploads/?digest=`).
pub fn upload_blob(c: &Client, url: &str, repo: &str, digest: &str, data: &[u8]) -> Result<(), Refusal> {
    expect(
        c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send(),
        201,
    )
    .map(|_| ())
}

/// Uploads one blob as a session: `POST`, one streamed `PATCH` (chunked transfer encoding,
/// as docker sends it), then `PUT ?digest=`.
pub fn upload_blob_streamed(c: &Client, url: &str, repo: &str, digest: &str, data: &[u8]) -> Result<(), Refusal> {
    let r = expect(c.post(format!("{url}/v2/{repo}/blobs/uploads/")).send(), 202)?;
    let location = absolute(url, r.headers()["location"].to_str().unwrap());
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(data.to_vec()));
    let r = expect(c.patch(&location).header("content-type", "application/octet-stream").body(body).send(), 202)?;
    let location = absolute(url, r.headers()["location"].to_str().unwrap());
    let sep = if location.contains('?') { '&' } else { '?' };
    expect(c.put(format!("{location}{sep}digest={digest}")).send(), 201).map(|_| ())
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// Pushes a manifest as `repo:reference`.
pub fn put_manifest(c: &Client, url: &str, repo: &str, reference: &str, manifest: &[u8]) -> Result<(), Refusal> {
    expect(
        c.put(format!("{url}/v2/{repo}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.to_vec())
            .send(),
        201,
    )
    .map(|_| ())
}

/// `DELETE …/manifests/<reference>` (a digest deletes the manifest, a tag only the tag):
/// the status of a 202 or 404, `Err` for anything else.
pub fn delete_manifest(c: &Client, url: &str, repo: &str, reference: &str) -> Result<u16, Refusal> {
    let r = c.delete(format!("{url}/v2/{repo}/manifests/{reference}")).send().map_err(Refusal::lost)?;
    match r.status().as_u16() {
        s @ (202 | 404) => Ok(s),
        _ => Err(Refusal::of(r)),
    }
}

/// Pushes `img` as `repo:tag` (monolithic blob uploads, then the manifest); `Err` carries the
/// first non-201 answer.
pub fn push(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> Result<(), Refusal> {
    for (digest, data) in &img.blobs {
        upload_blob(c, url, repo, digest, data)?;
    }
    put_manifest(c, url, repo, tag, &img.manifest)
}

/// Like [`push`], returning how long each request took (the blobs, then the manifest).
pub fn push_timed(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> Result<Vec<Duration>, Refusal> {
    let mut took = Vec::new();
    for (digest, data) in &img.blobs {
        let started = Instant::now();
        upload_blob(c, url, repo, digest, data)?;
        took.push(started.elapsed());
    }
    let started = Instant::now();
    put_manifest(c, url, repo, tag, &img.manifest)?;
    took.push(started.elapsed());
    Ok(took)
}

/// GET of a manifest by tag or digest: status and body.
pub fn get_manifest(c: &Client, url: &str, repo: &str, reference: &str, query: &str) -> (u16, Vec<u8>) {
    try_get_manifest(c, url, repo, reference, query).unwrap_or_else(|e| panic!("{e}"))
}

/// [`get_manifest`], with `Err` when no answer came (or the body broke off).
pub fn try_get_manifest(
    c: &Client,
    url: &str,
    repo: &str,
    reference: &str,
    query: &str,
) -> Result<(u16, Vec<u8>), String> {
    let what = format!("GET {url}/v2/{repo}/manifests/{reference}{query}");
    let r = c
        .get(format!("{url}/v2/{repo}/manifests/{reference}{query}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .map_err(|e| format!("{what}: {e}"))?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().map_err(|e| format!("{what}: {e}"))?.to_vec()))
}

/// GET of a blob: status and body (`Err` when the transfer broke).
pub fn get_blob(c: &Client, url: &str, repo: &str, digest: &str) -> Result<(u16, Vec<u8>), String> {
    let r = c.get(format!("{url}/v2/{repo}/blobs/{digest}")).send().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.bytes().map_err(|e| format!("{e:?}"))?;
    Ok((status, body.to_vec()))
}

/// Whether `repo:tag` resolves to exactly `img`'s manifest at `url`.
pub fn serves(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) -> bool {
    let (status, body) = get_manifest(c, url, repo, tag, "");
    status == 200 && body == img.manifest
}

/// Pulls every byte of `img` (by `reference`, a tag or digest) from `url` and checks each
/// against its digest; `Err` says what was wrong.
pub fn check_pulls(c: &Client, url: &str, repo: &str, reference: &str, img: &Image) -> Result<(), String> {
    let (status, body) = try_get_manifest(c, url, repo, reference, "")?;
    if status != 200 {
        return Err(format!("GET manifest {repo}:{reference} from {url}: {status} {}", String::from_utf8_lossy(&body)));
    }
    if sha256_digest(&body) != img.digest {
        return Err(format!("manifest {repo}:{reference} from {url} is not {}", img.digest));
    }
    for (digest, data) in &img.blobs {
        match get_blob(c, url, repo, digest) {
            Ok((200, got)) if got.len() == data.len() && sha256_digest(&got) == *digest => {}
            Ok((status, got)) => {
                return Err(format!(
                    "GET blob {digest} of {repo}:{reference} from {url}: {status}, {} bytes",
                    got.len()
                ))
            }
            Err(e) => return Err(format!("GET blob {digest} of {repo}:{reference} from {url}: {e}")),
        }
    }
    Ok(())
}

/// Pulls every byte of `img` from `url` and checks each against its digest.
pub fn assert_pulls(c: &Client, url: &str, repo: &str, tag: &str, img: &Image) {
    if let Err(e) = check_pulls(c, url, repo, tag, img) {
        panic!("{e}");
    }
}
