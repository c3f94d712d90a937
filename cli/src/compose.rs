//! `afreg compose render`: a region's `compose.yaml` (the work is in `afreg_deploy::compose`).

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ComposeCmd {
    /// Write the Compose file of one region (no secrets in it: Compose reads them from the
    /// environment or an .env file).
    Render {
        /// The region's file.
        #[arg(long, default_value = "regions/us.toml")]
        region: PathBuf,
        #[arg(long, default_value = "compose.yaml")]
        out: PathBuf,
    },
}

pub fn run(cmd: ComposeCmd) -> anyhow::Result<()> {
    let ComposeCmd::Render { region, out } = cmd;
    let r = afreg_deploy::regions::load_file(&region)?;
    std::fs::write(&out, afreg_deploy::compose::render(&r)?)?;
    println!("{}", out.display());
    Ok(())
}
