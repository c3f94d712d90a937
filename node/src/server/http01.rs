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
//! question travels one hop at most; at most [`MAX_FORWARDS`] are forwarded at once, so a
//! stranger's flood of unknown tokens is not multiplied across the cluster.
//!
//! rustls-acme answers its own challenges (`get_http_01_key_auth`); nothing in it asks
//! elsewhere, hence this module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use rustls_acme::ResolvesServerCertAcme;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use afreg_config::{AcmeConfig, Config};
use afreg_deploy::discovery::{self, NameServer};
use afreg_replication::store::regions;

/// Marks a question one region asks another; it is answered locally only.
pub const FORWARDED: &str = "afreg-acme-forwarded";
/// Questions forwarded at once; more are answered from the local resolver only.
pub const MAX_FORWARDS: usize = 16;
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
        })
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

    /// The key authorization for `token`: this node's, or (unless `forwarded`) the first other
    /// region's that has it.
    pub async fn answer(&self, token: &str, forwarded: bool) -> Option<String> {
        if let Some(key_auth) = self.resolver.get_http_01_key_auth(token) {
            return Some(key_auth);
        }
        if forwarded || !is_token(token) {
            return None;
        }
        let _permit = self.forwards.try_acquire().ok()?;
        let asks = self.hosts().await.into_iter().map(|host| {
            let url = format!("http://{host}:{}/.well-known/acme-challenge/{token}", self.port);
            let http = self.http.clone();
            async move {
                let r = http.get(&url).header(FORWARDED, "1").send().await.ok()?;
                if r.status() != StatusCode::OK {
                    return None;
                }
                r.text().await.ok().filter(|k| k.starts_with(token) && k.len() < 1024)
            }
        });
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        while let Some(got) = asks.next().await {
            if got.is_some() {
                return got;
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

async fn challenge(State(r): State<Arc<Responder>>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    match r.answer(&token, headers.contains_key(FORWARDED)).await {
        Some(key_auth) => ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], key_auth).into_response(),
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
