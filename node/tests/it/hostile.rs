//! Clients that attack, against a real node: a password brute force of hundreds of concurrent
//! attempts is bounded in memory and answered 429 past its limits, the attacked user still
//! logs in from elsewhere, honest clients that log in at once are never throttled, and an
//! unknown user name costs what a known one does.
//!
//! Attackers and honest clients come from distinct loopback source addresses, as they would
//! from distinct hosts: the limits are per client address.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use testkit::{rss_kib, TestRegion};

pub(super) fn client_from(source: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(source))
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `GET /token` with Basic credentials: (status, Retry-After).
fn login(c: &reqwest::blocking::Client, url: &str, user: &str, password: &str) -> (u16, Option<String>) {
    let r = c
        .get(format!("{url}/token?service=afreg&scope=repository:x/y:pull"))
        .basic_auth(user, Some(password))
        .send()
        .unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    if status == 429 {
        assert!(r.text().unwrap().contains("TOOMANYREQUESTS"));
    }
    (status, retry)
}

#[test]
fn a_password_brute_force_is_bounded_in_memory_and_refused_past_its_limit() {
    // Every one of the 300 concurrent attempts reaches the login guard, which is what this
    // test is about: the per-address connection cap (256, which would refuse some of them at
    // connect) is raised here; `limits::under_a_login_brute_force…` runs at the defaults.
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| c.config.server.max_connections_per_client = 1024);
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
    // The pair's allowance (10 wrong passwords for one user name from one address) is all
    // that is ever checked; the rest is 429.
    assert!(
        count(401) <= 11,
        "{} wrong passwords were checked: {:?}",
        count(401),
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(count(401) + count(429), ATTEMPTS, "{results:?}");
    assert!(results
        .iter()
        .filter(|r| r.0 == 429)
        .all(|r| r.1.as_deref().is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))));
    let grown_mib = peak.load(Ordering::Relaxed).saturating_sub(idle) / 1024;
    eprintln!(
        "brute force: {ATTEMPTS} attempts, {} checked (401), {} refused (429); RSS idle {} MiB, peak +{grown_mib} MiB",
        count(401),
        count(429),
        idle / 1024
    );
    assert!(grown_mib < 200, "RSS grew {grown_mib} MiB over idle ({} MiB) during the brute force", idle / 1024);

    // The attacker stays locked out: a 301st guess, after longer than a per-minute allowance
    // takes to refill a step (6 s), is still refused, and so is the right password from there.
    let attacker = client_from(Ipv4Addr::new(127, 0, 1, 1));
    std::thread::sleep(Duration::from_secs(7));
    let (status, retry) = login(&attacker, &url, "admin", "guess-301");
    assert_eq!(status, 429, "the 301st wrong guess from the attacking address");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 60)), "a long lockout");
    assert_eq!(login(&attacker, &url, "admin", "the-right-passw0rd").0, 429);
    // …while admin, from another address, logs in as usual, another user too, and bob's
    // credentials that were verified before are recognised without another check.
    assert_eq!(login(&honest, &url, "admin", "the-right-passw0rd").0, 200, "admin locked out by a guesser");
    assert_eq!(login(&client_from(Ipv4Addr::new(127, 0, 0, 2)), &url, "dave", "daves-passw0rd").0, 200);
    for _ in 0..20 {
        assert_eq!(login(&honest, &url, "bob", "bobs-passw0rd").0, 200);
    }
}

#[test]
fn wrong_logins_from_one_address_do_not_lock_the_user_out_elsewhere() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| c.config.server.refusal_delay_ms = 0);
    region.node.add_user("admin", "the-right-passw0rd");
    let url = region.node.url();
    let guesser = client_from(Ipv4Addr::new(127, 0, 0, 2));
    for i in 0..10 {
        assert_eq!(login(&guesser, &url, "admin", &format!("wrong-{i}")).0, 401);
    }
    let (status, _) = login(&client_from(Ipv4Addr::new(127, 0, 0, 3)), &url, "admin", "the-right-passw0rd");
    assert_eq!(status, 200, "10 wrong logins from 127.0.0.2 locked admin out of 127.0.0.3");
}

