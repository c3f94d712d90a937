//! A real DNS server for tests: PowerDNS Authoritative (Debian's `pdns-server`) on a loopback
//! port, run from a configuration directory: the one `afreg dns render` writes (GeoDNS tests),
//! or a plain zone of A records ([`PowerDns::zone`]) for tests that only need names to resolve,
//! such as an ACME CA validating host names.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{file_tail, free_port};

const PDNS: &str = "/usr/sbin/pdns_server";

pub struct PowerDns {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl PowerDns {
    /// A fresh directory for a server's files, and the port it will answer on.
    pub fn prepare() -> (TempDir, u16) {
        assert!(Path::new(PDNS).is_file(), "{PDNS} missing: run scripts/setup.sh (installs pdns-server)");
        (tempfile::Builder::new().prefix("afreg-pdns-").tempdir().unwrap(), free_port())
    }

    /// Runs `pdns_server` with the configuration directory `conf` (whose `pdns.conf` listens
    /// on 127.0.0.1:`port`) and waits until it answers.
    pub fn launch(dir: TempDir, port: u16, conf: &Path) -> PowerDns {
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        let log = std::fs::File::create(dir.path().join("pdns.log")).unwrap();
        let child = Command::new(PDNS)
            .arg(format!("--config-dir={}", conf.display()))
            .arg(format!("--socket-dir={}", sock.display()))
            .args(["--daemon=no", "--guardian=no", "--disable-syslog", "--write-pid=no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pdns_server");
        let mut p = PowerDns { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("pdns_server exited ({status}):\n{}", p.log_tail());
            }
            let up = std::net::TcpStream::connect_timeout(&p.addr(), Duration::from_secs(1)).is_ok();
            if up && p.log_tail().contains("Done launching threads") {
                return p;
            }
            assert!(Instant::now() < deadline, "pdns_server not ready within 20 s:\n{}", p.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A server authoritative for `zone` with the A records `records` (names relative to the
    /// zone), from the bind backend, nothing cached.
    pub fn zone(zone: &str, records: &[(&str, Ipv4Addr)]) -> PowerDns {
        Self::zone_with(zone, records, "")
    }

    /// As [`PowerDns::zone`], with `extra` zone-file lines (SRV records, say) appended.
    pub fn zone_with(zone: &str, records: &[(&str, Ipv4Addr)], extra: &str) -> PowerDns {
        let (dir, port) = Self::prepare();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let mut z = format!("$ORIGIN {zone}.\n@ 30 IN SOA ns1.{zone}. hostmaster.{zone}. 1 10800 3600 604800 30\n@ 30 IN NS ns1.{zone}.\nns1 30 IN A 127.0.0.1\n");
        for (name, ip) in records {
            writeln!(z, "{name} 30 IN A {ip}").unwrap();
        }
        z.push_str(extra);
        std::fs::write(conf.join("zone"), z).unwrap();
        std::fs::write(
            conf.join("named.conf"),
            format!("zone \"{zone}\" {{ type master; file \"{}\"; }};\n", conf.join("zone").display()),
        )
        .unwrap();
        std::fs::write(
            conf.join("pdns.conf"),
            format!(
                "launch=bind\nbind-config={}\nlocal-address=127.0.0.1\nlocal-port={port}\nsecurity-poll-suffix=\n\
                 cache-ttl=0\nnegquery-cache-ttl=0\nquery-cache-ttl=0\n",
                conf.join("named.conf").display()
            ),
        )
        .unwrap();
        Self::launch(dir, port, &conf)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    pub fn log_tail(&self) -> String {
        file_tail(&self.dir.path().join("pdns.log"), 30)
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pdns_server log tail ---\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
