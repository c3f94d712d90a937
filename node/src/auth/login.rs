//! Password checks that a stranger cannot turn into a weapon. An argon2 check costs about
//! 19 MiB and tens of milliseconds of CPU, so unbounded, concurrent wrong passwords exhaust a
//! region's memory; answered at full speed they are a password-guessing service; skipped for
//! unknown users they tell which user names exist. Here:
//! - at most `auth.login_concurrency` checks run at once (default: the number of cores); a
//!   check that waits longer than [`QUEUE_WAIT`] for its turn is answered 429;
//! - each client address and each user name gets `auth.login_attempts_per_minute_*` checks
//!   (governor's GCRA, burst = the minute's allowance), then 429 with `Retry-After`;
//! - an unknown user is checked against a dummy hash, so it costs what a known one does;
//! - the limits are checked before the user is looked up, so a refused attempt costs no
//!   database query, and only the first refusal per address a minute is logged;
//! - credentials verified in the last `auth.verified_cache_secs` are recognised by a keyed
//!   hash (HMAC-SHA256 under a key made at start, never stored) of the user and the password,
//!   bound to a keyed hash of the stored hash they matched, without argon2 and without counting
//!   against the limits: clients that send the same credentials for every token (docker does,
//!   per repository) are not slowed, and a changed password no longer matches. The password
//!   itself is kept nowhere.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::oci::RegistryError;

/// How long a password check waits for one of the bounded slots.
pub const QUEUE_WAIT: Duration = Duration::from_secs(3);
/// How often the limiters forget clients and users that went quiet.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Verified credentials remembered at most (a full cache is emptied, not grown).
const MAX_VERIFIED: usize = 10_000;

/// A verified credential: the keyed hash of the stored hash it matched, and when.
type Verified = ([u8; 32], Instant);

pub struct LoginGuard {
    checks: Semaphore,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<String>,
    /// Recently verified credentials: keyed hash of (user, password) → keyed hash of the stored
    /// hash they matched, and when.
    verified: Mutex<std::collections::HashMap<[u8; 32], Verified>>,
    /// One logged refusal per client address a minute.
    warned: DefaultKeyedRateLimiter<IpAddr>,
    verified_for: Duration,
    key: [u8; 32],
    /// What an unknown user's password is checked against.
    dummy_hash: String,
    last_sweep: Mutex<Instant>,
}

/// A login admitted by [`LoginGuard::admit`], to be finished by [`LoginGuard::verify`].
pub struct Admission {
    key: [u8; 32],
    counted: bool,
}

/// Why a login was not checked.
#[derive(Debug)]
pub enum Refused {
    /// Over a rate limit; try again after this long.
    Limited { who: &'static str, retry_after: Duration },
    /// Every check slot stayed busy for [`QUEUE_WAIT`].
    Busy,
}

impl From<Refused> for RegistryError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Limited { who, retry_after } => RegistryError::too_many_requests(
                format!("too many login attempts for this {who}; try again later"),
                retry_after.as_secs().max(1),
            ),
            Refused::Busy => RegistryError::too_many_requests("too many logins in progress; try again shortly", 1),
        }
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap())
}

