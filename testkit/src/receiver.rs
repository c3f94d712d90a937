//! Webhook receivers for the notification tests and the benchmark: real HTTP servers, one
//! script of `testkit/receivers/` each, in a directory of their own. One checks what
//! distribution's receivers rely on (its media type and envelope) with the standard library;
//! one is built on the CloudEvents SDK from PyPI (the venv scripts/setup.sh makes). Each
//! records what it took in files the test reads, and answers with the status the test puts in
//! its `status` file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::oci::within;

const POLL: Duration = Duration::from_millis(100);

/// A receiver process; killed when dropped.
pub struct Receiver {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    command: (PathBuf, PathBuf),
}

impl Receiver {
    /// distribution's contract, checked with the standard library.
    pub fn start() -> Receiver {
        Receiver::run(Path::new("python3"), "distribution_receiver.py")
    }

    /// The CloudEvents SDK's parser, from the venv scripts/setup.sh makes.
    pub fn cloudevents() -> Receiver {
        let venv = std::env::var_os("AFREG_PY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/afreg/py"));
        Receiver::run(&venv.join("bin/python3"), "cloudevents_receiver.py")
    }

    fn run(python: &Path, script: &str) -> Receiver {
        let dir = tempfile::Builder::new().prefix("afreg-receiver-").tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("receivers").join(script);
        let child = Receiver::spawn(python, &script, dir.path());
        let port_file = dir.path().join("port");
        within(Duration::from_secs(10), POLL, "the receiver listening", || port_file.exists());
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        Receiver { dir, child, port, command: (python.to_owned(), script) }
    }

    fn spawn(python: &Path, script: &Path, dir: &Path) -> Child {
        Command::new(python).arg(script).arg(dir).stdout(Stdio::null()).spawn().expect("python3 receiver")
    }

    /// The receiver's process gone: its port refuses connections.
    pub fn go_down(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Started again, on its port, with what it had received.
    pub fn come_back(&mut self) {
        let (python, script) = &self.command;
        self.child = Receiver::spawn(python, script, self.dir.path());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        within(Duration::from_secs(10), POLL, "the receiver listening again", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The status it answers every request with from now on.
    pub fn answer(&self, status: u16) {
        std::fs::write(self.file("status"), status.to_string()).unwrap();
    }

    /// Every event it took, in order.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.file("events.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Requests it was sent, whatever it answered.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.file("requests.txt")).unwrap_or_default().lines().count()
    }

    /// The requests it refused for breaking its format's contract, described.
    pub fn contract_errors(&self) -> String {
        std::fs::read_to_string(self.file("errors.txt")).unwrap_or_default()
    }

    pub fn assert_no_contract_errors(&self) {
        let errors = self.contract_errors();
        assert!(errors.is_empty(), "the receiver refused requests that break distribution's contract:\n{errors}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
