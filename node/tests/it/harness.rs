//! The testkit's `Node` lifecycle against the real binary: start, crash, restart on the same
//! port, graceful stop, users, and the memory probe other tests rely on.

use std::path::Path;
use std::time::Duration;

use testkit::{peak_rss_kib, Node, NodeConfig, TestRegion};

use testkit::afreg_bin as bin;

fn get(url: &str, basic: Option<(&str, &str)>) -> u16 {
    let url = url.to_string();
    let basic = basic.map(|(u, p)| (u.to_string(), p.to_string()));
    std::thread::spawn(move || {
        let c = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        let mut r = c.get(&url);
        if let Some((u, p)) = basic {
            r = r.basic_auth(u, Some(p));
        }
        r.send().map(|r| r.status().as_u16()).unwrap_or(0)
    })
    .join()
    .unwrap()
}

#[test]
fn node_survives_kill_and_restart_on_the_same_port() {
    let mut region = TestRegion::start(bin());
    let url = region.node.url();
    let port = region.node.port();
    assert_eq!(get(&format!("{url}/healthz"), None), 200);
    assert!(peak_rss_kib(region.node.pid()) > 0);

    let first_pid = region.node.pid();
    region.node.kill();
    assert!(!region.node.is_running());
    assert_eq!(get(&format!("{url}/healthz"), None), 0, "node still answers after SIGKILL");

    region.node.restart();
    assert_eq!(region.node.port(), port);
    assert_ne!(region.node.pid(), first_pid);
    assert_eq!(get(&format!("{url}/healthz"), None), 200);
    assert_eq!(region.node.log().matches("=== testkit: starting").count(), 2, "log keeps both runs");

    region.node.restart(); // graceful stop, then start
    assert_eq!(get(&format!("{url}/healthz"), None), 200);
    region.node.stop();
    assert_eq!(get(&format!("{url}/healthz"), None), 0);
}

#[test]
fn added_user_gets_a_token_and_a_wrong_password_does_not() {
    let region = TestRegion::start_with(bin(), |c| c.config.auth.anonymous = vec![]);
    region.node.add_user("bob", "hunter22");
    let token = format!("{}/token?service=afreg&scope=repository:x/y:pull", region.node.url());
    assert_eq!(get(&token, Some(("bob", "hunter22"))), 200);
    assert_eq!(get(&token, Some(("bob", "wrong"))), 401);
}

#[test]
fn a_binary_that_exits_at_start_up_is_reported_with_its_log() {
    // `false serve --config FILE` exits 1 at once: try_start must say so instead of waiting.
    let cfg = NodeConfig::new("postgres://postgres@127.0.0.1:1/afreg", "http://127.0.0.1:1");
    let started = std::time::Instant::now();
    match Node::try_start(Path::new("/bin/false"), cfg) {
        Ok(_) => panic!("/bin/false became healthy"),
        Err(e) => assert!(e.contains("exited during start-up") && e.contains("testkit: starting"), "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "early exit not noticed promptly");
}
