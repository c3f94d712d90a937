//! The node's limits against clients that hold, stall or flood, on a real node: connection
//! caps per client address on both listeners, the header-read, body-idle and response-stall
//! bounds, the bounded drain on SIGTERM, request rates per address and per token, upload
//! sessions per user, the blob size cap, the referrers page cap, and `/metrics` off the public
//! port. Each is set small here so that the test sees it trip; attackers and honest clients
//! come from distinct loopback addresses, as from distinct hosts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::oci::within;
use testkit::{sha256_digest, Action, TestRegion};

use super::hostile::{client_from, metric_value};

/// A TCP connection to `addr` from `source`.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(IpAddr::V4(source), 0).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Whether the server closed `s` within `bound` (EOF or reset), reading and dropping anything
/// it sent first.
fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    let until = Instant::now() + bound;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // One read that cannot wait: tells a closed socket from an open one.
            s.set_nonblocking(true).unwrap();
            let r = s.read(&mut buf);
            s.set_nonblocking(false).unwrap();
            return match r {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap()
}

fn open_region(f: impl FnOnce(&mut testkit::NodeConfig)) -> TestRegion {
    TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        f(c)
    })
}

#[test]
fn half_open_connections_are_capped_per_client_and_closed_after_the_header_timeout_on_both_listeners() {
    let region = open_region(|c| {
        c.config.server.max_connections_per_client = 20;
        c.config.server.header_read_timeout_secs = 2;
    });
    let honest = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    for (listener, url) in [("public", region.node.url()), ("internal", region.node.internal_url())] {
        let addr = addr_of(&url);
        // 60 connections that send nothing: 20 are held, the other 40 are closed at once.
        let mut conns: Vec<TcpStream> = (0..60).map(|_| connect_from(attacker, addr)).collect();
        let opened = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let closed: Vec<bool> = conns.iter_mut().map(|s| closed_within(s, Duration::from_millis(1))).collect();
        assert!(opened.elapsed() < Duration::from_millis(1800), "checked too late to tell the cap from the timeout");
        assert_eq!(
            closed.iter().filter(|c| **c).count(),
            40,
            "{listener}: connections past the per-client cap of 20 closed at once"
        );
        // Meanwhile another address is served.
        let r = honest.get(format!("{url}/healthz")).send();
        if listener == "public" {
            assert_eq!(r.unwrap().status(), 200, "public: an honest client while 20 are held");
        } else {
            // The internal listener answers (whatever the status), which is what matters.
            assert!(r.is_ok(), "internal: an honest client while 20 are held: {r:?}");
        }
        // The 20 held ones are closed once the header timeout (2 s) passes.
        for (s, _) in conns.iter_mut().zip(&closed).filter(|(_, c)| !**c) {
            assert!(
                closed_within(s, Duration::from_secs(5)),
                "{listener}: an idle connection outlived the 2 s header timeout"
            );
        }
    }

    // Slowloris: a request head trickled one byte every 300 ms is cut off at the 2 s bound.
    let mut s = connect_from(attacker, addr_of(&region.node.url()));
    let started = Instant::now();
    let head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in head {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(300)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled request head was never cut off");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
}

#[test]
fn a_stalled_body_and_an_unread_response_are_dropped_and_shutdown_drains_within_its_bound() {
    let mut region = open_region(|c| {
        c.config.server.body_idle_timeout_secs = 2;
        c.config.server.drain_secs = 2;
    });
    let url = region.node.url();
    // No pooled connections: the open-connection gauge below counts only the test's own.
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let addr = addr_of(&url);

    // A chunk that promises 1 MiB and stops after 10 bytes: the request fails after the 2 s
    // idle bound, and the session keeps nothing of it.
    let r = c.post(format!("{url}/v2/slow/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr);
    write!(s, "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n0123456789").unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "a stalled body held its request past 10 s");
    assert!(started.elapsed() >= Duration::from_millis(1500), "dropped before the idle bound: {:?}", started.elapsed());
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(
        region.pg.psql(&format!("SELECT size FROM uploads WHERE id = '{id}'")),
        "0",
        "the stalled chunk left nothing"
    );

    // A 16 MiB blob fetched by a client that never reads: the node's write stalls, and after
    // the idle bound it drops the connection (the open-connection gauge falls back).
    let blob = testkit::random_bytes(16 << 20);
    let digest = sha256_digest(&blob);
    testkit::oci::upload_blob(&c, &url, "slow/app", &digest, &blob).unwrap();
    let open = |c: &reqwest::blocking::Client| {
        metric_value(
            &c.get(region.node.metrics_url()).send().unwrap().text().unwrap(),
            "afreg_connections_open",
            &["listener=\"public\""],
        )
    };
    let reader = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        let mut s: TcpStream = s.into();
        write!(s, "GET /v2/slow/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s
    };
    // The upload's connection closes on its own after its answer, but the node may count it a
    // moment longer: take the baseline once no connection of the test is open any more, or a
    // late close could hide the reader's connection from the count.
    within(Duration::from_secs(5), Duration::from_millis(50), "the test's earlier connections closed", || {
        open(&c) == 0.0
    });
    let base = 0.0;
    let reader = reader();
    within(Duration::from_secs(5), Duration::from_millis(50), "the unread download counted open", || {
        open(&c) >= base + 1.0
    });
    let stalled = Instant::now();
    within(
        Duration::from_secs(15),
        Duration::from_millis(200),
        "the unread download dropped after the 2 s idle bound",
        || open(&c) <= base,
    );
    assert!(stalled.elapsed() >= Duration::from_millis(1000), "dropped before the idle bound");
    drop(reader);

    // SIGTERM with a request in flight that would never finish on its own (a body that
    // trickles a byte a second, within the idle bound): the node exits within the 2 s drain.
    let r = c.post(format!("{url}/v2/slow/app/blobs/uploads/")).send().unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr);
    write!(s, "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n").unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..30 {
            if s.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = region.node.stop();
    let took = started.elapsed();
    assert!(status.is_some(), "the node did not exit on SIGTERM");
    // 2 s of drain, then the rest of the shutdown (each step bounded).
    assert!(took < Duration::from_secs(10), "shutdown took {took:?} with a request in flight");
    trickle.join().unwrap();
}

#[test]
fn request_rates_are_limited_per_address_and_per_token() {
    let region = open_region(|c| {
        c.config.server.requests_per_second_per_client = 5;
        c.config.server.requests_per_second_per_token = 5;
        c.config.server.reads_per_second_per_token = 5;
        // Refusals answered at once: this test counts many of them one after another.
        c.config.server.refusal_delay_ms = 0;
    });
    let url = region.node.url();
    // One address whose every answer is 401 (a cheap read, but a refused credential costs as
    // much as a write): a burst of 50, then 429 TOOMANYREQUESTS with Retry-After.
    let flooder = client_from(Ipv4Addr::new(127, 0, 0, 3));
    let statuses: Vec<u16> =
        (0..80).map(|_| flooder.get(format!("{url}/v2/")).send().unwrap().status().as_u16()).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(statuses[..45].iter().all(|s| *s != 429), "limited inside the burst: {statuses:?}");
    assert!(limited >= 25, "only {limited} of 80 limited: {statuses:?}");
    let r = flooder.get(format!("{url}/v2/")).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.text().unwrap().contains("TOOMANYREQUESTS"));
    // Another address is not affected (`GET /v2/` without a token is always challenged: 401).
    let honest = client_from(Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(honest.get(format!("{url}/v2/")).send().unwrap().status(), 401);

    // One token reading from many addresses: limited on the token's read bucket, though each
    // address is fresh.
    let token = honest
        .get(format!("{url}/token?service=afreg&scope=repository:r/x:pull"))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut statuses = vec![];
    for i in 0..80u8 {
        let c = client_from(Ipv4Addr::new(127, 0, 1, 1 + i));
        statuses.push(c.get(format!("{url}/v2/r/x/tags/list")).bearer_auth(&token).send().unwrap().status().as_u16());
    }
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 25, "one token from 80 addresses: {statuses:?}");
}

#[test]
fn a_trusted_proxy_names_its_clients_and_an_ipv6_prefix_is_one_client() {
    let region = open_region(|c| {
        c.config.server.requests_per_second_per_client = 1;
        c.config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.config.server.refusal_delay_ms = 0;
    });
    let url = region.node.url();
    let token = |c: &reqwest::blocking::Client, forwarded_for: &str| {
        let r = c.get(format!("{url}/token?service=afreg")).header("x-forwarded-for", forwarded_for).send().unwrap();
        r.status().as_u16()
    };
    // Through the proxy, ten addresses of one IPv6 /64 spend that /64's burst of ten costly
    // requests; an eleventh address of it is refused, and the next /64 is another client.
    let proxy = client_from(Ipv4Addr::new(127, 0, 0, 1));
    for i in 1..=10 {
        assert_eq!(token(&proxy, &format!("2001:db8:5:5::{i:x}")), 200);
    }
    assert_eq!(token(&proxy, "2001:db8:5:5:ffff::1"), 429, "a fresh address of the same /64");
    assert_eq!(token(&proxy, "2001:db8:5:6::1"), 200, "another /64");
    // A peer that is not a listed proxy cannot name other clients: its header is ignored, and
    // its own address's burst runs out however the header changes.
    let stranger = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let statuses: Vec<u16> = (0..12).map(|i| token(&stranger, &format!("198.51.100.{i}"))).collect();
    assert!(statuses[..10].iter().all(|s| *s == 200) && statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// Adds users bob (pushing to `b/*`) and carol (`c/*`); their tokens for `b/x` and `c/x`.
fn bob_and_carol(region: &TestRegion) -> (String, String) {
    region.node.add_user_with_grants("bob", "bobs-passw0rd", &["b/*:pull,push"]);
    region.node.add_user_with_grants("carol", "carols-passw0rd", &["c/*:pull,push"]);
    let (url, c) = (region.node.url(), client_from(Ipv4Addr::new(127, 0, 0, 1)));
    let token = |user: &str, pw: &str, repo: &str| {
        let r = c
            .get(format!("{url}/token?service=afreg&scope=repository:{repo}:pull,push"))
            .basic_auth(user, Some(pw))
            .send()
            .unwrap();
        r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_owned()
    };
    (token("bob", "bobs-passw0rd", "b/x"), token("carol", "carols-passw0rd", "c/x"))
}

#[test]
fn upload_sessions_are_capped_per_user_and_blobs_by_size() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = vec![];
        c.config.storage.max_uploads_per_user = 3;
        c.config.storage.max_blob_bytes = 1000;
    });
    let (bob, carol) = bob_and_carol(&region);
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let start = |t: &str, repo: &str| c.post(format!("{url}/v2/{repo}/blobs/uploads/")).bearer_auth(t).send().unwrap();

    // Ten concurrent starts by bob: exactly three sessions open.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10).map(|_| s.spawn(|| start(&bob, "b/x").status().as_u16())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    let r = start(&bob, "b/x");
    assert_eq!(r.status(), 429);
    assert!(r.text().unwrap().contains("TOOMANYREQUESTS"));
    assert_eq!(region.pg.psql("SELECT count(*) FROM uploads"), "3");
    // Another user is not affected; cancelling one of bob's makes room for one more.
    assert_eq!(start(&carol, "c/x").status(), 202);
    let open: Vec<String> =
        region.pg.psql("SELECT id FROM uploads WHERE owner = 'user:bob'").lines().map(str::to_owned).collect();
    assert_eq!(open.len(), 3);
    let r = c.delete(format!("{url}/v2/b/x/blobs/uploads/{}", open[0])).bearer_auth(&bob).send().unwrap();
    assert_eq!(r.status(), 204);
    let r = start(&bob, "b/x");
    assert_eq!(r.status(), 202);
    let session = r.headers()["location"].to_str().unwrap().to_owned();

    // The blob size cap: exactly 1000 bytes is accepted; 1001 in one request is 413
    // SIZE_INVALID, declared or streamed without a length, and nothing is kept.
    let ok = vec![7u8; 1000];
    let r = c
        .post(format!("{url}/v2/c/x/blobs/uploads/?digest={}", sha256_digest(&ok)))
        .bearer_auth(&carol)
        .body(ok.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "a blob of exactly the limit");
    let big = vec![8u8; 1001];
    let d = sha256_digest(&big);
    let r =
        c.post(format!("{url}/v2/c/x/blobs/uploads/?digest={d}")).bearer_auth(&carol).body(big.clone()).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("SIZE_INVALID"));
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(big.clone()));
    let r =
        c.post(format!("{url}/v2/c/x/blobs/uploads/?digest={d}")).bearer_auth(&carol).body(streamed).send().unwrap();
    assert_eq!(r.status(), 413, "streamed without Content-Length");
    assert_eq!(c.head(format!("{url}/v2/c/x/blobs/{d}")).bearer_auth(&carol).send().unwrap().status(), 404);
    // In chunks: 600 accepted, then 401 more is refused and the session stays at 600.
    let r = c.patch(format!("{url}{session}")).bearer_auth(&bob).body(vec![1u8; 600]).send().unwrap();
    assert_eq!(r.status(), 202);
    let session = r.headers()["location"].to_str().unwrap().to_owned();
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(vec![2u8; 401]));
    let r = c.patch(format!("{url}{session}")).bearer_auth(&bob).body(streamed).send().unwrap();
    assert_eq!(r.status(), 413);
    let r = c.get(format!("{url}{session}")).bearer_auth(&bob).send().unwrap();
    assert_eq!(r.headers()["range"], "0-599", "the refused chunk left nothing");
    assert_eq!(region.pg.psql("SELECT count(*) FROM blobs WHERE size > 1000"), "0");
}

