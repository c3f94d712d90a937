//! Several processes per region: region us runs two `afreg serve` processes on one Postgres
//! and one Kubo (sharing its internal port), beside eu and asia. One holds us's Raft seat;
//! the other serves the API and relays to it. The holder is killed and paused for real.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use testkit::cluster::TestCluster;
use testkit::oci::{assert_pulls, client, get_blob, get_manifest, push, within};
use testkit::workload::{assert_acked_readable, assert_logs_agree, Workload};
use testkit::{random_bytes, sha256_digest, Action, Node, NodeConfig};

use testkit::afreg_bin as bin;

/// The takeover bound this build promises: a killed or paused holder's seat is held again by
/// another process within this (the lease is 3 s).
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// eu, asia and us (ids 1, 2, 3: eu initializes and leads, us is a follower), us with two
/// processes, `us-0` started first.
fn cluster_with_two_us_processes() -> TestCluster {
    let mut c = TestCluster::start(bin(), &["eu", "asia", "us"], |name, c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        if name == "us" {
            c.config.cluster.shared_listeners = true;
            c.config.cluster.process_name = "us-0".into();
        }
    });
    c.add_process("us", "us-1");
    c
}

fn signal(node: &Node, sig: i32) {
    assert_eq!(unsafe { libc::kill(node.pid() as i32, sig) }, 0, "kill({sig})");
}

