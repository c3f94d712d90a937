//! A region's PostgreSQL on loopback: its own cluster (`initdb`), trust authentication for
//! user `postgres` over TCP on 127.0.0.1, and a database `afreg`. As root, the server tools run
//! through `runuser -u postgres` (Postgres refuses to run as root).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{build_then_rename, is_root, run, ProcessError};

/// The database every region uses.
pub const DATABASE: &str = "afreg";

/// `postgres://postgres@127.0.0.1:PORT/afreg`
pub fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{DATABASE}")
}

/// How `pg_ctl stop` shuts the server down.
#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Disconnect clients, then a clean shutdown (`afreg up`).
    Fast,
    /// A crash: no shutdown checkpoint (tests of an outage).
    Immediate,
}

/// The server binaries: the newest `/usr/lib/postgresql/<version>/bin` holding `initdb`
/// (Debian's layout).
#[derive(Debug, Clone)]
pub struct Postgres {
    bin: PathBuf,
}

impl Postgres {
    pub fn find() -> Result<Postgres, ProcessError> {
        let missing =
            || ProcessError::NotInstalled("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin".into());
        let mut dirs: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| missing())?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("bin/initdb").is_file())
            .map(|e| {
                let version = e.file_name().to_string_lossy().split('.').map(|p| p.parse().unwrap_or(0)).collect();
                (version, e.path().join("bin"))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, bin)| Postgres { bin }).ok_or_else(missing)
    }

    /// The server's major version, as the binaries' folder names it (`15` for
    /// `/usr/lib/postgresql/15/bin`).
    pub fn version(&self) -> Result<String, ProcessError> {
        self.bin
            .parent()
            .and_then(|d| d.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .ok_or_else(|| ProcessError::Invalid(format!("no version in {}", self.bin.display())))
    }

    /// The server's log, inside its data directory.
    pub fn log_of(data: &Path) -> PathBuf {
        data.join("postgres.log")
    }

    /// A server tool (`initdb`, `pg_ctl`), as `postgres` when we are root, run from `cwd`
    /// (which `postgres` must be able to enter).
    pub fn server_tool(&self, tool: &str, cwd: &Path) -> Command {
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        };
        c.current_dir(cwd);
        c
    }

    /// `psql` against database `afreg` on `port` (no `.psqlrc`).
    pub fn psql(&self, port: u16) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", DATABASE]);
        c
    }

    /// A new cluster in `data` (which must not exist): owned by `postgres`, mode 0700, built
    /// as `data.init` and renamed once complete.
    pub fn initdb(&self, data: &Path) -> Result<(), ProcessError> {
        let cwd = data.parent().unwrap_or(Path::new("/"));
        build_then_rename(data, |partial| {
            let what = || format!("creating {}", partial.display());
            fs::create_dir(partial).map_err(ProcessError::io(what()))?;
            fs::set_permissions(partial, fs::Permissions::from_mode(0o700)).map_err(ProcessError::io(what()))?;
            if is_root() {
                let user = nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or_else(|| ProcessError::NotInstalled("no user postgres".into()))?;
                std::os::unix::fs::chown(partial, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(ProcessError::io(what()))?;
            }
            let mut c = self.server_tool("initdb", cwd);
            c.arg("-D").arg(partial).args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
            run(&mut c, "initdb").map(drop)
        })
    }

    /// Starts the server of `data` on 127.0.0.1:`port` and waits (up to 60 s) until it accepts
    /// connections. `settings` are extra `-c NAME=VALUE` settings. Its log is [`Self::log_of`].
    pub fn start(&self, data: &Path, port: u16, settings: &[(&str, &str)]) -> Result<(), ProcessError> {
        let mut opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", data.display());
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let mut c = self.server_tool("pg_ctl", data.parent().unwrap_or(data));
        c.args(["start", "-w", "-t", "60", "-D"]).arg(data).arg("-l").arg(Self::log_of(data)).arg("-o").arg(opts);
        run(&mut c, "pg_ctl start").map(drop).map_err(|e| match e {
            ProcessError::Failed { what, status, output } => ProcessError::Failed {
                what,
                status,
                output: format!("{output}\n{}", super::tail(&Self::log_of(data), 40)),
            },
            e => e,
        })
    }

    /// Stops the server of `data` and waits for it (up to 60 s). Nothing to do if it is not
    /// running.
    pub fn stop(&self, data: &Path, mode: StopMode) -> Result<(), ProcessError> {
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut c = self.server_tool("pg_ctl", data.parent().unwrap_or(data));
        c.args(["stop", "-w", "-t", "60", "-m", mode, "-D"]).arg(data);
        run(&mut c, &format!("pg_ctl stop {}", data.display())).map(drop)
    }

    /// `CREATE DATABASE afreg` unless it exists.
    pub fn ensure_database(&self, port: u16) -> Result<(), ProcessError> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-tAc"])
            .arg(format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"));
        let out = run(&mut c, "psql")?;
        if String::from_utf8_lossy(&out.stdout).trim() != "1" {
            let mut c = Command::new(self.bin.join("createdb"));
            c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", DATABASE]);
            run(&mut c, "createdb")?;
        }
        Ok(())
    }
}
