//! `afreg serve`: runs the regional node (`afreg_node::server::serve`).

use std::path::PathBuf;

use afreg_node::config::Config;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// This region's file in `regions/` (e.g. `regions/eu.toml`): its raft id and name become
    /// `cluster.id` and `cluster.region` (a config that says otherwise is refused).
    #[arg(long)]
    region: Option<PathBuf>,
}

pub async fn run(args: ServeArgs, mut cfg: Config) -> anyhow::Result<()> {
    if let Some(p) = args.region {
        afreg_deploy::regions::load_file(&p)?.apply_identity(&mut cfg)?;
    }
    afreg_node::telemetry::set_revision(env!("AFREG_REVISION"));
    afreg_node::server::serve(cfg).await
}
