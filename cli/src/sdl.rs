//! `afreg sdl render|secrets`: one Akash SDL per region file, and the operator's secrets that
//! a deployable one carries (the work is in `afreg_deploy::sdl`).

use std::path::{Path, PathBuf};

use afreg_deploy::sdl::{self, Secrets};

#[derive(clap::Subcommand)]
pub enum SdlCmd {
    /// Write one Akash SDL per region file (`<out>/<name>.yaml`); same input, same bytes.
    /// Without --secrets the files carry no secret (what is committed in sdl/); with it they
    /// are the ones to deploy, and must never be committed.
    Render {
        /// Directory of region files (`<name>.toml`).
        #[arg(long, default_value = "regions")]
        regions: PathBuf,
        /// Directory to write the SDL files into.
        #[arg(long, default_value = "sdl")]
        out: PathBuf,
        /// The operator's secrets directory (`cluster-secret`, `swarm.key`; see `afreg sdl secrets`).
        #[arg(long)]
        secrets: Option<PathBuf>,
    },
    /// Create the cluster secret and the private IPFS network's swarm key in a directory of
    /// your own (mode 0700, files 0600), keeping any that exist.
    Secrets {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: SdlCmd) -> anyhow::Result<()> {
    match cmd {
        SdlCmd::Render { regions, out, secrets } => {
            let secrets = secrets.map(|d| Secrets::load(&d)).transpose()?;
            if secrets.is_some() && out == Path::new("sdl") {
                anyhow::bail!(
                    "with --secrets, write outside the repository's sdl/ (--out DIR): the files carry secrets"
                );
            }
            for p in sdl::render_dir(&regions, &out, secrets.as_ref())? {
                println!("{}", p.display());
            }
        }
        SdlCmd::Secrets { out } => {
            let made = Secrets::create_missing(&out)?;
            for p in &made {
                println!("created {}", p.display());
            }
            if made.is_empty() {
                println!("{}: both secrets exist; kept", out.display());
            }
        }
    }
    Ok(())
}
