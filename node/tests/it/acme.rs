//! Automatic TLS against Pebble, Let's Encrypt's ACME test server (a real ACME CA, validating
//! for real): the node obtains its certificate through TLS-ALPN-01 on its own listener, a
//! client trusting Pebble's root pulls over HTTPS, a restart reuses the cached certificate
//! instead of asking for another, and a short validity forces a renewal that the node serves
//! to new connections without a restart while a slow pull started before it runs to the end.
//!
//! A global name that GeoDNS answers with another region is certified through HTTP-01: Pebble
//! resolves names through a real DNS server (PowerDNS) that sends it to the other region, which
//! answers the first region's challenge.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;
use testkit::dns::PowerDns;
use testkit::{
    afreg_bin as bin, file_tail, free_port, open_log, sha256_digest, tools_dir, Action, Kubo, Node, NodeConfig,
    Postgres,
};

/// Pebble on loopback. It validates `localhost` at 127.0.0.1, and other names where `dns`
/// (when given) resolves them.
struct Pebble {
    dir: TempDir,
    child: Child,
    port: u16,
    management: u16,
}

impl Pebble {
    /// Pebble issuing certificates valid for `validity`; its TLS-ALPN-01 checks dial
    /// `tls_port`, its HTTP-01 checks `http_port`.
    fn start(tls_port: u16, http_port: u16, validity: Duration, dns: Option<SocketAddr>) -> Pebble {
        let certs = tools_dir().join("pebble-certs");
        let dir = tempfile::tempdir().unwrap();
        let (port, management) = (free_port(), free_port());
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": certs.join("localhost/cert.pem"),
            "privateKey": certs.join("localhost/key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "profiles": {"default": {"description": "short-lived, to force renewals", "validityPeriod": validity.as_secs()}},
        }});
        let path = dir.path().join("pebble-config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = open_log(&dir.path().join("pebble.log"));
        let mut cmd = Command::new(tools_dir().join("pebble"));
        cmd.arg("-config").arg(&path);
        if let Some(dns) = dns {
            cmd.arg("-dnsserver").arg(dns.to_string());
        }
        let child = cmd
            // No random waits before validating, no nonces rejected on purpose: the test is of
            // the node, not of its retry of Pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pebble (scripts/setup.sh installs it)");
        let p = Pebble { dir, child, port, management };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", p.port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not listen:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        file_tail(&self.dir.path().join("pebble.log"), 40)
    }

    /// The root that signs the certificates Pebble issues (a new one each run).
    fn issuing_root(&self) -> Vec<u8> {
        let ca = std::fs::read(tools_dir().join("pebble-certs/pebble.minica.pem")).unwrap();
        let c = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        c.get(format!("https://127.0.0.1:{}/roots/0", self.management)).send().unwrap().bytes().unwrap().to_vec()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for `https://localhost:PORT` trusting only `root`, reporting the peer certificate.
/// It keeps no idle connection; a new client also has no TLS session to resume, so its first
/// handshake is a full one, and the certificate it reports is the one served now.
fn client(port: u16, root: &[u8]) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The leaf certificate (DER) a new connection to `url` is served, if the handshake succeeds.
fn served_cert(c: &reqwest::blocking::Client, url: &str) -> Option<Vec<u8>> {
    let r = c.get(format!("{url}/v2/")).send().ok()?;
    r.extensions().get::<reqwest::tls::TlsInfo>()?.peer_certificate().map(<[u8]>::to_vec)
}

/// The certificate a new client is served once the node answers over HTTPS.
fn wait_for_cert(port: u16, root: &[u8], url: &str, within: Duration, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(cert) = served_cert(&client(port, root), url) {
            return cert;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_node_gets_renews_and_serves_its_certificate_through_acme() {
    let port = free_port();
    // Renewal comes at two thirds of the validity: about 20 s after issuance.
    let pebble = Pebble::start(port, free_port(), Duration::from_secs(30), None);
    let (pg, kubo) = (Postgres::start(), Kubo::start());
    let data = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
    cfg.port = Some(port);
    cfg.config.auth.anonymous = Action::ALL.to_vec();
    cfg.config.server.public_url = format!("https://localhost:{port}");
    cfg.config.server.acme = Some(afreg_config::AcmeConfig {
        directory_url: format!("https://127.0.0.1:{}/dir", pebble.port),
        contact: vec!["mailto:ops@example.org".into()],
        domains: vec!["localhost".into()],
        cache_dir: data.path().join("acme"),
        ca_file: Some(tools_dir().join("pebble-certs/pebble.minica.pem")),
        ..Default::default()
    });
    let mut node = Node::start_unready(bin(), cfg);
    let url = format!("https://localhost:{port}");
    let root = pebble.issuing_root();
    let c = client(port, &root);
    let first = wait_for_cert(port, &root, &url, Duration::from_secs(60), "the first certificate");
    let pid = node.pid();

    // A restart serves the cached certificate: nothing new is issued.
    node.stop();
    node.spawn_again();
    let after_restart = wait_for_cert(port, &root, &url, Duration::from_secs(30), "the node after a restart");
    assert_eq!(after_restart, first, "a restart asked for a new certificate instead of reusing the cached one");

    // A blob to pull slowly across the renewal.
    let blob = testkit::random_bytes(12 * 1024 * 1024);
    let digest = sha256_digest(&blob);
    let r = c.post(format!("{url}/v2/acme/blob/blobs/uploads/?digest={digest}")).body(blob.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let mut pull = c.get(format!("{url}/v2/acme/blob/blobs/{digest}")).send().unwrap();
    assert_eq!(pull.status(), 200);
    let in_flight_cert =
        pull.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()).unwrap().to_vec();
    let pid_now = node.pid();

    let mut got = Vec::with_capacity(blob.len());
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut renewed = None;
    let mut last_check = Instant::now();
    loop {
        let n = pull.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if renewed.is_none() {
            // Read slowly until a new connection is served another certificate.
            if last_check.elapsed() > Duration::from_millis(500) {
                renewed = served_cert(&client(port, &root), &url).filter(|cert| *cert != in_flight_cert);
                last_check = Instant::now();
            }
            assert!(Instant::now() < deadline, "no renewed certificate within 120 s");
            // 64 KiB every 150 ms: the 12 MiB take about 29 s, past the renewal.
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    let renewed = renewed.expect("the pull ended before the renewal: make it slower");
    assert_ne!(renewed, first);
    assert_eq!(got.len(), blob.len(), "the in-flight pull was cut short by the renewal");
    assert_eq!(sha256_digest(&got), digest);
    assert_eq!(node.pid(), pid_now, "the renewal needed no restart");
    assert_ne!(pid, pid_now, "(the restart above did restart)");
}

/// `https://{name}:{port}` at `ip`, trusting only `root`.
fn client_at(name: &str, ip: Ipv4Addr, port: u16, root: &[u8]) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(name, (ip, port).into())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn a_global_name_that_dns_sends_to_another_region_is_certified_through_http01() {
    // Two regions on their own addresses; the global name resolves to eu only, so every check
    // of us's order for it reaches eu.
    const US: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
    const EU: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
    const GLOBAL: &str = "registry.test";
    let dns = PowerDns::zone("test", &[("registry-us", US), ("registry-eu", EU), ("registry", EU)]);
    // Every region answers HTTP-01 on the same port, as on port 80 in production.
    let http_port = free_port();
    let pebble = Pebble::start(free_port(), http_port, Duration::from_secs(3600), Some(dns.addr()));
    let root = pebble.issuing_root();

    let region = |name: &str, ip: Ipv4Addr, peer: Ipv4Addr| {
        let (pg, kubo) = (Postgres::start(), Kubo::start());
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
        cfg.port = Some(port);
        cfg.listen_ip = Some(ip);
        cfg.config.auth.anonymous = Action::ALL.to_vec();
        // Regions of one cluster share its secret, which proves their answers to each other.
        cfg.config.cluster.secret = Some("the-cluster-secret-of-this-test".into());
        let host = format!("registry-{name}.test");
        cfg.config.server.public_url = format!("https://{host}:{port}");
        cfg.config.server.acme = Some(afreg_config::AcmeConfig {
            directory_url: format!("https://127.0.0.1:{}/dir", pebble.port),
            contact: vec!["mailto:ops@example.org".into()],
            domains: vec![host.clone(), GLOBAL.into()],
            cache_dir: data.path().join("acme"),
            ca_file: Some(tools_dir().join("pebble-certs/pebble.minica.pem")),
            challenge: afreg_config::AcmeChallenge::Http01,
            http_listen: (ip, http_port).into(),
            http_port,
            // The other region by address: the test's names resolve only through `dns`.
            peers: vec![peer.to_string()],
        });
        let node = Node::start_unready(bin(), cfg);
        (node, host, port, pg, kubo, data)
    };
    let us = region("us", US, EU);
    let eu = region("eu", EU, US);

    // The certificates are ordered under a flood of challenge requests from another client
    // (127.0.0.3): unknown tokens for the global name, half of them claiming to be forwarded.
    // Its fan-out is rate-limited per client, so the CA's own checks still get through.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let flooding = flooding.clone();
            std::thread::spawn(move || {
                let c = super::hostile::client_from(Ipv4Addr::new(127, 0, 0, 3));
                let mut sent = 0u64;
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    let token: String = format!("{t}{sent:042}");
                    for ip in [US, EU] {
                        let mut r = c
                            .get(format!("http://{ip}:{http_port}/.well-known/acme-challenge/{token}"))
                            .header("host", GLOBAL)
                            .timeout(Duration::from_secs(5));
                        if sent % 2 == 1 {
                            r = r.header("afreg-acme-forwarded", format!("nonce-{sent}"));
                        }
                        let _ = r.send();
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(90);
    for (node, host, port, ..) in [&us, &eu] {
        let ip = if host.contains("-us") { US } else { EU };
        // Each region's certificate covers the global name and its regional one.
        for name in [GLOBAL, host.as_str()] {
            loop {
                let r = client_at(name, ip, *port, &root).get(format!("https://{name}:{port}/v2/")).send();
                match r {
                    Ok(r) => {
                        // The handshake verified the name; the registry answered behind it.
                        let api =
                            r.headers().get("docker-distribution-api-version").map(|v| v.to_str().unwrap().to_owned());
                        assert_eq!(api.as_deref(), Some("registry/2.0"), "{name} at {ip}: {}", r.status());
                        break;
                    }
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "{host} served no certificate for {name} within 90 s: {e}\n{}\n--- pebble ---\n{}",
                        node.log_tail(40),
                        pebble.log()
                    ),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let flooded: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    eprintln!("certified while {} challenge requests flooded both regions", flooded * 2);
    assert!(flooded > 100, "the flood ran ({flooded} rounds)");
    // The HTTP-01 port serves challenges only.
    let plain = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let r = plain.get(format!("http://{US}:{http_port}/v2/")).send().unwrap();
    assert_eq!(r.status(), 404);
    let r = plain
        .get(format!("http://{US}:{http_port}/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "an unknown token is not answered");
}

/// Whoever controls a host the cluster lists as a peer (a recycled address, a dangling name)
/// orders a certificate for the cluster's global name with an ACME account of its own, and
/// answers the challenge on that host. The region the CA is sent to asks its peers, the
/// attacker's host among them: its answer has no proof of the cluster secret, so the region
/// does not relay it and the attacker's authorization fails. A name the cluster does not
/// certify is not answered at all.
#[test]
fn a_listed_host_answering_for_its_own_account_gets_no_certificate_for_the_cluster_name() {
    use rustls_acme::acme::{Account, AuthStatus, Directory};
    use rustls_acme::futures_rustls::rustls;

    const EU: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 25);
    const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 26);
    const GLOBAL: &str = "registry.test";
    let dns = PowerDns::zone("test", &[("registry-eu", EU), ("registry", EU)]);
    let http_port = free_port();
    let pebble = Pebble::start(free_port(), http_port, Duration::from_secs(3600), Some(dns.addr()));

    let (pg, kubo) = (Postgres::start(), Kubo::start());
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
    cfg.port = Some(port);
    cfg.listen_ip = Some(EU);
    cfg.config.server.public_url = format!("https://registry-eu.test:{port}");
    cfg.config.server.acme = Some(afreg_config::AcmeConfig {
        directory_url: format!("https://127.0.0.1:{}/dir", pebble.port),
        contact: vec!["mailto:ops@example.org".into()],
        domains: vec!["registry-eu.test".into(), GLOBAL.into()],
        cache_dir: data.path().join("acme"),
        ca_file: Some(tools_dir().join("pebble-certs/pebble.minica.pem")),
        challenge: afreg_config::AcmeChallenge::Http01,
        http_listen: (EU, http_port).into(),
        http_port,
        peers: vec![ATTACKER.to_string()],
    });
    let node = Node::start_unready(bin(), cfg);
    // Pebble validates at once: the region's HTTP-01 listener must be up first, or the
    // authorization goes invalid for a refused connection and the relay is never tried.
    testkit::oci::within(Duration::from_secs(30), Duration::from_millis(50), "the region's HTTP-01 listener", || {
        std::net::TcpStream::connect((EU, http_port)).is_ok()
    });

    // The attacker's own ACME account and order for the cluster's name.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(tools_dir().join("pebble-certs/pebble.minica.pem")).unwrap();
    for c in <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let (account, auth_url, challenge, key_auth) = rt.block_on(async {
        let directory = Directory::discover(&tls, format!("https://127.0.0.1:{}/dir", pebble.port)).await.unwrap();
        let account = Account::create(&tls, directory, &["mailto:attacker@example.org".to_owned()]).await.unwrap();
        let (_, order) = account.new_order(&tls, vec![GLOBAL.to_owned()]).await.unwrap();
        let auth_url = order.authorizations[0].clone();
        let auth = account.auth(&tls, &auth_url).await.unwrap();
        let (challenge, key_auth) = account.http_01(&auth.challenges).unwrap();
        let challenge = (challenge.url.clone(), challenge.token.clone());
        (account, auth_url, challenge, key_auth)
    });
    let (challenge_url, token) = challenge;

    // The attacker answers its challenge on the listed host, as a region would.
    let listener = std::net::TcpListener::bind((ATTACKER, http_port)).unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (asked, key_auth) = (asked.clone(), key_auth.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = std::io::Write::write_all(
                    &mut conn,
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{key_auth}",
                        key_auth.len()
                    )
                    .as_bytes(),
                );
            }
        });
    }
    let status = rt.block_on(async {
        account.challenge(&tls, &challenge_url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let auth = account.auth(&tls, &auth_url).await.unwrap();
            if !matches!(auth.status, AuthStatus::Pending) || Instant::now() > deadline {
                return auth.status;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) > 0, "the region never asked the listed host");
    assert!(
        matches!(status, AuthStatus::Invalid),
        "the attacker's authorization for {GLOBAL} is {status:?}, not invalid;\n{}\n--- pebble ---\n{}",
        node.log_tail(30),
        pebble.log()
    );
    assert!(node.log().contains("acme_answer_unproven"), "the refused answer was not logged");

    // Names the cluster does not certify get no answer, and are not forwarded.
    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    let plain = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(format!("http://{EU}:{http_port}/.well-known/acme-challenge/{token}"))
        .header("host", "elsewhere.example.org")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), before, "a foreign name's challenge was forwarded");
    drop((pg, kubo, data, dns));
}
