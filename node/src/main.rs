//! The `afreg` command: `serve` runs a regional node; `user` manages accounts; `key`
//! creates a token signing key.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use afreg::auth::{hash_password, Grants, Keys};
use afreg::config::Config;
use afreg::store::Store;

mod dns_cli;

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
    Serve,
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
        Cmd::Serve => afreg::server::serve(cfg).await,
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
        Cmd::User { cmd } => {
            let store = Store::connect(&cfg.database, std::time::Duration::from_secs(10)).await?;
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
                    store.put_user(&name, &hash_password(&password), &grants).await?;
                    println!("user {name} saved");
                }
                UserCmd::Remove { name } => {
                    if !store.remove_user(&name).await? {
                        anyhow::bail!("no user {name}");
                    }
                    println!("user {name} removed");
                }
                UserCmd::List => {
                    for u in store.usernames().await? {
                        println!("{u}");
                    }
                }
            }
            Ok(())
        }
    }
}