/// SIGCONTs the process when dropped, so a failing test does not leave it stopped.
struct Paused(i32);
impl Drop for Paused {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn both_processes_of_a_region_serve_pushes_pulls_and_one_chunked_upload_and_read_each_others_writes_at_once() {
    let cluster = cluster_with_two_us_processes();
    let us = cluster.region("us");
    let (a, b) = (us.process(0), us.process(1));
    // One holder, and both processes say who it is.
    let (holder, epoch) = a.seat().expect("us-0 reports the seat");
    assert_eq!(b.seat(), Some((holder.clone(), epoch)), "both processes name the same holder and epoch");
    let s = b.local_status().unwrap();
    let names: Vec<&str> =
        s["seat"]["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["us-0", "us-1"], "the seat reports every process of the region");
    eprintln!("us seat: held by {holder} at epoch {epoch}");

    // Written through one process, read back at once through the other (no polling: the
    // write was acknowledged once applied in us's Postgres), in both directions.
    let c = client();
    for (i, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
        let img = testkit::oci::new_image(64 * 1024);
        let tag = format!("v{i}");
        push(&c, &from.url(), "two/app", &tag, &img).unwrap_or_else(|e| panic!("push through {}: {e:?}", from.url()));
        assert_pulls(&c, &to.url(), "two/app", &tag, &img);
        // And read linearizably through the other process (its read index comes through the holder).
        let (status, body) = get_manifest(&c, &to.url(), "two/app", &tag, "?consistency=linearizable");
        assert_eq!((status, body), (200, img.manifest.clone()), "linearizable read through {}", to.url());
        // Replicated to the other regions as usual.
        within(Duration::from_secs(15), POLL, "the push visible in eu", || {
            testkit::oci::check_pulls(&c, &cluster.region("eu").url(), "two/app", &tag, &img).is_ok()
        });
    }

    // A chunked upload whose requests alternate between the processes.
    let data = random_bytes(3 * 1024 * 1024 + 5);
    let digest = sha256_digest(&data);
    let apis = [
        testkit::api::Api::new(a.url(), Duration::from_secs(30)),
        testkit::api::Api::new(b.url(), Duration::from_secs(30)),
    ];
    let mut session = apis[0].start_upload("two/chunked");
    let chunk = 1024 * 1024;
    for (i, start) in (0..data.len()).step_by(chunk).enumerate() {
        let end = (start + chunk).min(data.len());
        let body = data[start..end].to_vec();
        let r = apis[(i + 1) % 2].call(Method::PATCH, &session, |r| {
            r.header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{}", end - 1))
                .body(body)
        });
        r.expect_status(202);
        assert_eq!(
            r.header("range"),
            Some(format!("0-{}", end - 1).as_str()),
            "PATCH {i} through process {}",
            (i + 1) % 2
        );
        session = r.header("location").expect("location").to_owned();
    }
    apis[0]
        .call(Method::PUT, &format!("{session}{}digest={digest}", if session.contains('?') { '&' } else { '?' }), |r| r)
        .expect_status(201);
    for node in [a, b] {
        let (status, got) = get_blob(&c, &node.url(), "two/chunked", &digest).unwrap();
        assert_eq!(status, 200);
        assert!(got == data, "the chunked blob read through {} is not the bytes uploaded", node.url());
    }
}

#[test]
fn a_killed_seat_holder_is_replaced_within_the_bound_and_the_cluster_keeps_its_term() {
    let mut cluster = cluster_with_two_us_processes();
    let leader = cluster.wait_leader(Duration::from_secs(30));
    assert_ne!(leader, "us", "us must be a follower for this test (eu initializes the cluster)");
    let us = cluster.region("us");
    let (holder, epoch) = us.process(0).seat().unwrap();
    let (h, other) = if holder == "us-0" { (0, 1) } else { (1, 0) };
    let other_name = format!("us-{other}");
    let c = client();
    let img = testkit::oci::new_image(32 * 1024);
    push(&c, &us.process(other).url(), "kill/app", "before", &img).expect("push through the standby");
    let before = cluster.terms();

    let killed = Instant::now();
    cluster.region_mut("us").process_mut(h).kill();
    let us = cluster.region("us");
    let survivor = us.process(other);
    let (new_epoch, took) = survivor.wait_seat_holder(&other_name, TAKEOVER_BOUND);
    eprintln!("{other_name} holds the seat {took:?} after us-{h} was killed (epoch {epoch} -> {new_epoch})");
    assert!(new_epoch > epoch, "a takeover bumps the epoch");

    // Writes through the new holder succeed again (the first attempts may meet the member
    // still starting, answered 503).
    let img2 = testkit::oci::new_image(32 * 1024);
    let until = Instant::now() + Duration::from_secs(15);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match push(&c, &survivor.url(), "kill/app", "after", &img2) {
            Ok(()) => break,
            Err(e) if Instant::now() < until && e.status >= 500 => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("push through the new holder: {e:?}\n{}", survivor.log_tail(40)),
        }
    }
    eprintln!("a push through the new holder succeeded {:?} after the kill ({attempts} attempts)", killed.elapsed());
    for r in &cluster.regions {
        for node in r.processes().filter(|n| n.is_running()) {
            within(Duration::from_secs(15), POLL, &format!("both pushes readable at {}", node.url()), || {
                testkit::oci::check_pulls(&c, &node.url(), "kill/app", "before", &img).is_ok()
                    && testkit::oci::check_pulls(&c, &node.url(), "kill/app", "after", &img2).is_ok()
            });
        }
    }
    // us was a follower: no election happened anywhere.
    assert_eq!(cluster.terms(), before, "the cluster's term changed over the takeover");

