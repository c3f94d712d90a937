//! Password checks that a stranger cannot turn into a weapon, and that never throttle a client
//! whose credentials are right. An argon2 check costs about 19 MiB and tens of milliseconds of
//! CPU, so unbounded, concurrent wrong passwords exhaust a region's memory; answered at full
//! speed they are a password-guessing service; skipped for unknown users they tell which user
//! names exist. Here:
//! - at most `auth.login_concurrency` checks run at once (default: the number of cores); a
//!   check that waits longer than [`QUEUE_WAIT`] for its turn is answered 429;
//! - **only failures count.** A wrong password counts against its (user name, client) pair,
//!   its client and its user name; past each one's allowance
//!   (`auth.login_failures_per_client_and_user`, `_per_client`, `_per_user`) further
//!   unrecognised logins there are refused (429 with `Retry-After`) for a lockout that doubles
//!   with each failure past the allowance, up to `auth.login_lockout_max_secs`, and is forgotten
//!   after that long without a failure. A client is an IPv4 address or an IPv6 prefix
//!   ([`crate::client`]);
//! - checks in flight count as failures until they are decided, and a refused attempt counts
//!   against its own pair: hundreds of concurrent guesses get the pair's allowance checked and
//!   the pair locked for the longest lockout, and a guesser cannot lock anyone else out;
//! - **the user name's own lockout never shuts out a client that logged in as that user**
//!   within `auth.login_known_client_secs` (nor does its client's), so wrong guesses from
//!   elsewhere cannot lock an account's usual clients out;
//! - credentials verified in the last `auth.verified_cache_secs` are recognised by a keyed
//!   hash (HMAC-SHA256 under a key made at start, never stored) of the user and the password,
//!   bound to a keyed hash of the stored hash they matched, without argon2 and without any
//!   limit: clients that send the same credentials for every token (docker does, per
//!   repository) are not slowed, and a changed password no longer matches. Concurrent logins
//!   with the same credentials (a CI fleet with one robot account) wait for the first one's
//!   check rather than each running argon2. The password itself is kept nowhere;
//! - an unknown user is checked against a dummy hash, so it costs what a known one does;
//! - the limits are checked before the user is looked up, so a refused attempt costs no
//!   database query, and only the first refusal per client a minute is logged.
//!
//! The failure records are hand-written: governor's GCRA (used for the request rates) refills at
//! a steady rate whatever happens, while a lockout must grow with the failures and must not be
//! spent by the attempts that succeed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::client::ClientKey;
use crate::config::AuthConfig;
use crate::oci::RegistryError;

/// How long a password check waits for one of the bounded slots.
pub const QUEUE_WAIT: Duration = Duration::from_secs(3);
/// How often the records of clients and users that went quiet are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Verified credentials (and known clients) remembered at most (a full map is emptied of its
/// stale entries, then cleared, not grown).
const MAX_REMEMBERED: usize = 10_000;
/// Failure records kept at most per kind; past it the oldest quiet ones go first.
const MAX_RECORDS: usize = 100_000;

/// A verified credential: the keyed hash of the stored hash it matched, and when.
type Verified = ([u8; 32], Instant);

/// The failures of one pair, client or user name.
#[derive(Debug, Default, Clone, Copy)]
struct Record {
    failures: u32,
    /// Checks admitted and not yet decided.
    in_flight: u32,
    last: Option<Instant>,
}

