//! A test's own PostgreSQL server, started with the recipe `afreg up` uses
//! (`afreg_deploy::local::postgres`), with durability off (`fsync=off`) and room for many
//! connections; stopped as a crash (`-m immediate`).
//!
//! Every server starts from a copy of one template cluster (initdb, then the database
//! `afreg`, stopped cleanly), made once a machine and kept in /tmp: `initdb` and `createdb`
//! took about 2 s a server, the copy takes a tenth of that, and the suite starts a few hundred.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use afreg_deploy::local::postgres::{self as recipe, StopMode};
use tempfile::TempDir;

use crate::{file_tail, free_port, run_stdout, shared_tempdir};

/// A private PostgreSQL server on 127.0.0.1:`port` with a database `afreg`, trust auth, user
/// `postgres`.
pub struct Postgres {
    /// The TCP port it listens on (kept across [`Postgres::stop`]/[`Postgres::start_again`]).
    pub port: u16,
    dir: TempDir,
    bin: recipe::Postgres,
    running: bool,
}

/// Server settings for tests: no fsync (a crash of the machine loses nothing a test needs),
/// and connections for several nodes' pools.
const SETTINGS: [(&str, &str); 2] = [("fsync", "off"), ("max_connections", "200")];

impl Postgres {
    /// initdb + start + `createdb afreg`. Panics (with the server log) on failure.
    pub fn start() -> Postgres {
        let bin = recipe::Postgres::find().unwrap_or_else(|e| panic!("testkit: {e}"));
        let mut pg = Postgres { port: free_port(), dir: shared_tempdir("afreg-pg-"), bin, running: false };
        let template = template(&pg.bin);
        run_stdout(Command::new("cp").arg("-a").arg(template).arg(pg.data_dir()));
        pg.start_again();
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/afreg`
    pub fn url(&self) -> String {
        recipe::url(self.port)
    }

    /// The data directory (owned by `postgres`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        recipe::Postgres::log_of(&self.data_dir())
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections drop, the port closes.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let r = self.bin.stop(&self.data_dir(), StopMode::Immediate);
        self.running = false;
        if let Err(e) = r {
            if !std::thread::panicking() {
                panic!("testkit: {e}");
            }
        }
    }

    /// Starts the (stopped) server again on the same port and data directory; waits until it
    /// accepts connections.
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        self.bin.start(&self.data_dir(), self.port, &SETTINGS).unwrap_or_else(|e| panic!("testkit: {e}"));
        self.running = true;
    }

    /// Runs SQL through `psql` against database `afreg` (unaligned, tuples only, stop on error)
    /// and returns its trimmed stdout. Panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        run_stdout(self.bin.psql(self.port).args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    }

    /// Like [`Postgres::psql`], but runs `sql` (one implicit transaction) again when Postgres
    /// ends it as a deadlock victim: DDL on tables a live node writes to (e.g. creating
    /// triggers) takes its locks one table at a time and can deadlock with the node's own
    /// transactions. A victim's transaction is rolled back whole, so running it again is safe.
    pub fn psql_retrying_deadlocks(&self, sql: &str) -> String {
        for _ in 0..10 {
            let out =
                self.bin.psql(self.port).args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("run psql");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("deadlock detected"), "psql failed: {stderr}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("psql was a deadlock victim 10 times in a row: {sql}");
    }

    /// Starts `psql` with `sql` in the background (e.g. a transaction that holds a table lock
    /// for a while); the caller waits for the child.
    pub fn psql_background(&self, sql: &str) -> Child {
        self.bin
            .psql(self.port)
            .args(["-At", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn psql")
    }
}

/// The template cluster every [`Postgres`] is copied from: `/tmp/afreg-pg-template-<version>-v1`
/// (v1: this recipe; a change to it takes a new name), built under a name of this process's and
/// renamed into place, so test binaries running at once never see half of one.
fn template(bin: &recipe::Postgres) -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = bin.version().unwrap_or_else(|e| panic!("testkit: {e}"));
        let path = PathBuf::from(format!("/tmp/afreg-pg-template-{version}-v1"));
        if path.join("PG_VERSION").is_file() {
            return path;
        }
        let build = shared_tempdir("afreg-pg-template-");
        let data = build.path().join("data");
        let made = (|| {
            bin.initdb(&data)?;
            let port = free_port();
            bin.start(&data, port, &SETTINGS)?;
            let created = bin.ensure_database(port);
            bin.stop(&data, StopMode::Fast)?;
            created
        })();
        made.unwrap_or_else(|e| panic!("testkit: the template cluster: {e}"));
        let _ = std::fs::remove_file(recipe::Postgres::log_of(&data));
        // Another test binary may have put its own in place meanwhile: then that one is used.
        if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").is_file() {
            panic!("testkit: could not put the template cluster at {}", path.display());
        }
        path
    })
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- testkit: postgres on port {} log tail ({}) ---\n{}",
                self.port,
                self.log_path().display(),
                file_tail(&self.log_path(), 20)
            );
        }
        self.stop();
    }
}
