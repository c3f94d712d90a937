//! `afreg user add|remove|list`: registry users, replicated to every region. Changes go to a
//! running region's internal endpoint; the list is read from this region's Postgres.

use std::io::Read;

use afreg_node::auth::{hash_password, Grants};
use afreg_node::config::Config;
use afreg_node::store::Store;
use afreg_replication::{Applied, Command};

use crate::client::InternalClient;

#[derive(clap::Subcommand)]
pub enum UserCmd {
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

pub async fn run(cmd: UserCmd, cfg: &Config) -> anyhow::Result<()> {
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
            let cmd = put_user(&name, &password, grants);
            InternalClient::new(cfg, None)?.write(&cmd).await?;
            println!("user {name} saved");
        }
        UserCmd::Remove { name } => {
            let cmd = Command::RemoveUser { name: name.clone() };
            if InternalClient::new(cfg, None)?.write(&cmd).await? == Applied::NotFound {
                anyhow::bail!("no user {name}");
            }
            println!("user {name} removed");
        }
        UserCmd::List => {
            let store = Store::connect(&cfg.database, std::time::Duration::from_secs(10), "afreg user").await?;
            for u in store.usernames().await? {
                println!("{u}");
            }
        }
    }
    Ok(())
}

/// The replicated command that creates or replaces a user (its password argon2-hashed here).
pub fn put_user(name: &str, password: &str, grants: Vec<(String, Vec<String>)>) -> Command {
    Command::PutUser {
        name: name.to_owned(),
        password_hash: hash_password(password),
        grants,
        at: chrono::Utc::now().timestamp_millis(),
    }
}
