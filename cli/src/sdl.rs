//! `afreg sdl render`: one Akash SDL per region file (the work is in `afreg_deploy::sdl`).

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum SdlCmd {
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

pub fn run(cmd: SdlCmd) -> anyhow::Result<()> {
    let SdlCmd::Render { regions, out } = cmd;
    for p in afreg_deploy::sdl::render_dir(&regions, &out)? {
        println!("{}", p.display());
    }
    Ok(())
}