impl Record {
    /// How much longer this record refuses, if it does: none under `allowance`, then a lockout
    /// from the last failure that doubles with each failure past it, up to `max`.
    fn locked(&self, allowance: u32, max: Duration, now: Instant) -> Option<Duration> {
        let counted = self.failures + self.in_flight;
        if counted < allowance {
            return None;
        }
        let Some(last) = self.last else { return Some(Duration::from_secs(1)) };
        let doublings = (counted - allowance).min(30);
        let lockout = Duration::from_secs(1u64 << doublings).min(max);
        (last + lockout).checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Forgets failures after `max` without one.
    fn decay(&mut self, max: Duration, now: Instant) {
        if self.last.is_some_and(|l| now.duration_since(l) >= max) {
            self.failures = 0;
            self.last = None;
        }
    }

    fn fail(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.last = Some(now);
    }
}

#[derive(Default)]
struct Failures {
    pairs: HashMap<(String, ClientKey), Record>,
    clients: HashMap<ClientKey, Record>,
    users: HashMap<String, Record>,
    /// (user, client) pairs that logged in, and when.
    known: HashMap<(String, ClientKey), Instant>,
}

/// Keeps a map of remembered entries under [`MAX_REMEMBERED`]: when full, the entries that are
/// no longer `fresh` go, and if that is not enough, all of them.
fn make_room<K, V>(map: &mut HashMap<K, V>, fresh: impl FnMut(&K, &mut V) -> bool) {
    if map.len() >= MAX_REMEMBERED {
        map.retain(fresh);
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
    }
}

fn record<'a, K: std::hash::Hash + Eq + Clone>(map: &'a mut HashMap<K, Record>, key: &K) -> &'a mut Record {
    if map.len() >= MAX_RECORDS && !map.contains_key(key) {
        // Full (a flood of fresh keys): the records not in flight go, oldest first, so the
        // map never outgrows its bound. The ones dropped are only lockouts given up early.
        let mut quiet: Vec<(K, Option<Instant>)> =
            map.iter().filter(|(_, r)| r.in_flight == 0).map(|(k, r)| (k.clone(), r.last)).collect();
        quiet.sort_by_key(|(_, last)| *last);
        for (k, _) in quiet.into_iter().take(MAX_RECORDS / 10) {
            map.remove(&k);
        }
    }
    map.entry(key.clone()).or_default()
}

/// The allowances and lockouts, from `[auth]`.
#[derive(Debug, Clone, Copy)]
struct Allowances {
    per_pair: u32,
    per_client: u32,
    per_user: u32,
    lockout_max: Duration,
    known_for: Duration,
}

pub struct LoginGuard {
    checks: Semaphore,
    failures: Arc<Mutex<Failures>>,
    allowances: Allowances,
    /// Recently verified credentials: keyed hash of (user, password) → keyed hash of the stored
    /// hash they matched, and when.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// One check at a time per credential, so concurrent logins with the same credentials
    /// wait for the first one's answer.
    checking: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// One logged refusal per client a minute.
    warned: DefaultKeyedRateLimiter<ClientKey>,
    verified_for: Duration,
    key: [u8; 32],
    /// What an unknown user's password is checked against.
    dummy_hash: String,
    last_sweep: Mutex<Instant>,
}

/// A login admitted by [`LoginGuard::admit`], to be finished by [`LoginGuard::verify`]. Dropped
/// undecided (the user lookup failed), its check no longer counts as in flight.
pub struct Admission {
    key: [u8; 32],
    user: String,
    client: ClientKey,
    /// Whether it counts as in flight against its pair, client and user name (credentials that
    /// were recognised do not).
    counted: bool,
    failures: Arc<Mutex<Failures>>,
    _checking: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.counted {
            let mut f = self.failures.lock().unwrap();
            settle(&mut f, &self.user, self.client);
        }
    }
}

/// Takes a check out of flight.
fn settle(f: &mut Failures, user: &str, client: ClientKey) {
    let pair = (user.to_owned(), client);
    for r in [f.pairs.get_mut(&pair), f.clients.get_mut(&client), f.users.get_mut(user)].into_iter().flatten() {
        r.in_flight = r.in_flight.saturating_sub(1);
    }
}

/// Why a login was not checked.
#[derive(Debug)]
pub enum Refused {
    /// Locked out after failures; try again after this long.
    Limited { who: &'static str, retry_after: Duration },
    /// Every check slot stayed busy for [`QUEUE_WAIT`].
    Busy,
}

impl From<Refused> for RegistryError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Limited { who, retry_after } => RegistryError::too_many_requests(
                format!("too many failed logins for this {who}; try again later"),
                retry_after.as_secs().max(1),
            ),
            Refused::Busy => RegistryError::too_many_requests("too many logins in progress; try again shortly", 1),
        }
    }
}