    // The killed process comes back as a standby of the new holder.
    cluster.region_mut("us").process_mut(h).restart();
    let us = cluster.region("us");
    let back = us.process(h);
    within(Duration::from_secs(15), POLL, "the restarted process reports the new holder", || {
        back.seat() == Some((other_name.clone(), new_epoch))
    });
    assert_eq!(cluster.terms(), before, "the restart changed the cluster's term");
}

#[test]
fn a_paused_seat_holder_that_wakes_up_writes_nothing_steps_down_and_no_acknowledged_write_is_lost() {
    let cluster = cluster_with_two_us_processes();
    let us = cluster.region("us");
    let (holder, epoch) = us.process(0).seat().unwrap();
    let (h, other) = if holder == "us-0" { (0, 1) } else { (1, 0) };
    let (paused, survivor) = (us.process(h), us.process(other));
    let other_name = format!("us-{other}");

    // Writers through the standby and through eu, before, during and after.
    let via = vec![survivor.url(), cluster.region("eu").url()];
    let workload = Workload::start(&via, "pause/app", Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(2));

    // A holder paused in the middle of a storage write leaves a transaction open that holds
    // the seat's row (FOR KEY SHARE); this one stands in for it, deterministically, beside
    // whatever the paused process itself left open.
    let mut stalled_write =
        us.pg().psql_background("BEGIN; SELECT epoch FROM raft_seat FOR KEY SHARE; SELECT pg_sleep(60); COMMIT;");
    std::thread::sleep(Duration::from_millis(300));
    signal(paused, libc::SIGSTOP);
    let guard = Paused(paused.pid() as i32);
    let (new_epoch, took) = survivor.wait_seat_holder(&other_name, TAKEOVER_BOUND);
    eprintln!("{other_name} holds the seat {took:?} after {holder} was paused (epoch {epoch} -> {new_epoch})");
    let ended = stalled_write.wait().unwrap();
    assert!(!ended.success(), "the unfinished transaction on the seat's row was ended by the takeover");

    // From here on, record every write to the Raft log, vote and replicated tables, with the
    // connection's application_name (each process names its connections).
    us.pg().psql_retrying_deadlocks(AUDIT_SQL);
    std::thread::sleep(Duration::from_secs(3));
    signal(paused, libc::SIGCONT);
    drop(guard);

    // The resumed process steps down: it names the new holder, and says it lost the seat.
    within(Duration::from_secs(15), POLL, "the resumed process steps down", || {
        paused.seat() == Some((other_name.clone(), new_epoch))
            && paused.log().contains("\"seat_lost\"")
            && paused.log().contains("this process no longer runs the region's Raft member")
    });
    std::thread::sleep(Duration::from_secs(3));
    let history = workload.stop();
    let writers: Vec<String> = us
        .pg()
        .psql("SELECT DISTINCT app || ' ' || tbl FROM seat_audit ORDER BY 1")
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!("writes since the takeover, by connection: {writers:?}");
    let from_paused: Vec<&String> = writers
        .iter()
        .filter(|w| w.starts_with(&format!("afreg {holder} ")) || w.starts_with(&format!("afreg seat {holder} ")))
        .collect();
    assert!(from_paused.is_empty(), "the resumed holder wrote: {from_paused:?}");
    assert!(
        writers.iter().any(|w| w.starts_with(&format!("afreg {other_name} raft raft_log"))),
        "the new holder appends to the log"
    );

    eprintln!(
        "workload: {} acknowledged, {} refused, {} unknown",
        history.acked.len(),
        history.refused,
        history.unknown
    );
    assert!(history.acked.len() > 20, "too few pushes were acknowledged to judge");
    let mut from: Vec<String> = cluster.regions.iter().filter(|r| r.name != "us").map(|r| r.url()).collect();
    from.extend([survivor.url(), paused.url()]);
    let lag = assert_acked_readable(&history, &from, Duration::from_secs(30));
    eprintln!("every acknowledged push read back byte-identical from every region and both us processes ({lag:?})");
    let regions: Vec<&testkit::cluster::ClusterMember> = cluster.regions.iter().collect();
    let compared = assert_logs_agree(&regions);
    eprintln!("the regions' logs agree on every one of {compared} shared indexes");
}

/// Triggers that record, for every row written to a Raft or replicated table, which
/// connection wrote it.
const AUDIT_SQL: &str = "
CREATE TABLE seat_audit (app TEXT, tbl TEXT, at TIMESTAMPTZ DEFAULT clock_timestamp());
CREATE FUNCTION seat_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO seat_audit (app, tbl) VALUES (current_setting('application_name'), TG_TABLE_NAME);
  RETURN NULL;
END $$;
DO $$
DECLARE t TEXT;
BEGIN
  FOREACH t IN ARRAY ARRAY['raft_log', 'raft_state', 'raft_snapshot', 'repositories', 'blobs', 'repository_blobs',
                           'manifests', 'manifest_references', 'tags', 'users', 'user_grants', 'regions'] LOOP
    EXECUTE format('CREATE TRIGGER seat_audit AFTER INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION seat_audit()', t);
  END LOOP;
END $$;";

#[test]
fn two_processes_started_at_the_same_instant_seat_exactly_one_holder() {
    let pg = testkit::Postgres::start();
    let kubo = testkit::Kubo::start();
    let internal = testkit::free_port();
    let cfg = |name: &str| {
        let mut c = NodeConfig::for_kubo(pg.url(), &kubo);
        c.internal_port = Some(internal);
        c.config.cluster.shared_listeners = true;
        c.config.cluster.process_name = name.into();
        c.config.cluster.kubo_swarm_addrs = vec![kubo.swarm_multiaddr()];
        // A region's processes share the cluster secret (the SDL passes it in the environment).
        c.config.cluster.secret = Some(testkit::cluster::TEST_SECRET.into());
        c.config.auth.anonymous = Action::ALL.to_vec();
        c
    };
    let mut nodes = [Node::start_unready(bin(), cfg("p-0")), Node::start_unready(bin(), cfg("p-1"))];
    for round in 0..3 {
        for n in nodes.iter_mut() {
            n.wait_healthy(Duration::from_secs(30)).unwrap();
        }
        // Both report one holder at one epoch, and only one runs a Raft member.
        let (holder, epoch) = within_value(Duration::from_secs(15), || {
            let views: Vec<Option<(String, u64)>> = nodes.iter().map(Node::seat).collect();
            match &views[..] {
                [Some(x), Some(y)] if x == y => Some(x.clone()),
                _ => None,
            }
        });
        let lock_holders = pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1634103911 AND objid = 1 AND granted");
        assert_eq!(lock_holders, "1", "round {round}: one session holds the seat's lock");
        let members: Vec<usize> =
            (0..2).filter(|&i| nodes[i].log().matches("\"raft_member_started\"").count() > 0).collect();
        assert_eq!(members.len(), 1, "round {round}: exactly one process started a Raft member: {members:?}");
        assert_eq!(
            format!("p-{}", members[0]),
            holder,
            "round {round}: the process that runs the member is the holder"
        );
        eprintln!("round {round}: {holder} holds the seat at epoch {epoch}");
        // Both process pushes and pulls.
        let c = client();
        let img = testkit::oci::new_image(8 * 1024);
        push(&c, &nodes[0].url(), "race/app", &format!("r{round}"), &img).expect("push through p-0");
        assert_pulls(&c, &nodes[1].url(), "race/app", &format!("r{round}"), &img);
        // Stopped and started again at the same instant.
        for n in nodes.iter_mut() {
            n.kill();
        }
        std::fs::write(nodes[0].log_path(), "").unwrap();
        std::fs::write(nodes[1].log_path(), "").unwrap();
        for n in nodes.iter_mut() {
            n.spawn_again();
        }
    }
}

/// Polls `f` until it gives a value, within `bound`.
fn within_value<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < bound, "not within {bound:?}");
        std::thread::sleep(POLL);
    }
}

