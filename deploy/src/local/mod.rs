//! How a region's PostgreSQL and Kubo run on this machine. `afreg up` (the local cluster) and
//! the integration tests (testkit) both start them with these recipes, so that what the tests
//! run is what an operator runs, and the two cannot drift apart.
//!
//! Everything here is synchronous `std::process`: the one-shot tools (`initdb`, `pg_ctl`,
//! `ipfs init`) run to completion, and a daemon is handed back as a [`Command`] for the caller
//! to spawn and own. Callers in an async context run these on a blocking thread.

pub mod kubo;
pub mod postgres;

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Why a local process could not be prepared, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0} (run scripts/setup.sh)")]
    NotInstalled(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what} failed ({status}): {output}")]
    Failed { what: String, status: ExitStatus, output: String },
    #[error("{what} exited during start-up ({status}):\n{log}")]
    Exited { what: String, status: ExitStatus, log: String },
    #[error("{what} did not listen on port {port} within {timeout:?}:\n{log}")]
    Timeout { what: String, port: u16, timeout: Duration, log: String },
    /// A file the recipe reads or writes is not what it must be; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    SwarmKey(#[from] crate::swarm_key::SwarmKeyError),
}

impl ProcessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
        let what = what.into();
        move |source| ProcessError::Io { what, source }
    }
}

/// Where `scripts/setup.sh` installs the external tools: `$AFREG_TOOLS`, else
/// `~/.cache/afreg/bin`.
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AFREG_TOOLS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/afreg/bin")
}

/// An installed tool (`ipfs`, `crane`, …) from [`tools_dir`], else the bare name (the PATH).
pub fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join(name);
    if p.is_file() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// Whether this process runs as root (then Postgres runs as `postgres`: it refuses root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a one-shot command to completion with no input; Err with its output unless it exits 0.
pub fn run(cmd: &mut Command, what: &str) -> Result<Output, ProcessError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(ProcessError::io(format!("running {what}")))?;
    if !out.status.success() {
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(ProcessError::Failed { what: what.to_owned(), status: out.status, output });
    }
    Ok(out)
}

/// SIGTERM, then SIGKILL once `grace` has passed; always reaps the child. Returns how it
/// exited, `None` when it had to be killed.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits until `child` accepts TCP connections on 127.0.0.1:`port`, failing at once (with the
/// log's tail) if it exits, or after `timeout`.
pub fn wait_listening(
    child: &mut Child,
    port: u16,
    timeout: Duration,
    what: &str,
    log: &Path,
) -> Result<(), ProcessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(ProcessError::io(what))? {
            return Err(ProcessError::Exited { what: what.to_owned(), status, log: tail(log, 40) });
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ProcessError::Timeout { what: what.to_owned(), port, timeout, log: tail(log, 40) });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a text file (at most its last 256 KiB; "" if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A log file opened for appending (a restarted process continues it).
pub fn append_log(path: &Path) -> Result<fs::File, ProcessError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(ProcessError::io(format!("opening {}", path.display())))
}

/// Creates `dir` (and its parents) with mode 0755, so that `postgres` can traverse it.
pub fn create_traversable_dir(dir: &Path) -> Result<(), ProcessError> {
    let what = || format!("creating {}", dir.display());
    fs::create_dir_all(dir).map_err(ProcessError::io(what()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(ProcessError::io(what()))
}

/// Builds `dir` as `dir.init` with `build`, then renames it, so that an interrupted first run
/// leaves no half-made directory behind to be mistaken for a finished one.
pub(crate) fn build_then_rename(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<(), ProcessError>,
) -> Result<(), ProcessError> {
    let partial = dir.with_extension("init");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .map_err(ProcessError::io(format!("removing the unfinished {}", partial.display())))?;
    }
    build(&partial)?;
    fs::rename(&partial, dir).map_err(ProcessError::io(format!("renaming {} to {}", partial.display(), dir.display())))
}