#[test]
fn forty_concurrent_right_logins_from_one_address_are_all_served() {
    // A CI fleet behind one NAT address, with one robot account, starting at once.
    let region = TestRegion::start(testkit::afreg_bin());
    region.node.add_user("robot", "robot-passw0rd");
    let url = region.node.url();
    const LOGINS: usize = 40;
    let start = Arc::new(Barrier::new(LOGINS));
    let logins: Vec<_> = (0..LOGINS)
        .map(|_| {
            let (start, url) = (start.clone(), url.clone());
            std::thread::spawn(move || {
                let c = client_from(Ipv4Addr::new(127, 0, 0, 4));
                start.wait();
                login(&c, &url, "robot", "robot-passw0rd").0
            })
        })
        .collect();
    let statuses: Vec<u16> = logins.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[test]
fn one_address_guessing_many_user_names_is_limited_and_unknown_names_cost_the_same() {
    // Refusals answered at once: this test counts many of them one after another.
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| c.config.server.refusal_delay_ms = 0);
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

    // One address trying 80 user names: the address's allowance (60 wrong passwords) is
    // checked, the rest refused without a password check while its lockout lasts.
    let c = client_from(Ipv4Addr::new(127, 0, 2, 3));
    let statuses: Vec<u16> = (0..80).map(|i| login(&c, &url, &format!("user{i}"), "x").0).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    // (60, then a lockout of 1 s, 2 s, … that the refusals, answered at once, run into.)
    assert!((60..=70).contains(&checked), "{checked} of 80 names checked from one address: {statuses:?}");
    assert!(statuses[75..].iter().all(|s| *s == 429), "{statuses:?}");
    // A name that is no user's is never logged (it may be a password typed in the wrong
    // field); a user's is.
    let log = region.node.log();
    assert!(!log.contains("nobody-by-this-name") && !log.contains("\"user0\""), "an unknown user name was logged");
    assert!(log.contains("\"user\":\"carol\""), "a known user's failed login names the user");
}

/// A token for `scopes` (each a `scope=` parameter) with `user`'s credentials.
fn token(c: &reqwest::blocking::Client, url: &str, user: &str, password: &str, scopes: &[&str]) -> String {
    let q: String = scopes.iter().map(|s| format!("&scope={s}")).collect();
    let r = c.get(format!("{url}/token?service=afreg{q}")).basic_auth(user, Some(password)).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_owned()
}