#[test]
fn the_bytes_a_users_open_uploads_stage_are_capped_even_when_chunks_race() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = vec![];
        c.config.storage.max_staged_bytes_per_user = 1500;
    });
    let (bob, carol) = bob_and_carol(&region);
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let start = |t: &str, repo: &str| {
        let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/")).bearer_auth(t).send().unwrap();
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_owned()
    };
    let patch = |t: &str, session: &str, n: usize| {
        c.patch(format!("{url}{session}")).bearer_auth(t).body(vec![3u8; n]).send().unwrap()
    };
    let staged =
        |owner: &str| region.pg.psql(&format!("SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = '{owner}'"));

    // Two chunks of 800 race into two of bob's sessions: 1600 would pass the limit, so
    // exactly one is kept, whichever came first.
    let (s1, s2) = (start(&bob, "b/x"), start(&bob, "b/x"));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> =
            [&s1, &s2].map(|sess| s.spawn(|| patch(&bob, sess, 800).status().as_u16())).into_iter().collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [202, 429], "{statuses:?}");
    assert_eq!(staged("user:bob"), "800");
    // The rest of the room is usable to the byte, in either session; one byte more is refused
    // with TOOMANYREQUESTS, and the session keeps what it had.
    let refused = if statuses[0] == 429 { &s1 } else { &s2 };
    let r = patch(&bob, refused, 700);
    assert_eq!(r.status(), 202, "exactly up to the limit");
    let refused = r.headers()["location"].to_str().unwrap().to_owned();
    let r = patch(&bob, &refused, 1);
    assert_eq!(r.status(), 429);
    assert!(r.text().unwrap().contains("TOOMANYREQUESTS"));
    let r = c.get(format!("{url}{refused}")).bearer_auth(&bob).send().unwrap();
    assert_eq!(r.headers()["range"], "0-699", "the refused chunk left nothing");
    assert_eq!(staged("user:bob"), "1500");
    // Streamed without a length, refused all the same.
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(vec![2u8; 10]));
    let r = c.patch(format!("{url}{refused}")).bearer_auth(&bob).body(streamed).send().unwrap();
    assert_eq!(r.status(), 429, "streamed without Content-Length");
    assert_eq!(staged("user:bob"), "1500");
    // Another user is not affected; a blob pushed whole is not staged; cancelling frees room.
    let s3 = start(&carol, "c/x");
    assert_eq!(patch(&carol, &s3, 1500).status(), 202);
    let whole = vec![9u8; 1400];
    let r = c
        .post(format!("{url}/v2/b/x/blobs/uploads/?digest={}", sha256_digest(&whole)))
        .bearer_auth(&bob)
        .body(whole)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "a monolithic push stages nothing");
    assert_eq!(c.delete(format!("{url}{refused}")).bearer_auth(&bob).send().unwrap().status(), 204);
    let other = if refused.contains(s1.rsplit('/').next().unwrap()) { &s2 } else { &s1 };
    assert_eq!(patch(&bob, other, 700).status(), 202, "room again once a session is cancelled");
}

