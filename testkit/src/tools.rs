//! The plumbing every part of testkit uses: the installed tools and the afreg binary, free
//! ports, process statistics, random bytes, and running commands.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

pub use afreg_deploy::local::tools_dir;

/// The path of an installed tool (`ipfs`, `crane`, `oras`, `regctl`, `oci-conformance`).
/// Panics with a clear message when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join(name);
    if !p.is_file() {
        panic!(
            "testkit: tool `{name}` not found at {} — run scripts/setup.sh (it installs into \
             $AFREG_TOOLS, default ~/.cache/afreg/bin)",
            p.display()
        );
    }
    p
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range: a port the OS hands to a
/// port-0 listener or an outgoing connection (a node's own process listener, say) can never be
/// one a test chose for something else. Another process may still bind it before the caller
/// does; within this process a port is never handed out twice.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    // Start at a place of this process's own, so test binaries running at once rarely probe
    // the same ports; then walk the range.
    let span = (high - low) as u32;
    let start = (std::process::id().wrapping_mul(7919)) % span;
    let mut handed = HANDED_OUT.lock().unwrap();
    for i in 0..span {
        let port = low + ((start + i * 13) % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Peak resident set size ("high water mark", `VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) of a live process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let prefix = format!("{field}:");
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            let n = rest.trim().trim_end_matches("kB").trim();
            return n.parse().unwrap_or_else(|e| panic!("parse {field} {rest:?}: {e}"));
        }
    }
    panic!("{path} has no {field} line")
}

pub use afreg_drill::oci::{random_bytes, random_hex, sha256_digest};

/// Runs a command, panicking with its command line, status, stdout and stderr unless it exits 0.
/// Returns the full output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// [`run_ok`] and return stdout as a trimmed string.
pub fn run_stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).trim().to_string()
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    afreg_deploy::local::tail(path, lines)
}

/// Runs `f` on a scoped thread, so blocking clients work even inside a tokio runtime.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    })
}

pub(crate) fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(timeout).build().expect("build reqwest client")
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs; always reaps the child.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    afreg_deploy::local::terminate(child, grace);
}

/// The `afreg` binary the tests run: `CARGO_BIN_EXE_afreg` where cargo sets it (the `afreg`
/// package's own tests), else the one beside the test binary in the target directory (assert_cmd's
/// lookup), which `cargo test --workspace` (scripts/test.sh) builds before any test runs.
pub fn afreg_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let p = assert_cmd::cargo::cargo_bin("afreg");
        assert!(p.is_file(), "testkit: no afreg binary at {}: run the workspace's tests (scripts/test.sh), or `cargo build -p afreg` in this profile first", p.display());
        p
    })
}

/// A temporary directory under /tmp that other users (postgres) may traverse.
pub(crate) fn shared_tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("create temp dir in /tmp");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// A log file opened for appending; panics with its path on failure.
pub fn open_log(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()))
}

/// `total` deterministic pseudo-random bytes (xorshift64*) in frames of at most `frame` bytes,
/// generated lazily: large test and benchmark bodies without holding them in memory.
pub fn pseudo_random_frames(seed: u64, total: u64, frame: usize) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let mut state = seed | 1;
    let n = (total as usize).div_ceil(frame);
    (0..n).map(move |i| {
        let len = if i + 1 == n { total as usize - i * frame } else { frame };
        let mut buf = Vec::with_capacity(len + 8);
        while buf.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            buf.extend_from_slice(&state.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
        }
        buf.truncate(len);
        buf
    })
}

/// The lines of `text` that contain any of `words`, the last `max` of them (for failure reports).
pub fn grep_lines(text: &str, words: &[&str], max: usize) -> String {
    let hits: Vec<&str> = text.lines().filter(|l| words.iter().any(|w| l.contains(w))).collect();
    hits[hits.len().saturating_sub(max)..].join("\n")
}
