//! `afreg bench`: runs the benchmark binary, `afreg-bench` (package afreg-bench), with this
//! binary as the node. The benchmark is a binary of its own so that this one, and the image,
//! links no test code; it is looked for beside this binary, then on `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// The benchmark's own options (`afreg-bench --help`): --quick, --out DIR, --rounds N.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("afreg-bench");
    let bench = if beside.is_file() { beside } else { PathBuf::from("afreg-bench") };
    let status =
        tokio::process::Command::new(&bench).arg("--afreg").arg(&me).args(&args.args).status().await.with_context(
            || format!("run {} (build it with `cargo build --release -p afreg-bench`)", bench.display()),
        )?;
    anyhow::ensure!(status.success(), "{} exited {status}", bench.display());
    Ok(())
}