impl LoginGuard {
    pub fn new(cfg: &AuthConfig) -> LoginGuard {
        let slots = match cfg.login_concurrency {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        LoginGuard {
            checks: Semaphore::new(slots),
            failures: Arc::default(),
            allowances: Allowances {
                per_pair: cfg.login_failures_per_client_and_user.max(1),
                per_client: cfg.login_failures_per_client.max(1),
                per_user: cfg.login_failures_per_user.max(1),
                lockout_max: Duration::from_secs(cfg.login_lockout_max_secs.max(1)),
                known_for: Duration::from_secs(cfg.login_known_client_secs),
            },
            verified: Mutex::default(),
            checking: Mutex::default(),
            warned: RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(1).unwrap())),
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

    fn recently_verified(&self, key: &[u8; 32]) -> bool {
        !self.verified_for.is_zero()
            && self.verified.lock().unwrap().get(key).is_some_and(|(_, at)| at.elapsed() < self.verified_for)
    }

    /// The first step, before the user is looked up: credentials verified recently pass
    /// uncounted (the second step confirms them against the stored hash). Anything else waits
    /// for a check of the same credentials already running, then is refused if its pair, its
    /// client or its user name is locked out, or else counts as in flight.
    pub async fn admit(&self, client: ClientKey, user: &str, password: &str) -> Result<Admission, Refused> {
        self.sweep();
        let key = self.mac(&[user, password]);
        let admission = |counted, checking| Admission {
            key,
            user: user.to_owned(),
            client,
            counted,
            failures: self.failures.clone(),
            _checking: checking,
        };
        if self.recently_verified(&key) {
            return Ok(admission(false, None));
        }
        let lock = self.checking.lock().unwrap().entry(key).or_default().clone();
        let checking = tokio::time::timeout(QUEUE_WAIT, lock.lock_owned()).await.map_err(|_| Refused::Busy)?;
        if self.recently_verified(&key) {
            return Ok(admission(false, None));
        }
        self.count(client, user)?;
        Ok(admission(true, Some(checking)))
    }

    /// Refuses an attempt that a lockout covers (counting it against its own pair), or counts
    /// it as in flight.
    fn count(&self, client: ClientKey, user: &str) -> Result<(), Refused> {
        let a = self.allowances;
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        let pair = (user.to_owned(), client);
        let known = f.known.get(&pair).is_some_and(|at| now.duration_since(*at) < a.known_for);
        let pair_record = record(&mut f.pairs, &pair);
        pair_record.decay(a.lockout_max, now);
        let mut refusal = pair_record.locked(a.per_pair, a.lockout_max, now).map(|d| ("client and user name", d));
        if refusal.is_none() && !known {
            let c = record(&mut f.clients, &client);
            c.decay(a.lockout_max, now);
            refusal = c.locked(a.per_client, a.lockout_max, now).map(|d| ("client", d));
        }
        if refusal.is_none() && !known {
            let u = record(&mut f.users, &user.to_owned());
            u.decay(a.lockout_max, now);
            refusal = u.locked(a.per_user, a.lockout_max, now).map(|d| ("user name", d));
        }
        if let Some((who, retry_after)) = refusal {
            // An attempt while locked out is one more failure of its own pair only: the pair's
            // lockout grows, and no one else's.
            record(&mut f.pairs, &pair).fail(now);
            return Err(Refused::Limited { who, retry_after });
        }
        record(&mut f.pairs, &pair).in_flight += 1;
        record(&mut f.clients, &client).in_flight += 1;
        record(&mut f.users, &user.to_owned()).in_flight += 1;
        Ok(())
    }

    /// Records a decided check.
    fn decided(&self, admission: &mut Admission, ok: bool) {
        if !admission.counted {
            return;
        }
        admission.counted = false;
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        settle(&mut f, &admission.user, admission.client);
        let pair = (admission.user.clone(), admission.client);
        if ok {
            f.pairs.remove(&pair);
            let known_for = self.allowances.known_for;
            make_room(&mut f.known, |_, at| now.duration_since(*at) < known_for);
            f.known.insert(pair, now);
        } else {
            record(&mut f.pairs, &pair).fail(now);
            record(&mut f.clients, &admission.client).fail(now);
            record(&mut f.users, &admission.user).fail(now);
        }
    }

    /// The second step: whether `password` is `user`'s. `stored_hash` is the user's argon2
    /// hash, `None` for an unknown user (checked against a dummy hash all the same, and never
    /// true). Recently verified credentials whose stored hash is unchanged pass without argon2.
    pub async fn verify(
        &self,
        mut admission: Admission,
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
            self.count(admission.client, &admission.user)?;
            admission.counted = true;
        }
        let _slot = tokio::time::timeout(QUEUE_WAIT, self.checks.acquire())
            .await
            .map_err(|_| Refused::Busy)?
            .expect("never closed");
        let (hash, password) = (stored_hash.unwrap_or(&self.dummy_hash).to_owned(), password.to_owned());
        let matched =
            tokio::task::spawn_blocking(move || super::verify_password(&hash, &password)).await.unwrap_or(false);
        let ok = matched && stored_hash.is_some();
        self.decided(&mut admission, ok);
        if ok && !self.verified_for.is_zero() {
            let mut v = self.verified.lock().unwrap();
            make_room(&mut v, |_, (_, at)| at.elapsed() < self.verified_for);
            v.insert(admission.key, (hash_mark, Instant::now()));
        }
        Ok(ok)
    }

