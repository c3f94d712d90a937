//! HTTPS in the node: with `server.tls_cert` and `server.tls_key` set, `afreg serve` answers
//! TLS on `server.listen` (and nothing in clear), with the configured certificate, re-reads it
//! on SIGHUP and still shuts down gracefully on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Certificate, Client, StatusCode};
use testkit::{file_tail, free_port, Kubo, NodeConfig, Postgres};

/// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`; returns its PEM.
fn write_cert(dir: &Path, stem: &str) -> (PathBuf, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.pem())
}

fn client_trusting(pem: &str) -> Client {
    Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// An `afreg serve` process, killed on drop (its log is printed if the test failed).
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- afreg log ---\n{}", file_tail(&self.log, 60));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(s.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn node_serves_https_with_the_configured_certificate() {
    let pg = Postgres::start();
    let kubo = Kubo::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = write_cert(dir.path(), "first");
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
    cfg.config.server.public_url = base.clone();
    cfg.config.server.tls_cert = Some(cert.clone());
    cfg.config.server.tls_key = Some(key.clone());
    let config = dir.path().join("afreg.toml");
    std::fs::write(
        &config,
        cfg.to_config(port, testkit::free_port(), testkit::free_port(), dir.path()).to_toml().unwrap(),
    )
    .unwrap();
    let log = dir.path().join("afreg.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(testkit::afreg_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AFREG_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut node = Serve { child, log };

    // Healthy over HTTPS, trusting only this certificate.
    let https = client_trusting(&pem);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(node.child.try_wait().unwrap().is_none(), "afreg exited during start-up");
        match https.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == StatusCode::OK => break,
            other => assert!(Instant::now() < deadline, "not healthy over HTTPS in 30 s: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API over TLS: /v2/ asks for a token, with the realm on the HTTPS public URL.
    let r = https.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&format!("realm=\"{base}/token\"")), "{challenge}");

    // Nothing in clear on that port, and a client that does not trust the certificate refuses it.
    let plain = Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let r = plain.get(format!("http://127.0.0.1:{port}/v2/")).send().await;
    assert!(r.as_ref().map_or(true, |r| r.status() == StatusCode::BAD_REQUEST), "plain HTTP was served: {r:?}");
    let other = write_cert(dir.path(), "other").2;
    let err = client_trusting(&other).get(format!("{base}/healthz")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // A renewed certificate at the same paths is served after SIGHUP, without a restart.
    let (_, _, renewed) = {
        let (c, k, p) = write_cert(dir.path(), "renewed");
        std::fs::rename(&c, &cert).unwrap();
        std::fs::rename(&k, &key).unwrap();
        (cert.clone(), key.clone(), p)
    };
    signal(node.child.id(), "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client_trusting(&renewed).get(format!("{base}/healthz")).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate is not served after SIGHUP: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client_trusting(&pem).get(format!("{base}/healthz")).send().await.is_err(),
        "the old certificate is still served"
    );
    assert!(node.child.try_wait().unwrap().is_none(), "SIGHUP stopped the node");

    // SIGTERM: a graceful stop, exit status 0.
    signal(node.child.id(), "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "afreg did not stop within 15 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "afreg exited with {status}");
    assert!(std::fs::read_to_string(&node.log).unwrap().contains("\"event\":\"shutdown\""));
}
