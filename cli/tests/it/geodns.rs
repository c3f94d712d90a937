//! GeoDNS against a REAL PowerDNS (Debian's pdns-server 4.7 with the bind and geoip backends)
//! serving what `afreg dns render` writes for the committed region files, on a loopback port.
//!
//! Clients "on different continents" are source addresses: a tiny MaxMind database
//! (scripts/make-test-mmdb.py) maps 127.0.0.2 → EU (DE), .3 → AS (JP), .4 → OC (AU),
//! .5 → NA (US); hickory-resolver queries from them (`ConnectionConfig.bind_addr`). The three
//! regions are a running local cluster (each region with its own Postgres, Kubo and node, joined
//! by Raft) listening on 127.0.0.11 (us), 127.0.0.12 (eu) and 127.0.0.13 (asia), all on one
//! port, which PowerDNS health-checks on `/readyz`.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use afreg_deploy::discovery::{self, NameServer, Peer};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use tempfile::TempDir;
use testkit::cluster::TestCluster;
use testkit::dns::PowerDns;
use testkit::free_port;

use testkit::afreg_bin as bin;

const ZONE: &str = "alternatefutures.ai";
const GLOBAL: &str = "registry.alternatefutures.ai";
const US: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const EU: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
const ASIA: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);
/// Client source addresses and the continent the test database gives them.
const FROM_EU: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FROM_AS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const FROM_OC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const FROM_NA: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// Not in the database: no continent, so the default region (us).
const FROM_NOWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// PowerDNS checks every second with a 1 s timeout: a region that goes down (or comes back)
/// must be reflected in its answers within this bound.
const FAILOVER: Duration = Duration::from_secs(15);
/// Health checks start with the first query; until the first results answers are random.
const SETTLE: Duration = Duration::from_secs(20);

fn regional(region: &str) -> String {
    format!("registry-{region}.{ZONE}")
}

/// The committed region files, with the registry served over plain HTTP on `port` and the
/// internal endpoint on `internal` (every region on its own loopback address).
fn region_files(dir: &Path, port: u16, internal: u16) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
    let out = dir.join("regions");
    fs::create_dir_all(&out).unwrap();
    for name in ["us", "eu", "asia"] {
        let text = fs::read_to_string(src.join(format!("{name}.toml"))).unwrap();
        let mut text: String = text
            .lines()
            .map(|l| if l.starts_with("internal = ") { format!("internal = {internal}\n") } else { format!("{l}\n") })
            .collect();
        text.push_str(&format!("\n[endpoint]\nscheme = \"http\"\nport = {port}\n"));
        fs::write(out.join(format!("{name}.toml")), text).unwrap();
    }
    out
}

/// PowerDNS serving the configuration `afreg dns render` wrote for the test's region files.
struct GeoDns {
    pdns: PowerDns,
    regions: PathBuf,
    _files: TempDir,
}

