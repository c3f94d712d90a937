//! `afreg key generate`: the token signing key named in the configuration.

use afreg_node::auth::Keys;
use afreg_node::config::Config;

#[derive(clap::Subcommand)]
pub enum KeyCmd {
    /// Write the signing key named in the configuration, if it does not exist yet.
    Generate,
}

pub fn run(cmd: KeyCmd, cfg: &Config) -> anyhow::Result<()> {
    let KeyCmd::Generate = cmd;
    Keys::load_or_create(&cfg.auth)?;
    println!("{}", cfg.auth.signing_key.display());
    Ok(())
}