    /// Both steps at once, for a caller that has the stored hash already.
    pub async fn check(
        &self,
        client: ClientKey,
        user: &str,
        stored_hash: Option<&str>,
        password: &str,
    ) -> Result<bool, Refused> {
        let admission = self.admit(client, user, password).await?;
        self.verify(admission, stored_hash, password).await
    }

    /// Whether a refusal for `client` should be logged: the first in a minute is, the rest
    /// are only counted, so a brute force cannot flood the log.
    pub fn log_refusal(&self, client: ClientKey) -> bool {
        self.warned.check_key(&client).is_ok()
    }

    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        self.warned.retain_recent();
        self.verified.lock().unwrap().retain(|_, (_, at)| at.elapsed() < self.verified_for);
        self.checking.lock().unwrap().retain(|_, lock| Arc::strong_count(lock) > 1);
        let (now, a) = (Instant::now(), self.allowances);
        let mut f = self.failures.lock().unwrap();
        let keep = |r: &mut Record| {
            r.decay(a.lockout_max, now);
            r.in_flight > 0 || r.failures > 0
        };
        f.pairs.retain(|_, r| keep(r));
        f.clients.retain(|_, r| keep(r));
        f.users.retain(|_, r| keep(r));
        f.known.retain(|_, at| now.duration_since(*at) < a.known_for);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(per_pair: u32, per_client: u32, per_user: u32) -> LoginGuard {
        let cfg = AuthConfig {
            login_failures_per_client_and_user: per_pair,
            login_failures_per_client: per_client,
            login_failures_per_user: per_user,
            ..AuthConfig::default()
        };
        LoginGuard::new(&cfg)
    }

    fn client(i: u8) -> ClientKey {
        crate::client::ClientAddresses::default().key(std::net::IpAddr::from([10, 0, 0, i]))
    }

    #[tokio::test]
    async fn wrong_guesses_lock_out_their_own_pair_and_never_a_right_password_from_elsewhere() {
        let g = guard(3, 100, 100);
        let hash = super::super::hash_password("right");
        for _ in 0..3 {
            assert!(!g.check(client(1), "admin", Some(&hash), "wrong").await.unwrap());
        }
        let r = g.check(client(1), "admin", Some(&hash), "wrong").await;
        assert!(matches!(r, Err(Refused::Limited { who: "client and user name", .. })), "{r:?}");
        // The same user name from another client, with the right password.
        assert!(g.check(client(2), "admin", Some(&hash), "right").await.unwrap());
    }