#[test]
fn referrers_are_paged_and_metrics_are_off_the_public_port() {
    let region = open_region(|c| c.config.storage.max_page_entries = 2);
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let img = testkit::oci::new_image(100);
    testkit::oci::push(&c, &url, "r/app", "v1", &img).unwrap();
    let config = img.blobs[0].clone();
    let mut referrers = vec![];
    for i in 0..5 {
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/x-test",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.0, "size": config.1.len()},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.digest, "size": img.manifest.len()},
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let d = sha256_digest(&m);
        testkit::oci::put_manifest(&c, &url, "r/app", &d, &m).unwrap();
        referrers.push(d);
    }
    referrers.sort();
    let mut seen = vec![];
    let mut next = Some(format!("/v2/r/app/referrers/{}", img.digest));
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = c.get(format!("{url}{path}")).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        next = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().trim_start_matches('<').split('>').next().unwrap().to_owned());
        let v: serde_json::Value = r.json().unwrap();
        let page: Vec<String> =
            v["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect();
        assert!(page.len() <= 2, "a page of {} with max_page_entries = 2", page.len());
        seen.extend(page);
        pages += 1;
        assert!(pages <= 5);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, referrers, "every referrer once, in order");
    // The filter is kept across pages.
    let r = c.get(format!("{url}/v2/r/app/referrers/{}?artifactType=application/x-test", img.digest)).send().unwrap();
    assert!(r.headers()["link"].to_str().unwrap().contains("artifactType=application%2Fx-test"), "{:?}", r.headers());

    // /metrics: on its own listener, not on the public port.
    assert_eq!(c.get(format!("{url}/metrics")).send().unwrap().status(), 404);
    let m = c.get(region.node.metrics_url()).send().unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().unwrap().contains("afreg_http_requests_total"));
}

