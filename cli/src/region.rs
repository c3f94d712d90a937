//! `afreg region add|remove`: membership changes, sent to a running region's internal endpoint.

use afreg_node::config::Config;

use crate::client::InternalClient;

#[derive(clap::Subcommand)]
pub enum RegionCmd {
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

pub async fn run(cmd: RegionCmd, cfg: &Config) -> anyhow::Result<()> {
    match cmd {
        RegionCmd::Add { id, name, internal_url, api_url, node } => {
            let region = afreg_replication::Region {
                name: name.clone(),
                raft_addr: internal_url,
                api_url,
                ..Default::default()
            };
            InternalClient::new(cfg, node.as_deref())?.add_region(id, region).await?;
            println!("region {name} (id {id}) is a voter");
        }
        RegionCmd::Remove { id, node } => {
            InternalClient::new(cfg, node.as_deref())?.remove_region(id).await?;
            println!("region {id} removed; its id is retired");
        }
    }
    Ok(())
}
