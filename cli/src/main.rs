//! The `afreg` command: parses the command line and dispatches, nothing more. Each command is a
//! module of its own and loads only what it needs: `serve`, `user`, `key`, `region`,
//! `notifications` and `status` read the node's configuration; `sdl`, `compose`, `dns`, `doctor` and `up` read the region
//! files and never the node's configuration (so an unrelated `AFREG_X__Y` in the shell cannot
//! break them); `bench` starts registries of its own; `drill` reads `afreg up`'s cluster.json
//! or the regions it is given. `client` is the operator's client of a region's internal
//! endpoint, shared by the commands that call one.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use afreg_node::config::Config;

mod bench;
mod client;
mod compose;
mod dns;
mod doctor;
mod drill;
mod key;
mod notifications;
mod region;
mod sdl;
mod serve;
mod status;
mod up;
mod user;

/// See cli/Cargo.toml: jemalloc keeps the node's RSS flat under a steady load.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The version and the git revision this binary was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AFREG_REVISION"), ")");

#[derive(Parser)]
#[command(name = "afreg", version = VERSION, about = "A multi-region OCI registry over PostgreSQL and IPFS Kubo")]
struct Cli {
    /// Configuration file (TOML). Environment variables AFREG_SECTION__FIELD override it.
    #[arg(long, short, global = true, env = "AFREG_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the regional node.
    Serve(serve::ServeArgs),
    /// Manage registry users.
    User {
        #[command(subcommand)]
        cmd: user::UserCmd,
    },
    /// Token signing keys.
    Key {
        #[command(subcommand)]
        cmd: key::KeyCmd,
    },
    /// Akash deployment files for the regions.
    Sdl {
        #[command(subcommand)]
        cmd: sdl::SdlCmd,
    },
    /// One region as a Compose project (PostgreSQL, Kubo, afreg), for hosts off Akash.
    Compose {
        #[command(subcommand)]
        cmd: compose::ComposeCmd,
    },
    /// GeoDNS: the PowerDNS configuration for the regions.
    Dns {
        #[command(subcommand)]
        cmd: dns::DnsCmd,
    },
    /// Check the deployed regions as a client sees them: DNS answers, /v2/, /readyz, SRV.
    Doctor(doctor::DoctorArgs),
    /// Add or remove a region of the running cluster.
    Region {
        #[command(subcommand)]
        cmd: region::RegionCmd,
    },
    /// Notification dead letters: list them, send them again.
    Notifications {
        #[command(subcommand)]
        cmd: notifications::NotificationsCmd,
    },
    /// Every region's role, term, leader, applied index, lag, pin backlog and bytes replicated.
    Status(status::StatusArgs),
    /// Run a failover drill against a running cluster: a workload on every region, a fault
    /// against the leader, and the checkers' verdicts on everything the clients saw.
    Drill(drill::DrillArgs),
    /// Start a local three-region cluster (us, eu, asia) on loopback under one data directory.
    Up(up::UpArgs),
    /// Measure afreg against distribution v3, distribution 2.8 and zot on loopback, and write
    /// a JSON file, a Markdown table of ratios and SVG charts.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let config = cli.config;
    // The node's configuration, for the commands that use it; the others never read it.
    let load = || -> anyhow::Result<Config> {
        let cfg = Config::load(config.as_deref())?;
        afreg_node::telemetry::init_logs(&cfg.log);
        Ok(cfg)
    };
    let result = match cli.cmd {
        Cmd::Serve(args) => match load() {
            Ok(cfg) => serve::run(args, cfg).await,
            Err(e) => exit_config(e),
        },
        Cmd::User { cmd } => match load() {
            Ok(cfg) => user::run(cmd, &cfg).await,
            Err(e) => exit_config(e),
        },
        Cmd::Key { cmd } => match load() {
            Ok(cfg) => key::run(cmd, &cfg),
            Err(e) => exit_config(e),
        },
        Cmd::Region { cmd } => match load() {
            Ok(cfg) => region::run(cmd, &cfg).await,
            Err(e) => exit_config(e),
        },
        Cmd::Notifications { cmd } => match load() {
            Ok(cfg) => notifications::run(cmd, &cfg).await,
            Err(e) => exit_config(e),
        },
        Cmd::Status(args) => status::run(args, load).await,
        Cmd::Sdl { cmd } => sdl::run(cmd),
        Cmd::Compose { cmd } => compose::run(cmd),
        Cmd::Dns { cmd } => dns::run(cmd),
        Cmd::Doctor(args) => doctor::run(args).await,
        Cmd::Up(args) => up::run(args).await,
        Cmd::Drill(args) => drill::run(args).await,
        Cmd::Bench(args) => bench::run(args).await,
    };
    // Statics are never dropped: the log thread's queue is written out here.
    afreg_node::telemetry::finish_logs();
    if let Err(e) = result {
        eprintln!("afreg: {e:#}");
        std::process::exit(1);
    }
}

/// A configuration that does not load is a usage error (exit 2), reported as it is.
fn exit_config(e: anyhow::Error) -> ! {
    afreg_node::telemetry::finish_logs();
    eprintln!("afreg: {e:#}");
    std::process::exit(2)
}