#[test]
fn stored_bytes_are_served_safely_and_tokens_are_read_as_the_spec_says() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| c.config.auth.anonymous = vec![]);
    region.node.add_user_with_grants("eve", "eves-passw0rd", &["site/*:pull,push"]);
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));

    // Pull and push asked for in two scope entries for one repository: a push is allowed.
    let t = token(&c, &url, "eve", "eves-passw0rd", &["repository:site/page:pull", "repository:site/page:push"]);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let digest = testkit::sha256_digest(config);
    let r = c
        .post(format!("{url}/v2/site/page/blobs/uploads/?digest={digest}"))
        .bearer_auth(&t)
        .body(config.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "a push with pull and push in separate scope entries: {}", r.text().unwrap());

    // The scheme in any case.
    for scheme in ["bearer", "BEARER"] {
        let r = c
            .head(format!("{url}/v2/site/page/blobs/{digest}"))
            .header("authorization", format!("{scheme} {t}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "Authorization: {scheme} …");
    }

    // A manifest without mediaType pushed as text/html, with a script in an annotation.
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{}}},"layers":[],"annotations":{{"x":"<html><script>alert(document.cookie)</script></html>"}}}}"#,
        config.len()
    );
    let r = c
        .put(format!("{url}/v2/site/page/manifests/v1"))
        .bearer_auth(&t)
        .header("content-type", "text/html")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let r = c.get(format!("{url}/v2/site/page/manifests/v1")).bearer_auth(&t).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json",
        "served as what it was pushed as"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let r = c.get(format!("{url}/v2/site/page/blobs/{digest}")).bearer_auth(&t).send().unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff", "blobs too");

    // Several ranges: the whole blob, 200.
    let r = c
        .get(format!("{url}/v2/site/page/blobs/{digest}"))
        .bearer_auth(&t)
        .header("range", "bytes=0-1,4-5")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), config);

    // Challenges say why a token was not enough (RFC 6750).
    let pull = token(&c, &url, "eve", "eves-passw0rd", &["repository:site/page:pull"]);
    let anon = c
        .get(format!("{url}/token?service=afreg&scope=repository:site/page:pull"))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c.post(format!("{url}/v2/site/page/blobs/uploads/")).bearer_auth("not.a.token").send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="invalid_token""#),
        "{:?}",
        r.headers()
    );
    let r = c.post(format!("{url}/v2/site/page/blobs/uploads/")).bearer_auth(&anon).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="insufficient_scope""#),
        "{:?}",
        r.headers()
    );
    // A signed-in user's pull token, used to push: refused (DENIED, no challenge to retry).
    let r = c.post(format!("{url}/v2/site/page/blobs/uploads/")).bearer_auth(&pull).send().unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn discovery_does_not_send_the_cluster_secret_to_a_target_outside_its_zone() {
    // Whoever listens at the SRV target: it records every request head it is sent.
    let evil = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = evil.local_addr().unwrap().port();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let heard = heard.clone();
        std::thread::spawn(move || {
            for conn in evil.incoming() {
                let Ok(mut conn) = conn else { return };
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 4096];
                let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
                heard.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
    }
    // The discovery zone is reg.test; its SRV record names evil.test, outside it.
    let dns = testkit::dns::PowerDns::zone_with(
        "test",
        &[("evil", Ipv4Addr::LOCALHOST)],
        &format!("_afreg-internal._tcp.reg 30 IN SRV 10 10 {port} evil.test.\n"),
    );
    let (pg, kubo) = (testkit::Postgres::start(), testkit::Kubo::start());
    let mut cfg = testkit::NodeConfig::for_kubo(pg.url(), &kubo);
    cfg.config.cluster.discovery_zone = Some("reg.test".into());
    cfg.config.cluster.dns_server = Some(dns.addr());
    let node = testkit::Node::start_unready(testkit::afreg_bin(), cfg);
    // Three discovery rounds (one every 2 s) refused the target, saying why…
    let refusals = || node.log().matches("outside the discovery zone").count();
    testkit::oci::within(Duration::from_secs(20), Duration::from_millis(200), "three refused discovery rounds", || {
        refusals() >= 3
    });
    // …and nothing was sent to it.
    assert!(heard.lock().unwrap().is_empty(), "the SRV target outside the zone was sent: {:?}", heard.lock().unwrap());
}

/// The value of the first sample of `metric` with all of `labels` in Prometheus text.
pub(super) fn metric_value(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_flood_of_status_requests_is_computed_once_a_second_and_methods_do_not_grow_the_metrics() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |_| {});
    let url = region.node.url();
    let metrics = region.node.metrics_url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let computed = |c: &reqwest::blocking::Client| {
        metric_value(
            &c.get(&metrics).send().unwrap().text().unwrap(),
            "afreg_status_computed_total",
            &["scope=\"cluster\""],
        )
    };
    let before = computed(&c);
    // 200 requests from 8 clients, within about a second.
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
                for _ in 0..25 {
                    assert_eq!(c.get(format!("{url}/status")).send().unwrap().status(), 200);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let secs = started.elapsed().as_secs_f64();
    let times = computed(&c) - before;
    assert!(times <= secs.ceil() + 1.0, "/status computed {times} times for 200 requests in {secs:.2} s");

    // Made-up methods are counted under one label value.
    for m in ["BREW", "PROPFIND", "X-ANYTHING"] {
        let r = c
            .request(reqwest::Method::from_bytes(m.as_bytes()).unwrap(), format!("{url}/v2/a/b/manifests/x"))
            .send()
            .unwrap();
        assert!(r.status().is_client_error(), "{m}: {}", r.status());
    }
    let text = c.get(&metrics).send().unwrap().text().unwrap();
    for m in ["BREW", "PROPFIND", "X-ANYTHING"] {
        assert!(!text.contains(&format!("method=\"{m}\"")), "{m} became a label value");
    }
    assert!(metric_value(&text, "afreg_http_requests_total", &["method=\"other\""]) >= 3.0);
}

#[test]
fn lists_are_paged_at_the_configured_size_when_n_is_absent_or_larger() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = testkit::Action::ALL.to_vec();
        c.config.storage.max_page_entries = 3;
    });
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let img = testkit::oci::new_image(1000);
    for repo in ["p/a", "p/b", "p/c", "p/d"] {
        testkit::oci::push(&c, &url, repo, "t0", &img).unwrap();
    }
    for tag in ["t1", "t2", "t3", "t4"] {
        testkit::oci::push(&c, &url, "p/a", tag, &img).unwrap();
    }
    // (status, entries, Link) of one page.
    let page = |path: &str, key: &str| {
        let r = c.get(format!("{url}{path}")).send().unwrap();
        let link = r.headers().get("link").map(|l| l.to_str().unwrap().to_owned());
        let v: serde_json::Value = r.json().unwrap();
        let items: Vec<String> = v[key].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
        (items, link)
    };
    for path in ["/v2/p/a/tags/list", "/v2/p/a/tags/list?n=1000"] {
        let (tags, link) = page(path, "tags");
        assert_eq!(tags, ["t0", "t1", "t2"], "{path}");
        let next = link.unwrap_or_else(|| panic!("{path}: no Link to the rest"));
        let next = next.trim_start_matches('<').split('>').next().unwrap().to_owned();
        let (rest, link) = page(&next, "tags");
        assert_eq!(rest, ["t3", "t4"], "{next}");
        assert!(link.is_none());
    }
    let (repos, link) = page("/v2/_catalog", "repositories");
    assert_eq!(repos, ["p/a", "p/b", "p/c"]);
    assert!(link.is_some_and(|l| l.contains("n=3") && l.contains("last=p%2Fc")));
    // A smaller n is the client's choice.
    assert_eq!(page("/v2/p/a/tags/list?n=2", "tags").0, ["t0", "t1"]);
}
