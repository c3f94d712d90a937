//! The public API's request rates, charged by what a request costs. Each client (an IPv4
//! address or an IPv6 prefix, see [`crate::client`]), and each bearer token that verifies (so
//! one stolen or shared token cannot drive the node from many addresses), has two buckets (governor's GCRA, a burst of ten seconds'
//! worth), then 429 `TOOMANYREQUESTS` with `Retry-After`:
//! - **reads** (`GET`/`HEAD` of `/v2/`, a manifest, a blob, a tag list, referrers) take from
//!   `server.reads_per_second_per_*`, set by default above what a node can serve, so that one
//!   heavy honest client (a CI fleet behind one NAT address) is never throttled below the
//!   node's own speed;
//! - **everything else** (upload sessions, writes, deletes, `/token`, the catalog) takes from
//!   `server.requests_per_second_per_*`, and so does every answer of 401 or 403 on top of what
//!   the request already took: guessing credentials or probing repositories costs as much as
//!   a write, however cheap the request looked.
//!
//! Only a token that verifies (signature, expiry: the token cache's answer, so a token seen
//! before costs a lookup) gets a bucket of its own: a random `Authorization` value is no
//! credential and earns no fresh bucket, and is counted only against its client's. Tokens are
//! keyed by a keyed hash, so the limiter's memory holds no token. Clients and tokens that went
//! quiet are forgotten once a minute.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ClientAddr;
use crate::auth::tokens::Keys;
use crate::client::{ClientAddresses, ClientKey};
use crate::oci::{ErrorCode, RegistryError};

const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What a request costs: which pair of buckets it takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Read,
    Costly,
}

impl Cost {
    /// `GET`/`HEAD` under `/v2/` except upload sessions, the catalog and afreg's own endpoints
    /// (`/v2/_afreg/…`: usage asks every region) are reads.
    pub fn of(method: &axum::http::Method, path: &str) -> Cost {
        use axum::http::Method;
        let read_method = *method == Method::GET || *method == Method::HEAD;
        let v2 = path == "/v2" || path.starts_with("/v2/");
        if read_method
            && v2
            && !path.contains("/blobs/uploads")
            && !path.starts_with("/v2/_catalog")
            && !path.starts_with("/v2/_afreg/")
        {
            Cost::Read
        } else {
            Cost::Costly
        }
    }
}

/// One kind of key's two buckets.
struct Buckets<K: Hash + Eq + Clone> {
    reads: Option<DefaultKeyedRateLimiter<K>>,
    costly: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(reads_per_second: u32, costly_per_second: u32) -> Self {
        Buckets { reads: limiter(reads_per_second), costly: limiter(costly_per_second) }
    }

    fn check(&self, key: &K, cost: Cost) -> Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>> {
        let bucket = match cost {
            Cost::Read => &self.reads,
            Cost::Costly => &self.costly,
        };
        bucket.as_ref().map_or(Ok(()), |l| l.check_key(key))
    }

    fn retain_recent(&self) {
        for l in [&self.reads, &self.costly].into_iter().flatten() {
            l.retain_recent();
        }
    }
}

pub struct RequestLimits {
    clients: ClientAddresses,
    tokens: std::sync::Arc<Keys>,
    per_client: Buckets<ClientKey>,
    per_token: Buckets<u64>,
    keys: std::collections::hash_map::RandomState,
    last_sweep: Mutex<Instant>,
    refusal_delay: Duration,
}

fn limiter<K: Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let n = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(10)).unwrap_or(n);
    Some(RateLimiter::keyed(Quota::per_second(n).allow_burst(burst)))
}

impl RequestLimits {
    pub fn new(cfg: &afreg_config::ServerConfig, tokens: std::sync::Arc<Keys>) -> RequestLimits {
        RequestLimits {
            clients: ClientAddresses::new(cfg),
            tokens,
            per_client: Buckets::new(cfg.reads_per_second_per_client, cfg.requests_per_second_per_client),
            per_token: Buckets::new(cfg.reads_per_second_per_token, cfg.requests_per_second_per_token),
            keys: Default::default(),
            last_sweep: Mutex::new(Instant::now()),
            refusal_delay: Duration::from_millis(cfg.refusal_delay_ms),
        }
    }