    #[tokio::test]
    async fn a_user_names_lockout_spares_the_clients_that_logged_in_as_it() {
        let g = guard(100, 100, 3);
        let hash = super::super::hash_password("right");
        assert!(g.check(client(9), "admin", Some(&hash), "right").await.unwrap());
        for i in 0..3 {
            assert!(!g.check(client(i), "admin", Some(&hash), "wrong").await.unwrap());
        }
        // Once the right password is no longer remembered as verified, a client new to this
        // user name is refused while the name is locked out…
        g.verified.lock().unwrap().clear();
        let r = g.check(client(5), "admin", Some(&hash), "right").await;
        assert!(matches!(r, Err(Refused::Limited { who: "user name", .. })), "{r:?}");
        // …but the one that logged in as it before is not, even with its check run again.
        assert!(g.check(client(9), "admin", Some(&hash), "right").await.unwrap());
    }

    #[tokio::test]
    async fn a_client_guessing_many_user_names_is_locked_out() {
        let g = guard(100, 2, 100);
        for u in ["a", "b"] {
            assert!(!g.check(client(1), u, None, "x").await.unwrap());
        }
        match g.check(client(1), "c", None, "x").await {
            Err(Refused::Limited { who: "client", retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn lockouts_double_with_each_failure_up_to_the_maximum() {
        let g = guard(2, 1000, 1000);
        let hash = super::super::hash_password("right");
        for _ in 0..2 {
            assert!(!g.check(client(1), "admin", Some(&hash), "wrong").await.unwrap());
        }
        // Each refused attempt is one more failure of the pair: 2 s, 4 s, … up to 15 min.
        let mut waits = vec![];
        for _ in 0..12 {
            match g.check(client(1), "admin", Some(&hash), "wrong").await {
                Err(Refused::Limited { retry_after, .. }) => waits.push(retry_after.as_secs_f64().round() as u64),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits[..4], [1, 2, 4, 8], "{waits:?}");
        assert_eq!(*waits.last().unwrap(), 900, "{waits:?}");
    }

    #[tokio::test]
    async fn verified_credentials_are_recognised_without_counting_and_a_new_hash_does_not_match() {
        let g = guard(1, 1, 1);
        let hash = super::super::hash_password("right");
        assert!(g.check(client(1), "admin", Some(&hash), "right").await.unwrap());
        assert!(!g.check(client(2), "admin", Some(&hash), "wrong").await.unwrap());
        // The user name's one failure is spent, yet the same credentials still pass.
        for _ in 0..5 {
            assert!(g.check(client(1), "admin", Some(&hash), "right").await.unwrap());
        }
        // A changed password (another stored hash) is checked again.
        let new_hash = super::super::hash_password("other");
        assert!(!g.check(client(1), "admin", Some(&new_hash), "right").await.unwrap());
    }

    #[tokio::test]
    async fn concurrent_logins_with_the_same_credentials_are_one_check() {
        let g = Arc::new(guard(1, 1, 1));
        let hash = super::super::hash_password("right");
        let logins: Vec<_> = (0..20)
            .map(|_| {
                let (g, hash) = (g.clone(), hash.clone());
                tokio::spawn(async move { g.check(client(1), "robot", Some(&hash), "right").await })
            })
            .collect();
        for l in logins {
            assert!(l.await.unwrap().unwrap());
        }
    }

    #[tokio::test]
    async fn past_the_limit_an_attempt_is_refused_before_the_user_is_looked_up() {
        let g = guard(2, 100, 100);
        let a = g.admit(client(1), "admin", "a").await.unwrap();
        let b = g.admit(client(1), "admin", "b").await.unwrap();
        // Two checks in flight fill the pair's allowance: the third is refused with no stored
        // hash at hand (the caller never queries the database).
        assert!(matches!(g.admit(client(1), "admin", "c").await, Err(Refused::Limited { .. })));
        assert!(g.log_refusal(client(1)), "the first refusal of a minute is logged");
        assert!(!g.log_refusal(client(1)), "the next ones are only counted");
        drop((a, b));
        let f = g.failures.lock().unwrap();
        assert_eq!(f.users["admin"].in_flight, 0, "an admission dropped undecided is out of flight");
    }

    #[tokio::test]
    async fn an_unknown_user_never_passes_even_with_the_dummy_password() {
        let g = guard(100, 100, 100);
        assert!(!g.check(client(1), "nobody", None, "").await.unwrap());
    }
}