/// Over HTTPS, a standby reaches the holder at the holder's own address while checking the
/// region's certificate name (the URL keeps `advertise_url`'s host, resolved to the address):
/// writes, linearizable reads and the status through the standby all work, with a private CA
/// (`cluster.ca_file`) and nothing in clear text.
#[test]
fn a_standby_relays_to_its_holder_over_https_checking_the_regions_certificate() {
    let pg = testkit::Postgres::start();
    let kubo = testkit::Kubo::start();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let internal = testkit::free_port();
    let ports = [testkit::free_port(), testkit::free_port()];
    let cfg = |i: usize| {
        let mut c = NodeConfig::for_kubo(pg.url(), &kubo);
        c.port = Some(ports[i]);
        c.internal_port = Some(internal);
        let k = &mut c.config;
        k.server.tls_cert = Some(cert.clone());
        k.server.tls_key = Some(key.clone());
        k.server.public_url = format!("https://localhost:{}", ports[i]);
        k.cluster.advertise_url = format!("https://localhost:{internal}");
        k.cluster.ca_file = Some(cert.clone());
        k.cluster.shared_listeners = true;
        k.cluster.process_name = format!("tls-{i}");
        k.cluster.secret = Some(testkit::cluster::TEST_SECRET.into());
        k.cluster.kubo_swarm_addrs = vec![kubo.swarm_multiaddr()];
        k.auth.anonymous = Action::ALL.to_vec();
        c
    };
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let status = |i: usize| -> Option<Value> {
        let r = c.get(format!("https://localhost:{}/status?scope=local", ports[i])).send().ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    };
    let first = Node::start_unready(bin(), cfg(0));
    let (holder, epoch) = within_value(Duration::from_secs(30), || {
        let s = status(0)?;
        (s["seat"]["holder"] == "tls-0" && s["raft"]["role"] == "leader")
            .then(|| ("tls-0".to_owned(), s["seat"]["epoch"].as_u64().unwrap()))
    });
    let second = Node::start_unready(bin(), cfg(1));
    // The standby's status comes from the holder, over HTTPS.
    let s = within_value(Duration::from_secs(30), || status(1));
    assert_eq!((s["seat"]["holder"].as_str(), s["seat"]["epoch"].as_u64()), (Some(holder.as_str()), Some(epoch)));
    assert_eq!(s["seat"]["this_process"], "tls-1");
    assert_eq!(s["raft"]["role"], "leader", "the standby reports the holder's Raft view");

    // A push through the standby is relayed to the holder's own listener over HTTPS, and
    // reads back linearizably through the standby and plainly through the holder.
    let img = testkit::oci::new_image(16 * 1024);
    let base = |i: usize| format!("https://localhost:{}", ports[i]);
    push(&c, &base(1), "tls/app", "v1", &img)
        .unwrap_or_else(|e| panic!("push through the standby: {e:?}\n{}", second.log_tail(30)));
    let (code, body) = get_manifest(&c, &base(1), "tls/app", "v1", "?consistency=linearizable");
    assert_eq!((code, body), (200, img.manifest.clone()));
    assert_pulls(&c, &base(0), "tls/app", "v1", &img);
    let relayed = second.log();
    assert!(
        relayed.contains(&"\"process_url\":\"https://localhost:".to_string()),
        "the standby's own URL keeps the certificate's name"
    );
    assert!(!first.log().contains("internal_unauthorized"), "nothing reached the holder without the secret");
}