impl LoginGuard {
    pub fn new(cfg: &AuthConfig) -> LoginGuard {
        let slots = match cfg.login_concurrency {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        LoginGuard {
            checks: Semaphore::new(slots),
            per_client: RateLimiter::keyed(per_minute(cfg.login_attempts_per_minute_per_client)),
            per_user: RateLimiter::keyed(per_minute(cfg.login_attempts_per_minute_per_user)),
            verified: Mutex::default(),
            warned: RateLimiter::keyed(per_minute(1)),
            verified_for: Duration::from_secs(cfg.verified_cache_secs),
            key: rand::random(),
            dummy_hash: super::hash_password(&hex::encode(rand::random::<[u8; 16]>())),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn mac(&self, parts: &[&str]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// The first step, before the user is looked up: credentials verified recently pass
    /// uncounted (the second step confirms them against the stored hash); anything else
    /// counts against the limits here, so a refused attempt costs no database query.
    pub fn admit(&self, client: IpAddr, user: &str, password: &str) -> Result<Admission, Refused> {
        self.sweep();
        let key = self.mac(&[user, password]);
        let recent = !self.verified_for.is_zero()
            && self.verified.lock().unwrap().get(&key).is_some_and(|(_, at)| at.elapsed() < self.verified_for);
        if !recent {
            self.count(client, user)?;
        }
        Ok(Admission { key, counted: !recent })
    }

    fn count(&self, client: IpAddr, user: &str) -> Result<(), Refused> {
        let limited = |who, e: governor::NotUntil<_>| Refused::Limited {
            who,
            retry_after: e.wait_time_from(DefaultClock::default().now()),
        };
        self.per_client.check_key(&client).map_err(|e| limited("client", e))?;
        self.per_user.check_key(&user.to_owned()).map_err(|e| limited("user name", e))?;
        Ok(())
    }

    /// The second step: whether `password` is `user`'s. `stored_hash` is the user's argon2
    /// hash, `None` for an unknown user (checked against a dummy hash all the same, and never
    /// true). Recently verified credentials whose stored hash is unchanged pass without argon2.
    pub async fn verify(
        &self,
        admission: Admission,
        client: IpAddr,
        user: &str,
        stored_hash: Option<&str>,
        password: &str,
    ) -> Result<bool, Refused> {
        let hash_mark = self.mac(&[stored_hash.unwrap_or("")]);
        if stored_hash.is_some() && !admission.counted {
            if let Some((mark, at)) = self.verified.lock().unwrap().get(&admission.key) {
                if *mark == hash_mark && at.elapsed() < self.verified_for {
                    return Ok(true);
                }
            }
        }
        if !admission.counted {
            // Recognised a moment ago, but the stored hash changed (or the user is gone).
            self.count(client, user)?;
        }
        let _slot = tokio::time::timeout(QUEUE_WAIT, self.checks.acquire())
            .await
            .map_err(|_| Refused::Busy)?
            .expect("never closed");
        let (hash, password) = (stored_hash.unwrap_or(&self.dummy_hash).to_owned(), password.to_owned());
        let matched =
            tokio::task::spawn_blocking(move || super::verify_password(&hash, &password)).await.unwrap_or(false);
        let ok = matched && stored_hash.is_some();
        if ok && !self.verified_for.is_zero() {
            let mut v = self.verified.lock().unwrap();
            if v.len() >= MAX_VERIFIED {
                v.retain(|_, (_, at)| at.elapsed() < self.verified_for);
                if v.len() >= MAX_VERIFIED {
                    v.clear();
                }
            }
            v.insert(admission.key, (hash_mark, Instant::now()));
        }
        Ok(ok)
    }

    /// Both steps at once, for a caller that has the stored hash already.
    pub async fn check(
        &self,
        client: IpAddr,
        user: &str,
        stored_hash: Option<&str>,
        password: &str,
    ) -> Result<bool, Refused> {
        let admission = self.admit(client, user, password)?;
        self.verify(admission, client, user, stored_hash, password).await
    }

    /// Whether a refusal for `client` should be logged: the first in a minute is, the rest
    /// are only counted, so a brute force cannot flood the log.
    pub fn log_refusal(&self, client: IpAddr) -> bool {
        self.warned.check_key(&client).is_ok()
    }

    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() >= SWEEP_EVERY {
            *last = Instant::now();
            self.per_client.retain_recent();
            self.per_user.retain_recent();
            self.warned.retain_recent();
            self.verified.lock().unwrap().retain(|_, (_, at)| at.elapsed() < self.verified_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(per_client: u32, per_user: u32) -> LoginGuard {
        let cfg = AuthConfig {
            login_attempts_per_minute_per_client: per_client,
            login_attempts_per_minute_per_user: per_user,
            ..AuthConfig::default()
        };
        LoginGuard::new(&cfg)
    }

    #[tokio::test]
    async fn a_user_name_is_limited_across_clients_and_a_client_across_user_names() {
        let g = guard(100, 3);
        let hash = super::super::hash_password("right");
        for i in 0..3 {
            assert!(!g.check(IpAddr::from([10, 0, 0, i]), "admin", Some(&hash), "wrong").await.unwrap());
        }
        let r = g.check(IpAddr::from([10, 0, 0, 9]), "admin", Some(&hash), "right").await;
        assert!(matches!(r, Err(Refused::Limited { who: "user name", .. })), "{r:?}");

        let g = guard(2, 100);
        let ip = IpAddr::from([10, 0, 0, 1]);
        for u in ["a", "b"] {
            assert!(!g.check(ip, u, None, "x").await.unwrap());
        }
        let r = g.check(ip, "c", None, "x").await;
        match r {
            Err(Refused::Limited { who: "client", retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn verified_credentials_are_recognised_without_counting_and_a_new_hash_does_not_match() {
        let g = guard(100, 1);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let hash = super::super::hash_password("right");
        assert!(g.check(ip, "admin", Some(&hash), "right").await.unwrap());
        // The user's one attempt a minute is spent, yet the same credentials still pass.
        for _ in 0..5 {
            assert!(g.check(ip, "admin", Some(&hash), "right").await.unwrap());
        }
        // A changed password (another stored hash) is checked again, and limited.
        let new_hash = super::super::hash_password("right");
        assert!(matches!(g.check(ip, "admin", Some(&new_hash), "right").await, Err(Refused::Limited { .. })));
    }

    #[test]
    fn past_the_limit_an_attempt_is_refused_before_the_user_is_looked_up() {
        let g = guard(2, 100);
        let ip = IpAddr::from([10, 0, 0, 1]);
        g.admit(ip, "admin", "a").unwrap();
        g.admit(ip, "admin", "b").unwrap();
        // No stored hash is needed to refuse the third: the caller never queries the database.
        assert!(matches!(g.admit(ip, "admin", "c"), Err(Refused::Limited { who: "client", .. })));
        assert!(g.log_refusal(ip), "the first refusal of a minute is logged");
        assert!(!g.log_refusal(ip), "the next ones are only counted");
    }

    #[tokio::test]
    async fn an_unknown_user_never_passes_even_with_the_dummy_password() {
        let g = guard(100, 100);
        assert!(!g.check(IpAddr::from([10, 0, 0, 1]), "nobody", None, "").await.unwrap());
    }
}