impl GeoDns {
    fn start(registry_port: u16, internal_port: u16) -> GeoDns {
        let (dir, port) = PowerDns::prepare();
        let files = tempfile::Builder::new().prefix("afreg-geodns-").tempdir().unwrap();
        let regions = region_files(files.path(), registry_port, internal_port);

        let mmdb = files.path().join("geo.mmdb");
        let py = std::env::var_os("AFREG_PY")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/afreg/py"))
            .join("bin/python3");
        assert!(py.is_file(), "{} missing: run scripts/setup.sh (makes the venv with mmdb-writer)", py.display());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-test-mmdb.py");
        ok(Command::new(&py).arg(&script).arg(&mmdb).args([
            format!("{FROM_EU}/32=EU:DE"),
            format!("{FROM_AS}/32=AS:JP"),
            format!("{FROM_OC}/32=OC:AU"),
            format!("{FROM_NA}/32=NA:US"),
        ]));

        let conf = files.path().join("pdns");
        // The operator's own records, pulled in with --include.
        let extra = files.path().join("site.zone");
        fs::write(&extra, "www 30 IN A 192.0.2.80\n_acme-challenge.registry-eu 30 IN TXT \"token\"\n").unwrap();
        ok(Command::new(bin())
            .args(["dns", "render", "--zone", ZONE, "--local-address", "127.0.0.1", "--no-cache"])
            .args(["--health-interval", "1", "--health-timeout", "1"])
            .args(["--health-url-template", "http://{ip}:{port}/readyz"])
            .args([
                "--address",
                &format!("us={US}"),
                "--address",
                &format!("eu={EU}"),
                "--address",
                &format!("asia={ASIA}"),
            ])
            .args(["--ns", "ns1.alternatefutures.ai=127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--regions")
            .arg(&regions)
            .arg("--out")
            .arg(&conf)
            .arg("--geoip-database")
            .arg(&mmdb)
            .arg("--include")
            .arg(&extra));
        GeoDns { pdns: PowerDns::launch(dir, port, &conf), regions, _files: files }
    }

    fn addr(&self) -> SocketAddr {
        self.pdns.addr()
    }

    /// A resolver (no cache) asking this server from `source`.
    fn client(&self, source: Ipv4Addr) -> TokioResolver {
        discovery::resolver(NameServer::At(self.addr()), Some(IpAddr::V4(source))).unwrap()
    }

    fn doctor(&self) -> Output {
        Command::new(bin())
            .args(["doctor", "--nameserver", &self.addr().to_string()])
            .arg("--regions")
            .arg(&self.regions)
            .output()
            .unwrap()
    }
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (addresses, CNAMEs followed) of `name`, or the error as text.
async fn ask(r: &TokioResolver, name: &str) -> Result<(Vec<IpAddr>, Vec<String>), String> {
    discovery::lookup(r, name).await.map(|x| (x.addresses, x.cnames)).map_err(|e| e.to_string())
}

/// Polls until `name` (asked through `r`) answers exactly `want` `times` times in a row;
/// returns how long that took. Panics with the last answer after `bound`.
async fn wait_answer(
    r: &TokioResolver,
    name: &str,
    want: Ipv4Addr,
    times: usize,
    bound: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut streak = 0;
    let mut last = String::new();
    while streak < times {
        match ask(r, name).await {
            Ok((a, _)) if a == [IpAddr::V4(want)] => streak += 1,
            other => {
                streak = 0;
                last = format!("{other:?}");
            }
        }
        if start.elapsed() > bound {
            panic!("{what}: {name} did not answer {want} {times}× in a row within {bound:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continents_route_to_their_region_and_a_region_that_is_down_fails_over() {
    // All three nodes on one port (PowerDNS checks one URL on every candidate address).
    let (port, internal) = (free_port(), free_port());
    let dns = GeoDns::start(port, internal);
    // The regions find each other through DNS: no static peer list, only the zone and the
    // server to ask (`_afreg-internal._tcp` SRV records, then each region's identity).
    let mut cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |name, c| {
        c.port = Some(port);
        c.internal_port = Some(internal);
        c.listen_ip = Some(match name {
            "us" => US,
            "eu" => EU,
            _ => ASIA,
        });
        c.config.cluster.discovery_zone = Some(ZONE.into());
        c.config.cluster.dns_server = Some(dns.addr());
    });
    assert_eq!(cluster.region("eu").url(), format!("http://{EU}:{port}"));
    for r in &cluster.regions {
        let config = afreg_config::Config::load_from(Some(&r.node().config_path()), []).unwrap();
        assert!(
            config.cluster.bootstrap.is_empty(),
            "{} was given static peers: {:?}",
            r.name,
            config.cluster.bootstrap
        );
    }
    assert!(
        cluster.region("us").node().log().contains("raft_initialize"),
        "us (lowest id) initialized the discovered cluster"
    );

    // Health checks start with the first query of each record: ask, then wait until every
    // regional name steadily answers its own address (all three are up).
    let local = dns.client(FROM_NOWHERE);
    for (name, ip) in [("us", US), ("eu", EU), ("asia", ASIA)] {
        let _ = ask(&local, &regional(name)).await;
        wait_answer(&local, &regional(name), ip, 5, SETTLE, "settling").await;
    }

    // The global name: the client's continent picks the region, through its regional name.
    for (from, region, ip) in [
        (FROM_EU, "eu", EU),
        (FROM_AS, "asia", ASIA),
        (FROM_OC, "asia", ASIA),
        (FROM_NA, "us", US),
        (FROM_NOWHERE, "us", US),
    ] {
        let client = dns.client(from);
        for _ in 0..5 {
            let (addrs, cnames) = ask(&client, GLOBAL).await.unwrap();
            assert_eq!(addrs, [IpAddr::V4(ip)], "{GLOBAL} asked from {from}");
            assert_eq!(cnames, [regional(region)], "{GLOBAL} asked from {from}");
        }
    }

    // Every answer's TTL is at most 30 s (a resolver with default options keeps them).
    let plain = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(
            None,
            vec![],
            vec![NameServerConfig::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                true,
                vec![{
                    let mut c = ConnectionConfig::udp();
                    c.port = dns.addr().port();
                    c
                }],
            )],
        ),
        TokioRuntimeProvider::default(),
    )
    .build()
    .unwrap();
    let mut seen = 0;
    for (name, rtype) in [
        (format!("{GLOBAL}."), RecordType::A),
        (format!("{}.", regional("eu")), RecordType::A),
        (format!("_registry._tcp.{ZONE}."), RecordType::SRV),
        (format!("{ZONE}."), RecordType::SOA),
        (format!("{ZONE}."), RecordType::NS),
    ] {
        let answer = plain.lookup(name.as_str(), rtype).await.unwrap();
        for rec in answer.answers() {
            assert!(rec.ttl <= 30, "{name} {rtype}: TTL {} in {rec:?}", rec.ttl);
            seen += 1;
        }
    }
    // CNAME + A, A, three SRV, SOA, NS.
    let expected = 2 + 1 + 3 + 1 + 1;
    assert_eq!(seen, expected, "records checked");
    // The included records are served too.
    assert_eq!(ask(&local, &format!("www.{ZONE}")).await.unwrap().0, [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80))]);
    let txt = plain.lookup(format!("_acme-challenge.registry-eu.{ZONE}.").as_str(), RecordType::TXT).await.unwrap();
    assert_eq!(txt.answers().len(), 1, "{txt:?}");