/// Lowers the calling thread's CPU priority to the least (nice 19). The attackers run on this
/// machine only because the test does; from a real attacker's machine their own work would not
/// compete with the node's, so here it yields to the node and to the honest client.
fn as_a_remote_attacker() {
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// The p99 of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Manifest GETs for `window`, one every 2 ms (under the default 500 a second per address),
/// from an honest client: their latencies.
fn manifest_gets(c: &reqwest::blocking::Client, url: &str, window: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut out = vec![];
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        let r = c
            .get(format!("{url}/v2/load/app/manifests/v1"))
            .header("accept", testkit::oci::OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap();
        out.push(t.elapsed());
    }
    out
}

/// The load test of the issue, at the node's default limits: a password brute force of 300
/// concurrent attempts (from one address) and 1,500 half-open connections (from another),
/// at once, while an honest client pulls a manifest. The node's memory stays within 200 MiB of
/// idle, its open files bounded, the honest client's p99 under 3 x its idle p99, and the brute
/// force is answered 429 once past the per-address limit.
#[test]
fn under_a_login_brute_force_and_1500_half_open_connections_other_clients_are_served() {
    const ATTEMPTS_IN_FLIGHT: usize = 300;
    const HALF_OPEN: usize = 1500;
    const WINDOW: Duration = Duration::from_secs(4);
    const GUESS_EVERY: Duration = Duration::from_millis(100);
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| c.config.auth.anonymous = vec![Action::Pull]);
    region.node.add_user("admin", "the-right-passw0rd");
    let url = region.node.url();
    let pid = region.node.pid();
    let honest = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let root = {
        region.node.add_user_with_grants("pusher", "pusher-passw0rd", &["load/*:pull,push"]);
        let r = honest
            .get(format!("{url}/token?service=afreg&scope=repository:load/app:pull,push"))
            .basic_auth("pusher", Some("pusher-passw0rd"))
            .send()
            .unwrap();
        r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_owned()
    };
    let img = testkit::oci::new_image(1000);
    for (d, data) in &img.blobs {
        let r = honest
            .post(format!("{url}/v2/load/app/blobs/uploads/?digest={d}"))
            .bearer_auth(&root)
            .body(data.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = honest
        .put(format!("{url}/v2/load/app/manifests/v1"))
        .bearer_auth(&root)
        .header("content-type", testkit::oci::OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);

    // Idle: warm, then the figures.
    manifest_gets(&honest, &url, Duration::from_millis(500));
    let idle_rss = testkit::rss_kib(pid);
    let idle_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let mut idle = manifest_gets(&honest, &url, WINDOW);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let go = std::sync::Arc::new(std::sync::Barrier::new(3));
    // 1,500 connections that send nothing, from 127.0.0.2, re-opened as the node closes them.
    let holder = {
        let (stop, go) = (stop.clone(), go.clone());
        let addr = addr_of(&url);
        std::thread::spawn(move || {
            as_a_remote_attacker();
            go.wait();
            let mut conns: Vec<TcpStream> =
                (0..HALF_OPEN).map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), addr)).collect();
            // Held (the attacker keeps its end open) for the attack; the node closes those past
            // its per-address cap at once, the rest at its header timeout.
            std::thread::sleep(Duration::from_secs(1));
            let refused = conns.iter_mut().map(|s| closed_within(s, Duration::ZERO)).filter(|c| *c).count();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(conns);
            refused
        })
    };
    // 300 password guesses in flight at all times, from 127.0.0.3: one thread with an async
    // client (as an attacker's tool would), so the attacker's own CPU stays one thread's.
    let guessers = {
        let (stop, go, url) = (stop.clone(), go.clone(), url.clone());
        std::thread::spawn(move || {
            as_a_remote_attacker();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let c = reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            go.wait();
            rt.block_on(async move {
                let slots = (0..ATTEMPTS_IN_FLIGHT).map(|i| {
                    let (c, stop, url) = (c.clone(), stop.clone(), url.clone());
                    async move {
                        let mut statuses = vec![];
                        let mut n = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let asked = Instant::now();
                            let r = c
                                .get(format!("{url}/token?service=afreg&scope=repository:load/app:push"))
                                .basic_auth("admin", Some(format!("guess-{i}-{n}")))
                                .send()
                                .await;
                            n += 1;
                            // 0: refused at connect (this address is past its connection cap).
                            statuses.push((r.map(|r| r.status().as_u16()).unwrap_or(0), asked.elapsed()));
                            // The next guess of this slot (300 slots: up to 3,000 a second).
                            tokio::time::sleep(GUESS_EVERY).await;
                        }
                        statuses
                    }
                });
                futures::future::join_all(slots).await.into_iter().flatten().collect::<Vec<(u16, Duration)>>()
            })
        })
    };
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle_rss));
    let peak_fds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(idle_fds));
    let sampler = {
        let (stop, peak, peak_fds) = (stop.clone(), peak.clone(), peak_fds.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(testkit::rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peak_fds.fetch_max(d.count(), std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let cpu = |pid: u32| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let cpu_before = cpu(pid);
    let attack_started = Instant::now();
    go.wait();
    // Let the attack build up, then measure the honest client under it.
    std::thread::sleep(Duration::from_secs(2));
    let attacked = manifest_gets(&honest, &url, WINDOW * 3 / 2);
    let attacked_p99 = p99(attacked.clone());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused_at_once = holder.join().unwrap();
    let answers: Vec<(u16, Duration)> = guessers.join().unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    let refusal_times: Vec<Duration> = answers.iter().filter(|a| a.0 == 429).map(|a| a.1).collect();
    sampler.join().unwrap();
    // The idle figure from a window before the attack and one after it (once its connections
    // are gone), so one quiet moment does not set it.
    let metrics = region.node.metrics_url();
    within(Duration::from_secs(40), Duration::from_millis(200), "the attack's connections closed", || {
        metric_value(
            &honest.get(&metrics).send().unwrap().text().unwrap(),
            "afreg_connections_open",
            &["listener=\"public\""],
        ) <= 2.0
    });
    idle.extend(manifest_gets(&honest, &url, WINDOW));
    let idle_p99 = p99(idle.clone());

    let node_cpu_ms = (cpu(pid) - cpu_before) * 10;
    let attack_took = attack_started.elapsed();
    let peak_rss = peak.load(std::sync::atomic::Ordering::Relaxed);
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // Every refusal was answered after half the default 1 s delay at least (0.5–1.5 s).
    let fastest_refusal = refusal_times.iter().min().copied().unwrap_or_default();
    assert!(fastest_refusal >= Duration::from_millis(480), "a 429 answered after {fastest_refusal:?}");
    let at_connect = statuses.iter().filter(|s| **s == 0).count();
    let other: Vec<&u16> = statuses.iter().filter(|s| ![0, 401, 429].contains(*s)).collect();
    eprintln!(
        "load: {} manifest GETs idle, p99 {idle_p99:?} (p50 {:?}); {} attacked, p99 {attacked_p99:?} (p50 {:?}); RSS idle {} MiB, peak {} MiB; \
         open files idle {idle_fds}, peak {}; {} guesses: {checked} checked (401), {limited} refused (429), {at_connect} refused at connect (past the connection cap), {} other; \
         of {HALF_OPEN} half-open connections the node closed {refused_at_once} at once (past its per-address cap); node CPU {node_cpu_ms} ms in {attack_took:?}",
        idle.len(),
        testkit::oci::p50_max(idle.clone()).0,
        attacked.len(),
        testkit::oci::p50_max(attacked.clone()).0,
        idle_rss / 1024,
        peak_rss / 1024,
        peak_fds.load(std::sync::atomic::Ordering::Relaxed),
        statuses.len(),
        other.len(),
    );
    assert!(peak_rss - idle_rss < 200 * 1024, "RSS rose {} MiB", (peak_rss - idle_rss) / 1024);
    assert!(attacked_p99 < idle_p99 * 3, "manifest GET p99 {attacked_p99:?} under attack, {idle_p99:?} idle");
    // The per-address allowance is 60 checks a minute; everything past it is 429.
    assert!(checked <= 60 + ATTEMPTS_IN_FLIGHT / 10, "{checked} password checks in one minute from one address");
    assert!(limited >= 1000, "only {limited} of {} guesses answered 429", statuses.len());
    assert!(refused_at_once >= HALF_OPEN - 256, "only {refused_at_once} of {HALF_OPEN} half-open connections refused");
    assert!(other.is_empty(), "unexpected answers: {:?}", &other[..other.len().min(20)]);
    // Both attacking addresses at their connection cap (256 each, the default), and a little
    // for the pools: a connection past a cap is closed before the next is accepted, so a flood
    // of them never holds descriptors while it waits for a task to refuse it.
    let fds = peak_fds.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fds < idle_fds + 2 * 256 + 48, "{fds} open files (idle {idle_fds})");
}