/// A standby passes what it relays to its holder through as a stream: a 128 MiB request to
/// its own internal listener reaches the holder (which reads it all and refuses it) while the
/// standby's peak memory stays far below the body's size.
#[test]
fn a_standby_streams_a_large_relayed_request_to_its_holder_without_holding_it() {
    let cluster = cluster_with_two_us_processes();
    let us = cluster.region("us");
    let (holder, _) = us.process(0).seat().unwrap();
    let standby = if holder == "us-0" { 1 } else { 0 };
    let url = us.pg().psql(&format!("SELECT url FROM region_processes WHERE name = 'us-{standby}'"));
    let pid = us.process(standby).pid();
    let before = testkit::peak_rss_kib(pid);
    // A JSON string of 128 MiB: the holder's extractor reads all of it before refusing it.
    const SIZE: usize = 128 << 20;
    let mut body = Vec::with_capacity(SIZE + 2);
    body.push(b'"');
    body.resize(SIZE + 1, b'a');
    body.push(b'"');
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(format!("{url}/internal/raft/append"))
        .bearer_auth(testkit::cluster::TEST_SECRET)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert!((400..500).contains(&status), "the holder refuses what is not an append ({status}: {text})");
    let grown = testkit::peak_rss_kib(pid).saturating_sub(before);
    eprintln!("relayed {} MiB: the standby's peak RSS grew by {} KiB", SIZE >> 20, grown);
    assert!(grown < 32 * 1024, "the standby held the relayed body: its peak RSS grew by {grown} KiB");
}
