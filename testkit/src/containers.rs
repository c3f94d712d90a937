//! Real container runtimes for tests, each isolated from the host's: podman with its own
//! storage and the settings these machines need (`../shared/REFERENCE.md`: no default
//! ulimits, cgroupfs, runc), and a dockerd of the test's own (no iptables, no bridge, vfs, its
//! own socket and data root). Both are removed with everything they made on `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{file_tail, open_log, terminate};

/// podman as root with a storage of its own.
pub struct Podman {
    dir: TempDir,
    containers: Vec<String>,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new().prefix("afreg-podman-").tempdir().expect("podman temp dir");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
        )
        .expect("write containers.conf");
        std::fs::write(dir.path().join("auth.json"), "{}").expect("write auth.json");
        Podman { dir, containers: vec![] }
    }

    /// `podman` with this storage, its own auth file, and no proxy.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        c
    }

    /// Records a container to remove (with its logs shown if the test fails).
    pub fn track(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            if std::thread::panicking() {
                if let Ok(o) = self.cmd().args(["logs", "--tail", "40", name]).output() {
                    eprintln!(
                        "--- container {name} ---\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
            let _ = self.cmd().args(["rm", "-f", "-t", "5", name]).output();
        }
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
    }
}

/// A dockerd of the test's own, on a socket in its directory.
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd and waits (60 s) until `docker info` answers. Panics with its log.
    pub fn start() -> Dockerd {
        Dockerd::start_with(&[])
    }

    /// As [`Dockerd::start`], with more of dockerd's flags (`--registry-mirror …`).
    pub fn start_with(extra: &[String]) -> Dockerd {
        let dir = tempfile::Builder::new().prefix("afreg-dockerd-").tempdir_in("/tmp").expect("dockerd temp dir");
        let log = open_log(&dir.path().join("dockerd.log"));
        let mut cmd = Command::new("dockerd");
        cmd.args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", dir.path().join("docker.sock").display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn dockerd (scripts/setup.sh installs docker.io)");
        let mut d = Dockerd { dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker().arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
                return d;
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                d.child = None;
                panic!("dockerd exited ({status}):\n{}", file_tail(&d.log_path(), 40));
            }
            assert!(Instant::now() < deadline, "dockerd did not answer within 60 s:\n{}", file_tail(&d.log_path(), 40));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dockerd.log")
    }

    /// The docker CLI against this daemon, with its own config directory and no proxy.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.dir.path().join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::null());
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("--- testkit: dockerd log tail ---\n{}", file_tail(&self.log_path(), 30));
            }
            terminate(&mut c, Duration::from_secs(15));
        }
    }
}
