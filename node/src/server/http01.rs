//! ACME HTTP-01 for a name every region shares. GeoDNS answers the global name with the region
//! nearest to whoever asks, so the CA checking region A's order can be sent to region B, and
//! with several vantage points to several regions at once. Each region therefore answers
//! `/.well-known/acme-challenge/{token}` for every region: its own challenge from rustls-acme's
//! resolver, any other by asking the other regions on the same port.
//!
//! The other regions are the replicated region list's, those `cluster.discovery_zone` lists
//! (what a new cluster knows before its region list is replicated), and the configured
//! `server.acme.peers`, all on `server.acme.http_port`. They are asked in plain
//! HTTP, as the CA itself asks: a key authorization is public by design (RFC 8555 section 8.3:
//! the token and the account key's thumbprint), and a region may not have a certificate yet.
//! A forwarded request carries [`FORWARDED`] and is answered from the local resolver only, so a
//! question travels one hop at most.
//!
//! Whoever controls one listed host (a recycled Akash address, a dangling DNS name) must not get
//! a certificate for the cluster's names by answering with its own ACME account's key
//! authorization. So:
//! - an answer counts only with its **proof**: [`FORWARDED`] carries a fresh nonce, and the
//!   answering region returns [`PROOF`], an HMAC-SHA256 under the cluster secret of the nonce and
//!   the key authorization. Only a process of this cluster (whose rustls-acme answers for the
//!   cluster's own ACME accounts) can make one; the secret itself never crosses the wire. (A
//!   check of the account thumbprint would need every region's account key, which rustls-acme
//!   keeps in each region's own cache; the proof covers every account the cluster uses.)
//! - only the names the cluster certifies (`server.acme.domains`) are answered: a request whose
//!   `Host` is another name gets 404 without being forwarded;
//! - the fan-out is bounded: at most [`MAX_FORWARDS`] questions are forwarded at once (one
//!   waits up to [`ASK_TIMEOUT`] for its turn rather than failing at once), and one client may
//!   start at most [`FORWARDS_PER_CLIENT`] a second, so a stranger's flood of unknown tokens is
//!   not multiplied across the cluster and does not crowd out the CA's own checks.
//!
//! rustls-acme answers its own challenges (`get_http_01_key_auth`); nothing in it asks
//! elsewhere, hence this module.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rustls_acme::ResolvesServerCertAcme;
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use afreg_config::{AcmeConfig, Config};
use afreg_deploy::discovery::{self, NameServer};
use afreg_replication::store::regions;

/// Marks a question one region asks another, with the nonce its proof must cover; it is
/// answered locally only.
pub const FORWARDED: &str = "afreg-acme-forwarded";
/// The answer's proof that a process of this cluster gave it (see the module doc).
pub const PROOF: &str = "afreg-acme-proof";
/// Questions forwarded at once.
pub const MAX_FORWARDS: usize = 16;
/// Questions one client (an IPv4 address or an IPv6 /64) may have forwarded a second (burst:
/// twice that). A CA checks from a few vantage points, a handful of times per order.
pub const FORWARDS_PER_CLIENT: u32 = 5;
/// How long one region waits for another's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Responder {
    resolver: Arc<ResolvesServerCertAcme>,
    /// `server.acme.peers`.
    peers: Vec<String>,
    /// This region's own host (`server.public_url`), never asked.
    own_host: Option<String>,
    /// The port every region answers on (`server.acme.http_port`).
    port: u16,
    pool: PgPool,
    /// `cluster.discovery_zone`, and the DNS server to ask.
    discovery: Option<(String, NameServer)>,
    http: reqwest::Client,
    forwards: Semaphore,
    per_client: DefaultKeyedRateLimiter<crate::client::ClientKey>,
    clients: crate::client::ClientAddresses,
    /// `server.acme.domains`, lower case: the only `Host`s answered.
    names: Vec<String>,
    /// The cluster secret, the key of every [`PROOF`].
    secret: afreg_replication::secret::ClusterSecret,
}

