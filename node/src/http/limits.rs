//! The public API's request rates: each client address, and each credential (the whole
//! `Authorization` value, so one stolen or shared token cannot drive the node from many
//! addresses), gets `server.requests_per_second_per_*` requests a second with a burst of ten
//! seconds' worth (governor's GCRA), then 429 `TOOMANYREQUESTS` with `Retry-After`. Credentials
//! are keyed by a keyed hash, so the limiter's memory holds no token. Clients and tokens that
//! went quiet are forgotten once a minute.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::oci::{ErrorCode, RegistryError};

const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct RequestLimits {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_token: Option<DefaultKeyedRateLimiter<u64>>,
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
    pub fn new(cfg: &afreg_config::ServerConfig) -> RequestLimits {
        RequestLimits {
            per_client: limiter(cfg.requests_per_second_per_client),
            per_token: limiter(cfg.requests_per_second_per_token),
            keys: Default::default(),
            last_sweep: Mutex::new(Instant::now()),
            refusal_delay: Duration::from_millis(cfg.refusal_delay_ms),
        }
    }

    /// Counts one request from `client` with `authorization` (if any) against both limits.
    pub fn check(&self, client: IpAddr, authorization: Option<&[u8]>) -> Result<(), RegistryError> {
        self.sweep();
        let refuse = |who: &str, e: governor::NotUntil<_>| {
            let wait = e.wait_time_from(DefaultClock::default().now());
            RegistryError::too_many_requests(
                format!("too many requests from this {who}; slow down"),
                wait.as_secs().max(1),
            )
        };
        if let Some(l) = &self.per_client {
            l.check_key(&client).map_err(|e| refuse("address", e))?;
        }
        if let (Some(l), Some(auth)) = (&self.per_token, authorization) {
            l.check_key(&self.keys.hash_one(auth)).map_err(|e| refuse("token", e))?;
        }
        Ok(())
    }

    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() >= SWEEP_EVERY {
            *last = Instant::now();
            if let Some(l) = &self.per_client {
                l.retain_recent();
            }
            if let Some(l) = &self.per_token {
                l.retain_recent();
            }
        }
    }
}

/// The middleware: refuses a request over either limit before it is routed, and answers
/// every 429 (these, and the login and upload-session limits') only after about
/// `server.refusal_delay_ms`, so refusals cannot be looped at full speed.
pub async fn limit(
    State(limits): State<std::sync::Arc<RequestLimits>>,
    client: super::ClientAddr,
    req: Request,
    next: Next,
) -> Response {
    let auth = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let resp = match limits.check(client.0, auth) {
        Err(e) => {
            metrics::counter!("afreg_requests_limited_total").increment(1);
            e.into_response()
        }
        Ok(()) => next.run(req).await,
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

    #[test]
    fn a_client_and_a_token_are_limited_separately_after_the_burst() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 2,
            requests_per_second_per_token: 3,
            ..afreg_config::ServerConfig::default()
        };
        let l = RequestLimits::new(&cfg);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // 20 from one address without credentials, then refused.
        for _ in 0..20 {
            l.check(a, None).unwrap();
        }
        let e = l.check(a, None).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code.as_str(), "TOOMANYREQUESTS");
        assert!(e.retry_after.is_some());
        // One token from many addresses: 30, then refused, though each address is fresh.
        for i in 0..30u8 {
            l.check(IpAddr::from([10, 1, 0, i]), Some(b"Bearer t")).unwrap();
        }
        assert!(l.check(b, Some(b"Bearer t")).is_err());
        // Another token from a fresh address is not affected.
        l.check(b, Some(b"Bearer u")).unwrap();
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let cfg = afreg_config::ServerConfig {
            requests_per_second_per_client: 0,
            requests_per_second_per_token: 0,
            ..afreg_config::ServerConfig::default()
        };
        let l = RequestLimits::new(&cfg);
        for _ in 0..10_000 {
            l.check("10.0.0.1".parse().unwrap(), Some(b"Bearer t")).unwrap();
        }
    }
}
