//! Clients that attack, against a real node: a password brute force of hundreds of concurrent
//! attempts is bounded in memory and answered 429 past its limits, other users still log in,
//! and an unknown user name costs what a known one does.
//!
//! Attackers and honest clients come from distinct loopback source addresses, as they would
//! from distinct hosts: the limits are per client address.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use testkit::{rss_kib, TestRegion};

fn client_from(source: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(source))
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `GET /token` with Basic credentials: (status, Retry-After).
fn login(c: &reqwest::blocking::Client, url: &str, user: &str, password: &str) -> (u16, Option<String>) {
    let r = c.get(format!("{url}/token?service=afreg&scope=repository:x/y:pull")).basic_auth(user, Some(password)).send().unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    if status == 429 {
        assert!(r.text().unwrap().contains("TOOMANYREQUESTS"));
    }
    (status, retry)
}

#[test]
fn a_password_brute_force_is_bounded_in_memory_and_refused_past_its_limit() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |_| {});
    region.node.add_user("admin", "the-right-passw0rd");
    region.node.add_user("bob", "bobs-passw0rd");
    region.node.add_user("dave", "daves-passw0rd");
    let url = region.node.url();
    let pid = region.node.pid();
    // Warm: a few requests so the idle figure includes the runtime's ordinary working set.
    let honest = client_from(Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(login(&honest, &url, "bob", "bobs-passw0rd").0, 200);
    let idle = rss_kib(pid);

    // 300 concurrent wrong passwords for admin, from one address.
    const ATTEMPTS: usize = 300;
    let start = Arc::new(Barrier::new(ATTEMPTS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let attackers: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let (start, url) = (start.clone(), url.clone());
            std::thread::spawn(move || {
                let c = client_from(Ipv4Addr::new(127, 0, 1, 1));
                start.wait();
                login(&c, &url, "admin", &format!("guess-{i}"))
            })
        })
        .collect();
    start.wait();
    let results: Vec<(u16, Option<String>)> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let count = |s: u16| results.iter().filter(|r| r.0 == s).count();
    // The user name's allowance (10 a minute, one more every 6 s) is all that is ever
    // checked; the rest is 429.
    assert!(count(401) <= 11, "{} wrong passwords were checked: {:?}", count(401), results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(count(401) + count(429), ATTEMPTS, "{results:?}");
    assert!(results.iter().filter(|r| r.0 == 429).all(|r| r.1.as_deref().is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))));
    let grown_mib = peak.load(Ordering::Relaxed).saturating_sub(idle) / 1024;
    eprintln!(
        "brute force: {ATTEMPTS} attempts, {} checked (401), {} refused (429); RSS idle {} MiB, peak +{grown_mib} MiB",
        count(401),
        count(429),
        idle / 1024
    );
    assert!(grown_mib < 200, "RSS grew {grown_mib} MiB over idle ({} MiB) during the brute force", idle / 1024);

    // The right password for admin is refused too while its name is over the limit (a guess
    // and the right password look alike until checked)…
    let (status, retry) = login(&honest, &url, "admin", "the-right-passw0rd");
    assert_eq!(status, 429, "admin's name is still over its limit");
    assert!(retry.is_some());
    // …but another user, from another address, logs in as usual, and bob's credentials that
    // were verified before are recognised without another check.
    assert_eq!(login(&client_from(Ipv4Addr::new(127, 0, 0, 2)), &url, "dave", "daves-passw0rd").0, 200);
    for _ in 0..20 {
        assert_eq!(login(&honest, &url, "bob", "bobs-passw0rd").0, 200);
    }
}

#[test]
fn one_address_guessing_many_user_names_is_limited_and_unknown_names_cost_the_same() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |_| {});
    region.node.add_user("carol", "carols-passw0rd");
    let url = region.node.url();

    // The time of a wrong password for a known user and for an unknown one, each from its own
    // address (both under every limit).
    let median = |source: Ipv4Addr, user: &str| {
        let c = client_from(source);
        let mut times: Vec<Duration> = (0..7)
            .map(|i| {
                let t = Instant::now();
                assert_eq!(login(&c, &url, user, &format!("wrong-{i}")).0, 401);
                t.elapsed()
            })
            .collect();
        times.sort();
        times[3]
    };
    let known = median(Ipv4Addr::new(127, 0, 2, 1), "carol");
    let unknown = median(Ipv4Addr::new(127, 0, 2, 2), "nobody-by-this-name");
    eprintln!("wrong password, median of 7: known user {known:?}, unknown user {unknown:?}");
    assert!(
        unknown * 2 >= known,
        "an unknown user answers in {unknown:?}, a known one in {known:?}: timing tells which names exist"
    );

    // One address trying 80 user names: the address's allowance (60 a minute) is checked, the
    // rest refused without a password check.
    let c = client_from(Ipv4Addr::new(127, 0, 2, 3));
    let statuses: Vec<u16> = (0..80).map(|i| login(&c, &url, &format!("user{i}"), "x").0).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    // (60 at once, then one a second while the 80 run.)
    assert!((60..=70).contains(&checked), "{checked} of 80 names checked from one address: {statuses:?}");
    assert!(statuses[75..].iter().all(|s| *s == 429), "{statuses:?}");
}
