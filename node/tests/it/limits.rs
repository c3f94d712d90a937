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

fn client_from(source: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(source))
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

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
    while Instant::now() < until {
        s.set_read_timeout(Some((until - Instant::now()).max(Duration::from_millis(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
    false
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
        assert_eq!(closed.iter().filter(|c| **c).count(), 40, "{listener}: connections past the per-client cap of 20 closed at once");
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
            assert!(closed_within(s, Duration::from_secs(5)), "{listener}: an idle connection outlived the 2 s header timeout");
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
    let c = reqwest::blocking::Client::builder().no_proxy().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap();
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
    assert_eq!(region.pg.psql(&format!("SELECT size FROM uploads WHERE id = '{id}'")), "0", "the stalled chunk left nothing");

    // A 16 MiB blob fetched by a client that never reads: the node's write stalls, and after
    // the idle bound it drops the connection (the open-connection gauge falls back).
    let blob = testkit::random_bytes(16 << 20);
    let digest = sha256_digest(&blob);
    testkit::oci::upload_blob(&c, &url, "slow/app", &digest, &blob).unwrap();
    let open = |c: &reqwest::blocking::Client| {
        let text = c.get(region.node.metrics_url()).send().unwrap().text().unwrap();
        text.lines()
            .find(|l| l.starts_with("afreg_connections_open{") && l.contains("listener=\"public\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let reader = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        let mut s: TcpStream = s.into();
        write!(s, "GET /v2/slow/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s
    };
    let base = open(&c);
    let reader = reader();
    within(Duration::from_secs(5), Duration::from_millis(50), "the unread download counted open", || open(&c) >= base + 1.0);
    let stalled = Instant::now();
    within(Duration::from_secs(15), Duration::from_millis(200), "the unread download dropped after the 2 s idle bound", || {
        open(&c) <= base
    });
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
    });
    let url = region.node.url();
    // One address: a burst of 50, then 429 TOOMANYREQUESTS with Retry-After.
    let flooder = client_from(Ipv4Addr::new(127, 0, 0, 3));
    let statuses: Vec<u16> = (0..80).map(|_| flooder.get(format!("{url}/v2/")).send().unwrap().status().as_u16()).collect();
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

    // One token from many addresses: limited on the token, though each address is fresh.
    let token = honest.get(format!("{url}/token?service=afreg&scope=repository:r/x:pull")).send().unwrap().json::<serde_json::Value>().unwrap()
        ["token"]
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
fn upload_sessions_are_capped_per_user_and_blobs_by_size() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = vec![];
        c.config.storage.max_uploads_per_user = 3;
        c.config.storage.max_blob_bytes = 1000;
    });
    region.node.add_user_with_grants("bob", "bobs-passw0rd", &["b/*:pull,push"]);
    region.node.add_user_with_grants("carol", "carols-passw0rd", &["c/*:pull,push"]);
    let url = region.node.url();
    let c = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let token = |user: &str, pw: &str, repo: &str| {
        let r = c.get(format!("{url}/token?service=afreg&scope=repository:{repo}:pull,push")).basic_auth(user, Some(pw)).send().unwrap();
        r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_owned()
    };
    let bob = token("bob", "bobs-passw0rd", "b/x");
    let carol = token("carol", "carols-passw0rd", "c/x");
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
    let open: Vec<String> = region.pg.psql("SELECT id FROM uploads WHERE owner = 'user:bob'").lines().map(str::to_owned).collect();
    assert_eq!(open.len(), 3);
    let r = c.delete(format!("{url}/v2/b/x/blobs/uploads/{}", open[0])).bearer_auth(&bob).send().unwrap();
    assert_eq!(r.status(), 204);
    let r = start(&bob, "b/x");
    assert_eq!(r.status(), 202);
    let session = r.headers()["location"].to_str().unwrap().to_owned();

    // The blob size cap: exactly 1000 bytes is accepted; 1001 in one request is 413
    // SIZE_INVALID, declared or streamed without a length, and nothing is kept.
    let ok = vec![7u8; 1000];
    let r = c.post(format!("{url}/v2/c/x/blobs/uploads/?digest={}", sha256_digest(&ok))).bearer_auth(&carol).body(ok.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "a blob of exactly the limit");
    let big = vec![8u8; 1001];
    let d = sha256_digest(&big);
    let r = c.post(format!("{url}/v2/c/x/blobs/uploads/?digest={d}")).bearer_auth(&carol).body(big.clone()).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("SIZE_INVALID"));
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(big.clone()));
    let r = c.post(format!("{url}/v2/c/x/blobs/uploads/?digest={d}")).bearer_auth(&carol).body(streamed).send().unwrap();
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
        next = r.headers().get("link").map(|l| l.to_str().unwrap().trim_start_matches('<').split('>').next().unwrap().to_owned());
        let v: serde_json::Value = r.json().unwrap();
        let page: Vec<String> = v["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect();
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