    /// Counts one request of `cost` from `client` with `bearer` (its bearer token, if any)
    /// against the client's buckets for that cost, and the token's if it verifies.
    pub fn check(&self, client: ClientKey, bearer: Option<&str>, cost: Cost) -> Result<(), RegistryError> {
        self.sweep();
        self.per_client.check(&client, cost).map_err(|e| refusal("address", e))?;
        if let Some(token) = bearer.filter(|t| self.tokens.verify(t).is_ok()) {
            self.per_token.check(&self.keys.hash_one(token), cost).map_err(|e| refusal("token", e))?;
        }
        Ok(())
    }

    /// Charges a refused credential (an answer of 401 or 403) to the client's costly bucket,
    /// on top of what its request took; over the limit, the answer becomes a 429.
    fn charge_refusal(&self, client: ClientKey) -> Result<(), RegistryError> {
        self.per_client.check(&client, Cost::Costly).map_err(|e| refusal("address", e))
    }

    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() >= SWEEP_EVERY {
            *last = Instant::now();
            self.per_client.retain_recent();
            self.per_token.retain_recent();
        }
    }
}

/// 429 for `who` (this address, this token), with the wait the bucket names.
fn refusal(who: &str, e: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> RegistryError {
    let wait = e.wait_time_from(DefaultClock::default().now());
    RegistryError::too_many_requests(format!("too many requests from this {who}; slow down"), wait.as_secs().max(1))
}

/// The middleware: refuses a request over either limit before it is routed, and answers
/// every 429 (these, and the login and upload-session limits') only after about
/// `server.refusal_delay_ms`, so refusals cannot be looped at full speed.
pub async fn limit(State(limits): State<std::sync::Arc<RequestLimits>>, mut req: Request, next: Next) -> Response {
    let client = ClientAddr::of(req.extensions(), req.headers(), &limits.clients);
    req.extensions_mut().insert(client);
    let cost = Cost::of(req.method(), req.uri().path());
    let resp = match limits.check(client.key, crate::auth::bearer(req.headers()), cost) {
        Err(e) => {
            metrics::counter!("afreg_requests_limited_total").increment(1);
            e.into_response()
        }
        Ok(()) => next.run(req).await,
    };
    let resp = match resp.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match limits.charge_refusal(client.key) {
            Ok(()) => resp,
            Err(e) => {
                metrics::counter!("afreg_requests_limited_total").increment(1);
                e.into_response()
            }
        },
        _ => resp,
    };
    if resp.status() == ErrorCode::TooManyRequests.status() {
        // Between half and one and a half times the delay, at random: refusals of a burst come
        // back spread out, not as one synchronized wave (nor does the next burst arrive as one).
        let d = limits.refusal_delay.mul_f64(0.5 + rand::random::<f64>());
        tokio::time::sleep(d).await;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits over a fresh signing key, and two tokens it issued.
    fn limits(cfg: afreg_config::ServerConfig) -> (RequestLimits, String, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let auth = afreg_config::AuthConfig { signing_key: dir.path().join("k.pem"), ..Default::default() };
        let keys = std::sync::Arc::new(Keys::load_or_create(&auth).unwrap());
        let (t, u) = (keys.issue("t", vec![]).0, keys.issue("u", vec![]).0);
        (RequestLimits::new(&cfg, keys), t, u, dir)
    }

    fn key(ip: &str) -> ClientKey {
        ClientAddresses::default().key(ip.parse().unwrap())
    }

    #[test]
    fn a_client_and_a_token_are_limited_separately_after_the_burst() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 2,
            requests_per_second_per_token: 3,
            ..afreg_config::ServerConfig::default()
        };
        let (l, t, u, _dir) = limits(cfg);
        let (t, u) = (Some(t.as_str()), Some(u.as_str()));
        let (a, b) = (key("10.0.0.1"), key("10.0.0.2"));
        // 20 from one address without credentials, then refused.
        for _ in 0..20 {
            l.check(a, None, Cost::Costly).unwrap();
        }
        let e = l.check(a, None, Cost::Costly).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code.as_str(), "TOOMANYREQUESTS");
        assert!(e.retry_after.is_some());
        // One token from many addresses: 30, then refused, though each address is fresh.
        for i in 0..30u8 {
            l.check(key(&format!("10.1.0.{i}")), t, Cost::Costly).unwrap();
        }
        assert!(l.check(b, t, Cost::Costly).is_err());
        // Another token from a fresh address is not affected.
        l.check(b, u, Cost::Costly).unwrap();
    }

    #[test]
    fn addresses_of_one_ipv6_prefix_share_their_buckets() {
        let cfg = afreg_config::ServerConfig { requests_per_second_per_client: 2, ..Default::default() };
        let (l, _, _, _dir) = limits(cfg);
        // The burst of 20, spent from 20 addresses of one /64: the 21st address is refused.
        for i in 1..=20 {
            l.check(key(&format!("2001:db8:7:7::{i:x}")), None, Cost::Costly).unwrap();
        }
        let e = l.check(key("2001:db8:7:7:dead:beef:0:1"), None, Cost::Costly).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        // The next /64 is another client.
        l.check(key("2001:db8:7:8::1"), None, Cost::Costly).unwrap();
    }

    #[test]
    fn a_value_that_does_not_verify_earns_no_bucket_of_its_own() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 100,
            requests_per_second_per_token: 100,
            ..afreg_config::ServerConfig::default()
        };
        let (l, t, _, _dir) = limits(cfg);
        let tokens = || l.per_token.costly.as_ref().unwrap().len();
        // Random bearer values count against their client only: none gets a bucket, so none can
        // stand in for a credential or grow the limiter's memory. (Basic credentials carry no
        // bearer token at all; the login guard limits them.)
        for i in 0..50 {
            l.check(key("10.0.0.1"), Some(&format!("random-{i}")), Cost::Costly).unwrap();
        }
        assert_eq!(tokens(), 0, "values that are not tokens got buckets");
        // A token that verifies does.
        l.check(key("10.0.0.1"), Some(&t), Cost::Costly).unwrap();
        assert_eq!(tokens(), 1);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 0,
            requests_per_second_per_token: 0,
            reads_per_second_per_client: 0,
            reads_per_second_per_token: 0,
            ..afreg_config::ServerConfig::default()
        };
        let (l, t, _, _dir) = limits(cfg);
        for cost in [Cost::Read, Cost::Costly] {
            for _ in 0..10_000 {
                l.check(key("10.0.0.1"), Some(t.as_str()), cost).unwrap();
            }
        }
    }

    #[test]
    fn reads_and_costly_requests_take_from_separate_buckets() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 1,
            requests_per_second_per_token: 1,
            reads_per_second_per_client: 100,
            reads_per_second_per_token: 100,
            ..afreg_config::ServerConfig::default()
        };
        let (l, t, _, _dir) = limits(cfg);
        let (a, t) = (key("10.0.0.1"), Some(t.as_str()));
        for _ in 0..10 {
            l.check(a, t, Cost::Costly).unwrap();
        }
        assert!(l.check(a, t, Cost::Costly).is_err(), "the costly bucket is empty");
        // Reads go on, up to their own burst of 1000.
        for _ in 0..1000 {
            l.check(a, t, Cost::Read).unwrap();
        }
        assert!(l.check(a, t, Cost::Read).is_err(), "the read bucket is empty too");
    }

    #[test]
    fn a_refused_credential_costs_a_costly_request() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 1,
            reads_per_second_per_client: 100,
            ..afreg_config::ServerConfig::default()
        };
        let (l, _, _, _dir) = limits(cfg);
        let a = key("10.0.0.1");
        // Ten reads answered 401: the costly burst of ten is spent, and the next refusal is a
        // 429; reads that succeed go on.
        for _ in 0..10 {
            l.check(a, None, Cost::Read).unwrap();
            l.charge_refusal(a).unwrap();
        }
        l.check(a, None, Cost::Read).unwrap();
        assert_eq!(l.charge_refusal(a).unwrap_err().status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(l.check(a, None, Cost::Costly).is_err());
        l.check(a, None, Cost::Read).unwrap();
    }
    #[test]
    fn what_counts_as_a_read() {
        use axum::http::Method;
        for (m, p, want) in [
            (Method::GET, "/v2/", Cost::Read),
            (Method::GET, "/v2/a/b/manifests/latest", Cost::Read),
            (Method::HEAD, "/v2/a/blobs/sha256:00", Cost::Read),
            (Method::GET, "/v2/a/tags/list", Cost::Read),
            (Method::GET, "/v2/a/blobs/uploads/123", Cost::Costly),
            (Method::GET, "/v2/_catalog", Cost::Costly),
            (Method::GET, "/v2/_afreg/usage", Cost::Costly),
            (Method::GET, "/token", Cost::Costly),
            (Method::PUT, "/v2/a/manifests/latest", Cost::Costly),
            (Method::DELETE, "/v2/a/blobs/sha256:00", Cost::Costly),
            (Method::POST, "/v2/a/blobs/uploads/", Cost::Costly),
        ] {
            assert_eq!(Cost::of(&m, p), want, "{m} {p}");
        }
    }
}