    // Peer discovery: the SRV records list every region at its registry port.
    let peers = discovery::discover_peers(&local, ZONE).await.unwrap();
    let want: BTreeSet<Peer> = ["us", "eu", "asia"].iter().map(|r| Peer { host: regional(r), port }).collect();
    assert_eq!(peers.len(), 3, "{peers:?}");
    assert_eq!(peers.into_iter().collect::<BTreeSet<_>>(), want);

    // afreg doctor, as an operator runs it against this DNS server: all good.
    let out = dns.doctor();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("--- afreg doctor, every region up ---\n{report}");
    assert!(
        out.status.success(),
        "doctor failed while every region is up:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("doctor: every check passed"), "{report}");
    assert!(!report.contains("PROBLEM"), "{report}");
    for r in ["us", "eu", "asia"] {
        assert!(report.contains(&format!("{} (region {r})", regional(r))), "{report}");
    }

    // eu goes down: EU clients (and registry-eu itself) move to the default region, us.
    cluster.region_mut("eu").node_mut().stop();
    let from_eu = dns.client(FROM_EU);
    let took = wait_answer(&from_eu, GLOBAL, US, 5, FAILOVER, "eu down").await;
    eprintln!("eu down: EU clients answered with us after {took:?}");
    wait_answer(&local, &regional("eu"), US, 5, FAILOVER, "eu down").await;
    let (_, cnames) = ask(&from_eu, GLOBAL).await.unwrap();
    assert_eq!(cnames, [regional("eu")], "the global name still leads EU clients through registry-eu");
    // The other regions are untouched.
    wait_answer(&dns.client(FROM_AS), GLOBAL, ASIA, 3, Duration::from_secs(5), "eu down").await;
    wait_answer(&dns.client(FROM_NA), GLOBAL, US, 3, Duration::from_secs(5), "eu down").await;

    // doctor notices: registry-eu answers us's address.
    let out = dns.doctor();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("--- afreg doctor, eu down ---\n{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "doctor passed while eu is down:\n{report}");
    assert!(report.contains("PROBLEM") && report.contains(&format!("all answer {US}")), "{report}");

    // eu comes back: EU clients return to it.
    cluster.region_mut("eu").node_mut().restart();
    let took = wait_answer(&from_eu, GLOBAL, EU, 5, FAILOVER, "eu restored").await;
    eprintln!("eu restored: EU clients answered with eu after {took:?}");
    wait_answer(&local, &regional("eu"), EU, 5, FAILOVER, "eu restored").await;
    let out = dns.doctor();
    assert!(out.status.success(), "doctor after eu came back:\n{}", String::from_utf8_lossy(&out.stdout));

    // A node that runs but is not ready counts as down: asia's Kubo stops, its /readyz turns
    // 503, and AS clients move to us until Kubo is back.
    cluster.region_mut("asia").region.kubo.stop();
    let from_as = dns.client(FROM_AS);
    let took = wait_answer(&from_as, GLOBAL, US, 5, FAILOVER, "asia's Kubo down").await;
    eprintln!("asia not ready: AS clients answered with us after {took:?}");
    cluster.region_mut("asia").region.kubo.start_again();
    let took = wait_answer(&from_as, GLOBAL, ASIA, 5, FAILOVER, "asia's Kubo back").await;
    eprintln!("asia ready again: AS clients answered with asia after {took:?}");

    // The restarted eu rejoined the cluster: it serves what was written while it was down.
    cluster.wait_converged(Duration::from_secs(30));
    drop(cluster);
}
