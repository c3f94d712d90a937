//! The `afreg` command: `serve` runs a regional node; `user` manages accounts; `key`
//! creates a token signing key.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use afreg::auth::{hash_password, Grants, Keys};
use afreg::config::Config;
use afreg::store::Store;
use afreg_replication::{Applied, Command};

mod dns_cli;

/// See node/Cargo.toml: jemalloc keeps the node's RSS flat under a steady load.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;


#[derive(Parser)]
#[command(name = "afreg", version, about = "A multi-region OCI registry over PostgreSQL and IPFS Kubo")]
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
    Serve {
        /// This region's file in `regions/` (e.g. `regions/eu.toml`): its raft id and name
        /// become `cluster.id` and `cluster.region` (a config that says otherwise is refused).
        #[arg(long)]
        region: Option<PathBuf>,
    },
    /// Manage registry users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Token signing keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Akash deployment files for the regions.
    Sdl {
        #[command(subcommand)]
        cmd: SdlCmd,
    },
    /// GeoDNS: the PowerDNS configuration for the regions.
    Dns {
        #[command(subcommand)]
        cmd: dns_cli::DnsCmd,
    },
    /// Check the deployed regions as a client sees them: DNS answers, /v2/, /readyz, SRV.
    Doctor(dns_cli::DoctorArgs),
    /// Add or remove a region of the running cluster.
    Region {
        #[command(subcommand)]
        cmd: RegionCmd,
    },
    /// Every region's role, term, leader, applied index, lag, pin backlog and bytes replicated.
    Status {
        /// A region's public URL; defaults to `server.public_url`.
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a local three-region cluster (us, eu, asia) on loopback under one data directory.
    Up(afreg::up::UpArgs),
}

#[derive(Subcommand)]
enum RegionCmd {
    /// Join a region: recorded in the region list, added as a learner, caught up, then made a
    /// voter. Start the new region first with `cluster.join = true`.
    Add {
        /// Its Raft id: new, never used before in this cluster.
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// Its internal URL (its `cluster.advertise_url`).
        #[arg(long)]
        internal_url: String,
        /// Its public registry URL.
        #[arg(long)]
        api_url: String,
        /// The internal URL of any running region; defaults to this config's `cluster.listen`.
        #[arg(long)]
        node: Option<String>,
    },
    /// Take a region out of the cluster; its id is retired for good.
    Remove {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user, or replace its password and grants.
    Add {
        name: String,
        /// The password (prefer --password-stdin: arguments are visible to other processes).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// PATTERN:ACTIONS, e.g. `*:pull,push,delete` or `team/*:pull`. Repeatable.
        #[arg(long = "grant", default_value = "*:pull,push,delete")]
        grants: Vec<String>,
    },
    /// Delete a user.
    Remove { name: String },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum SdlCmd {
    /// Write one Akash SDL per region file (`<out>/<name>.yaml`); same input, same bytes.
    Render {
        /// Directory of region files (`<name>.toml`).
        #[arg(long, default_value = "regions")]
        regions: PathBuf,
        /// Directory to write the SDL files into.
        #[arg(long, default_value = "sdl")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Write the signing key named in the configuration, if it does not exist yet.
    Generate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("afreg: {e}");
            std::process::exit(2);
        }
    };
    afreg::telemetry::init_logs(&cfg.log);
    if let Err(e) = run(cli.cmd, cfg).await {
        eprintln!("afreg: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { region } => {
            let mut cfg = cfg;
            if let Some(p) = region {
                let file = afreg::regions::load_file(&p).map_err(anyhow::Error::msg)?;
                cfg.apply_region_file(&file).map_err(anyhow::Error::msg)?;
            }
            afreg::server::serve(cfg).await
        }
        Cmd::Sdl { cmd: SdlCmd::Render { regions, out } } => {
            for p in afreg::sdl::render_dir(&regions, &out).map_err(anyhow::Error::msg)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Dns { cmd } => dns_cli::dns(cmd),
        Cmd::Doctor(args) => dns_cli::doctor(args).await,
        Cmd::Key { cmd: KeyCmd::Generate } => {
            Keys::load_or_create(&cfg.auth)?;
            println!("{}", cfg.auth.signing_key.display());
            Ok(())
        }
        Cmd::Status { url, json } => {
            let url = url.unwrap_or_else(|| cfg.server.public_url.clone());
            if json {
                let v: serde_json::Value = reqwest::get(format!("{}/status", url.trim_end_matches('/'))).await?.json().await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                afreg::admin::print_status(&url).await?;
            }
            Ok(())
        }
        Cmd::Region { cmd } => match cmd {
            RegionCmd::Add { id, name, internal_url, api_url, node } => {
                let internal = afreg::admin::Internal::new(&cfg, node.as_deref())?;
                let region = afreg_replication::Region { name: name.clone(), raft_addr: internal_url, api_url, ..Default::default() };
                internal.add_region(id, region).await?;
                println!("region {name} (id {id}) is a voter");
                Ok(())
            }
            RegionCmd::Remove { id, node } => {
                afreg::admin::Internal::new(&cfg, node.as_deref())?.remove_region(id).await?;
                println!("region {id} removed; its id is retired");
                Ok(())
            }
        },
        Cmd::Up(args) => afreg::up::run(args).await,
        Cmd::User { cmd } => {
            match cmd {
                UserCmd::Add { name, password, password_stdin, grants } => {
                    let password = match (password, password_stdin) {
                        (Some(p), _) => p,
                        (None, true) => {
                            let mut s = String::new();
                            std::io::stdin().read_to_string(&mut s)?;
                            s.trim_end_matches(['\n', '\r']).to_owned()
                        }
                        (None, false) => anyhow::bail!("give --password or --password-stdin"),
                    };
                    if password.is_empty() {
                        anyhow::bail!("the password is empty");
                    }
                    let grants = grants
                        .iter()
                        .map(|g| Grants::parse(g).map(|(p, a)| (p, a.iter().map(|a| a.as_str().to_owned()).collect())))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(anyhow::Error::msg)?;
                    let at = chrono::Utc::now().timestamp_millis();
                    let cmd = Command::PutUser { name: name.clone(), password_hash: hash_password(&password), grants, at };
                    afreg::admin::Internal::new(&cfg, None)?.write(&cmd).await?;
                    println!("user {name} saved");
                }
                UserCmd::Remove { name } => {
                    let cmd = Command::RemoveUser { name: name.clone() };
                    if afreg::admin::Internal::new(&cfg, None)?.write(&cmd).await? == Applied::NotFound {
                        anyhow::bail!("no user {name}");
                    }
                    println!("user {name} removed");
                }
                UserCmd::List => {
                    let store = Store::connect(&cfg.database, std::time::Duration::from_secs(10)).await?;
                    for u in store.usernames().await? {
                        println!("{u}");
                    }
                }
            }
            Ok(())
        }
    }
}