impl Responder {
    pub fn new(
        resolver: Arc<ResolvesServerCertAcme>,
        acme: &AcmeConfig,
        cfg: &Config,
        pool: PgPool,
    ) -> anyhow::Result<Responder> {
        let ns = cfg.cluster.dns_server.map(NameServer::At).unwrap_or(NameServer::System);
        Ok(Responder {
            resolver,
            peers: acme.peers.clone(),
            own_host: host_of(&cfg.server.public_url),
            port: acme.http_port,
            pool,
            discovery: cfg.cluster.discovery_zone.clone().map(|z| (z, ns)),
            http: reqwest::Client::builder()
                .timeout(ASK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            forwards: Semaphore::new(MAX_FORWARDS),
            per_client: RateLimiter::keyed(
                Quota::per_second(NonZeroU32::new(FORWARDS_PER_CLIENT).unwrap())
                    .allow_burst(NonZeroU32::new(2 * FORWARDS_PER_CLIENT).unwrap()),
            ),
            clients: crate::client::ClientAddresses::new(&cfg.server),
            names: acme.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            secret: crate::replica::cluster_secret(&cfg.cluster, true)?,
        })
    }

    /// Whether `host` (a `Host` header, with or without a port) is a name the cluster certifies.
    pub fn certifies(&self, host: &str) -> bool {
        let name =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The MAC of a [`PROOF`]: `key_auth` asked with `nonce`, under the cluster secret.
    fn mac(&self, nonce: &str, key_auth: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes()).expect("HMAC takes any key");
        for part in [b"afreg acme http-01\n".as_slice(), nonce.as_bytes(), b"\n", key_auth.as_bytes()] {
            mac.update(part);
        }
        mac
    }

    /// The proof for `key_auth` asked with `nonce`.
    fn proof(&self, nonce: &str, key_auth: &str) -> String {
        hex::encode(self.mac(nonce, key_auth).finalize().into_bytes())
    }

    /// Whether `proof` is this cluster's for `key_auth` asked with `nonce` (constant time).
    fn proven(&self, nonce: &str, key_auth: &str, proof: &str) -> bool {
        hex::decode(proof).is_ok_and(|p| self.mac(nonce, key_auth).verify_slice(&p).is_ok())
    }

    /// The other regions' hosts: the replicated list's, the discovered and the configured ones,
    /// once each.
    async fn hosts(&self) -> Vec<String> {
        let mut hosts = self.peers.clone();
        let live = regions::live_regions(&self.pool).await.unwrap_or_default();
        hosts.extend(live.iter().filter_map(|r| host_of(&r.api_url)));
        if let Some((zone, ns)) = &self.discovery {
            let found = match discovery::resolver(*ns, None) {
                Ok(r) => discovery::discover_internal(&r, zone).await.unwrap_or_default(),
                Err(_) => vec![],
            };
            hosts.extend(found.into_iter().map(|p| p.host));
        }
        hosts.sort();
        hosts.dedup();
        hosts.retain(|h| Some(h) != self.own_host.as_ref());
        hosts
    }

    /// The key authorization for `token` and, when `forwarded` with a nonce, its proof: this
    /// node's, or (unless `forwarded`) the first other region's that has it with a valid proof.
    pub async fn answer(
        &self,
        token: &str,
        forwarded: Option<&str>,
        client: IpAddr,
    ) -> Option<(String, Option<String>)> {
        if let Some(key_auth) = self.resolver.get_http_01_key_auth(token) {
            let proof = forwarded.map(|nonce| self.proof(nonce, &key_auth));
            return Some((key_auth, proof));
        }
        if forwarded.is_some() || !is_token(token) {
            return None;
        }
        if self.per_client.check_key(&self.clients.key(client)).is_err() {
            return None;
        }
        let _permit = tokio::time::timeout(ASK_TIMEOUT, self.forwards.acquire()).await.ok()?.ok()?;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let asks = self.hosts().await.into_iter().map(|host| {
            let url = format!("http://{host}:{}/.well-known/acme-challenge/{token}", self.port);
            let http = self.http.clone();
            let nonce = nonce.clone();
            async move {
                let r = http.get(&url).header(FORWARDED, &nonce).send().await.ok()?;
                if r.status() != StatusCode::OK {
                    return None;
                }
                let proof = r.headers().get(PROOF).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let key_auth = r.text().await.ok().filter(|k| k.starts_with(token) && k.len() < 1024)?;
                if proof.is_some_and(|p| self.proven(&nonce, &key_auth, &p)) {
                    Some(key_auth)
                } else {
                    tracing::warn!(event = "acme_answer_unproven", host = %host,
                        "a listed host answered an ACME challenge without this cluster's proof; ignored");
                    None
                }
            }
        });
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        while let Some(got) = asks.next().await {
            if let Some(key_auth) = got {
                return Some((key_auth, None));
            }
        }
        None
    }
}

/// An ACME token: base64url, at least 128 bits of entropy (RFC 8555 section 8.1).
fn is_token(t: &str) -> bool {
    (22..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok()?.host_str().map(str::to_owned)
}

async fn challenge(
    State(r): State<Arc<Responder>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let forwarded = headers.get(FORWARDED).map(|v| v.to_str().unwrap_or(""));
    // A forwarded question names no host of ours (the asker dials an address); it is answered
    // from the local resolver only, with a proof, so it may not be refused by name.
    if forwarded.is_none() && !r.certifies(host) {
        return (StatusCode::NOT_FOUND, "this cluster certifies no such name\n").into_response();
    }
    match r.answer(&token, forwarded, peer.ip()).await {
        Some((key_auth, proof)) => {
            let mut resp = ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], key_auth).into_response();
            if let Some(p) = proof.and_then(|p| axum::http::HeaderValue::from_str(&p).ok()) {
                resp.headers_mut().insert(PROOF, p);
            }
            resp
        }
        None => (StatusCode::NOT_FOUND, "no such ACME challenge\n").into_response(),
    }
}

async fn elsewhere() -> Response {
    (StatusCode::NOT_FOUND, "this port answers ACME HTTP-01 challenges only; the registry is served over HTTPS\n")
        .into_response()
}

/// Binds `listen` (a start-up error if it cannot) and serves the challenges there until `stop`.
pub async fn start(
    listen: SocketAddr,
    responder: Arc<Responder>,
    limits: super::listener::Limits,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .fallback(elsewhere)
        .with_state(responder);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.acme.http_listen {listen}: {e}"))?;
    tracing::info!(event = "acme_http01_listening", addr = %listen, "answering ACME HTTP-01 challenges for every region");
    Ok(tokio::spawn(async move {
        if let Err(e) = super::listener::serve("acme", listener, app, None, limits, stop.cancelled_owned()).await {
            tracing::error!(event = "acme_http01_failed", error = %e, "ACME HTTP-01 responder stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::{host_of, is_token};

    #[test]
    fn only_base64url_tokens_of_acme_length_are_forwarded() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!is_token("short"));
        assert!(!is_token("../../etc/passwd-aaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!is_token(&"a".repeat(257)));
    }

    #[test]
    fn the_host_of_a_public_url() {
        assert_eq!(host_of("https://registry-eu.example.org:443/").as_deref(), Some("registry-eu.example.org"));
        assert_eq!(host_of("http://127.0.0.2:5000").as_deref(), Some("127.0.0.2"));
        assert_eq!(host_of("not a url"), None);
    }
}
