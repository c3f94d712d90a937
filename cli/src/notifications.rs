//! `afreg notifications list|retry`: the dead letters (events an endpoint never took within
//! its bounds), read from this region's Postgres (they are replicated), and sending them again:
//! `retry` goes to a running region's internal endpoint, and the delivering region sends the
//! events marked before any newer ones.

use afreg_node::config::Config;
use afreg_node::store::Store;
use afreg_replication::store::events;
use afreg_replication::{Applied, Command};

use crate::client::InternalClient;

#[derive(clap::Subcommand)]
pub enum NotificationsCmd {
    /// The dead letters: endpoint, event id, action, repository, target, and the last error.
    List {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Send an endpoint's dead letters again (all of them, or these event ids).
    Retry {
        #[arg(long)]
        endpoint: String,
        event_ids: Vec<i64>,
    },
}

pub async fn run(cmd: NotificationsCmd, cfg: &Config) -> anyhow::Result<()> {
    match cmd {
        NotificationsCmd::List { endpoint } => {
            let store =
                Store::connect(&cfg.database, std::time::Duration::from_secs(10), "afreg notifications").await?;
            let dead = events::dead_letters(store.pool(), endpoint.as_deref(), false).await?;
            println!(
                "{:<16} {:>10} {:<7} {:<30} {:<20} {:<6} ERROR",
                "ENDPOINT", "EVENT", "ACTION", "REPOSITORY", "TARGET", "RETRY"
            );
            for d in &dead {
                let e = &d.event;
                let target = if e.tag.is_empty() { e.digest.clone() } else { e.tag.clone() };
                let target: String = target.chars().take(20).collect();
                println!(
                    "{:<16} {:>10} {:<7} {:<30} {:<20} {:<6} {}",
                    d.endpoint,
                    e.id,
                    e.action,
                    e.repository,
                    target,
                    if d.retry { "queued" } else { "" },
                    d.error
                );
            }
            println!("{} dead letters", dead.len());
        }
        NotificationsCmd::Retry { endpoint, event_ids } => {
            let cmd = Command::NotificationsRetry { endpoint: endpoint.clone(), event_ids };
            if InternalClient::new(cfg, None)?.write(&cmd).await? == Applied::NotFound {
                anyhow::bail!("endpoint {endpoint} has no such dead letters");
            }
            println!("queued for {endpoint}: the delivering region sends them before newer events");
        }
    }
    Ok(())
}
