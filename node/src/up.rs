//! `afreg up`: a local three-region cluster on loopback (placeholder until written).

#[derive(clap::Args)]
pub struct UpArgs {
    /// Data directory holding every region's Postgres, Kubo, config and logs.
    #[arg(long, default_value = ".data/cluster")]
    pub data: std::path::PathBuf,
}

pub async fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
